//! Session-window bookkeeping: which windows of one key exist, and under which namespace
//! their state lives (Flink's `MergingWindowSet`).
//!
//! When windows merge, their contents must end up under one namespace. Moving the state of
//! the new cover window on every merge would copy it each time; instead, as in Flink, the
//! merged window keeps the *state window* of one of its members, and only the other members'
//! state is merged into it. The set maps each live window to its state window; the window
//! operator keeps the set in keyed state (a list of pairs), so it is checkpointed and
//! rescaled with the key.

use std::collections::BTreeMap;

use eddy_core::Result;

use super::assigners::{merge_windows, TimeWindow};

/// One merge, for the operator to carry out on state and timers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowMerge {
    /// The window the members merged into.
    pub result: TimeWindow,
    /// The merged windows other than `result` (their timers are deleted).
    pub merged_windows: Vec<TimeWindow>,
    /// The namespace that holds the merged state from now on.
    pub state_window: TimeWindow,
    /// The namespaces whose state merges into `state_window`.
    pub merged_state_windows: Vec<TimeWindow>,
}

/// The live windows of one key and their state windows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergingWindowSet {
    /// Live window -> the namespace holding its state.
    mapping: BTreeMap<TimeWindow, TimeWindow>,
}

impl MergingWindowSet {
    /// A set restored from its persisted pairs (window, state window).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (TimeWindow, TimeWindow)>) -> Self {
        MergingWindowSet {
            mapping: pairs.into_iter().collect(),
        }
    }

    /// The pairs (window, state window) to persist.
    pub fn to_pairs(&self) -> Vec<(TimeWindow, TimeWindow)> {
        self.mapping.iter().map(|(w, s)| (*w, *s)).collect()
    }

    /// The namespace holding `window`'s state, if the window is live.
    pub fn state_window(&self, window: &TimeWindow) -> Option<TimeWindow> {
        self.mapping.get(window).copied()
    }

    /// Forgets a window once it has been purged (fired and past its allowed lateness).
    pub fn retire_window(&mut self, window: &TimeWindow) {
        self.mapping.remove(window);
    }

    /// Whether no window is live.
    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }

    /// Adds `new_window`, merging it with the live windows it intersects; `on_merge` is
    /// called for a merge that involves existing windows, before the set changes, so that
    /// the operator merges state and timers (if it fails, the set is left unchanged).
    /// Returns the window the new element belongs to (the merge result, or `new_window`).
    pub fn add_window(
        &mut self,
        new_window: TimeWindow,
        mut on_merge: impl FnMut(&WindowMerge) -> Result<()>,
    ) -> Result<TimeWindow> {
        let mut windows: Vec<TimeWindow> = self.mapping.keys().copied().collect();
        windows.push(new_window);
        let mut result_window = new_window;
        let mut merges = Vec::new();
        for (cover, members) in merge_windows(&windows) {
            if members.contains(&new_window) {
                result_window = cover;
            }
            let existing: Vec<TimeWindow> = members
                .iter()
                .copied()
                .filter(|w| self.mapping.contains_key(w))
                .collect();
            // A lone window, or only the new one, needs no state merge.
            if members.len() <= 1 || existing.is_empty() {
                continue;
            }
            merges.push((cover, members, existing));
        }
        for (cover, members, existing) in merges {
            let state_window = self.mapping[&existing[0]];
            let merged_state_windows: Vec<TimeWindow> =
                existing[1..].iter().map(|w| self.mapping[w]).collect();
            let merge = WindowMerge {
                result: cover,
                merged_windows: members
                    .iter()
                    .copied()
                    .filter(|w| *w != cover && self.mapping.contains_key(w))
                    .collect(),
                state_window,
                merged_state_windows,
            };
            // Nothing moves when the new window is simply inside an existing one.
            if !(merge.merged_windows.is_empty()
                && merge.merged_state_windows.is_empty()
                && self.mapping.contains_key(&cover))
            {
                on_merge(&merge)?;
            }
            for member in &members {
                self.mapping.remove(member);
            }
            self.mapping.insert(cover, state_window);
        }
        // The new window merged with nothing: it is its own state window.
        self.mapping.entry(result_window).or_insert(result_window);
        Ok(result_window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: u64, end: u64) -> TimeWindow {
        TimeWindow::new(start, end)
    }

    #[test]
    fn a_window_alone_is_its_own_state_window() -> Result<()> {
        let mut set = MergingWindowSet::default();
        let mut merges: Vec<WindowMerge> = Vec::new();
        let mut record = |m: &WindowMerge| {
            merges.push(m.clone());
            Ok(())
        };
        assert_eq!(set.add_window(w(0, 10), &mut record)?, w(0, 10));
        assert_eq!(set.add_window(w(20, 30), &mut record)?, w(20, 30));
        assert!(merges.is_empty());
        assert_eq!(set.state_window(&w(0, 10)), Some(w(0, 10)));
        Ok(())
    }

    #[test]
    fn an_overlapping_window_merges_and_keeps_the_first_state_window() -> Result<()> {
        let mut set = MergingWindowSet::default();
        set.add_window(w(0, 10), |_| Ok(()))?;
        let mut merges = Vec::new();
        let result = set.add_window(w(5, 15), |m| {
            merges.push(m.clone());
            Ok(())
        })?;
        assert_eq!(result, w(0, 15));
        assert_eq!(
            merges,
            vec![WindowMerge {
                result: w(0, 15),
                merged_windows: vec![w(0, 10)],
                state_window: w(0, 10),
                merged_state_windows: vec![],
            }]
        );
        assert_eq!(set.to_pairs(), vec![(w(0, 15), w(0, 10))]);
        Ok(())
    }

    #[test]
    fn a_window_bridging_two_sessions_merges_their_state() -> Result<()> {
        let mut set = MergingWindowSet::default();
        set.add_window(w(0, 10), |_| Ok(()))?;
        set.add_window(w(20, 30), |_| Ok(()))?;
        let mut merges = Vec::new();
        let result = set.add_window(w(8, 22), |m| {
            merges.push(m.clone());
            Ok(())
        })?;
        assert_eq!(result, w(0, 30));
        assert_eq!(merges.len(), 1);
        assert_eq!(merges[0].state_window, w(0, 10));
        assert_eq!(merges[0].merged_state_windows, vec![w(20, 30)]);
        assert_eq!(merges[0].merged_windows, vec![w(0, 10), w(20, 30)]);
        assert_eq!(set.to_pairs(), vec![(w(0, 30), w(0, 10))]);
        // Persisted and restored, the set behaves the same.
        let restored = MergingWindowSet::from_pairs(set.to_pairs());
        assert_eq!(restored, set);
        Ok(())
    }

    #[test]
    fn a_failed_merge_leaves_the_set_unchanged() {
        let mut set = MergingWindowSet::default();
        let _ = set.add_window(w(0, 10), |_| Ok(()));
        let before = set.clone();
        let outcome = set.add_window(w(5, 15), |_| {
            Err(eddy_core::EddyError::Internal("refused".into()))
        });
        assert!(outcome.is_err());
        assert_eq!(set, before);
    }

    #[test]
    fn a_window_inside_a_live_one_needs_no_merge() -> Result<()> {
        let mut set = MergingWindowSet::default();
        set.add_window(w(0, 20), |_| Ok(()))?;
        let mut calls = 0;
        let inside = set.add_window(w(5, 10), |_| {
            calls += 1;
            Ok(())
        })?;
        assert_eq!(inside, w(0, 20));
        assert_eq!(calls, 0);
        set.retire_window(&w(0, 20));
        assert!(set.is_empty());
        Ok(())
    }
}
