//! Session-window bookkeeping: which windows of one key exist, and under which namespace
//! their state lives (Flink's `MergingWindowSet`).
//!
//! When windows merge, their contents must end up under one namespace. Moving the state of
//! the new cover window on every merge would copy it each time; instead, as in Flink, the
//! merged window keeps the *state window* of one of its members, and only the other members'
//! state is merged into it. The set maps each live window to its state window; the window
//! operator keeps the set in keyed state (a list of pairs), so it is checkpointed and
//! rescaled with the key.
//!
//! Invariant: the live windows of a set never intersect one another (two that did would have
//! merged), so a new window merges with exactly the live windows it intersects, which are
//! adjacent in start order. The set is a sorted `Vec` rather than a tree: a key has one or
//! two live sessions at a time, and the operator loads and stores the set on every element,
//! so its pairs move in and out of keyed state without being copied.

use eddy_core::Result;

use super::assigners::TimeWindow;

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
    /// (live window, the namespace holding its state), sorted by window.
    mapping: Vec<(TimeWindow, TimeWindow)>,
}

impl MergingWindowSet {
    /// A set restored from its persisted pairs (window, state window).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (TimeWindow, TimeWindow)>) -> Self {
        let mut mapping: Vec<(TimeWindow, TimeWindow)> = pairs.into_iter().collect();
        mapping.sort_unstable_by_key(|(window, _)| *window);
        mapping.dedup_by_key(|(window, _)| *window);
        MergingWindowSet { mapping }
    }

    /// The pairs (window, state window) to persist.
    pub fn to_pairs(&self) -> Vec<(TimeWindow, TimeWindow)> {
        self.mapping.clone()
    }

    /// The pairs (window, state window) to persist, without copying them.
    pub fn into_pairs(self) -> Vec<(TimeWindow, TimeWindow)> {
        self.mapping
    }

    /// The namespace holding `window`'s state, if the window is live.
    pub fn state_window(&self, window: &TimeWindow) -> Option<TimeWindow> {
        self.position(window).ok().map(|i| self.mapping[i].1)
    }

    /// Forgets a window once it has been purged (fired and past its allowed lateness).
    pub fn retire_window(&mut self, window: &TimeWindow) {
        if let Ok(i) = self.position(window) {
            self.mapping.remove(i);
        }
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
        let first = self
            .mapping
            .iter()
            .position(|(window, _)| window.intersects(&new_window));
        let Some(first) = first else {
            // The new window merged with nothing: it is its own state window.
            let at = self
                .position(&new_window)
                .unwrap_or_else(|insert_at| insert_at);
            self.mapping.insert(at, (new_window, new_window));
            return Ok(new_window);
        };
        let last = self.mapping[first..]
            .iter()
            .take_while(|(window, _)| window.intersects(&new_window))
            .count()
            + first;
        let members = &self.mapping[first..last];
        let cover = members
            .iter()
            .fold(new_window, |cover, (window, _)| cover.cover(window));
        let state_window = members[0].1;
        // Nothing moves when the new window is simply inside an existing one.
        if !(members.len() == 1 && members[0].0 == cover) {
            on_merge(&WindowMerge {
                result: cover,
                merged_windows: members
                    .iter()
                    .map(|(window, _)| *window)
                    .filter(|window| *window != cover)
                    .collect(),
                state_window,
                merged_state_windows: members[1..].iter().map(|(_, state)| *state).collect(),
            })?;
        }
        self.mapping
            .splice(first..last, std::iter::once((cover, state_window)));
        Ok(cover)
    }

    /// Where `window` is in the mapping (`Err`: where it would be inserted).
    fn position(&self, window: &TimeWindow) -> std::result::Result<usize, usize> {
        self.mapping.binary_search_by(|(live, _)| live.cmp(window))
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

    /// The set against a model: after any sequence of additions, its live windows are
    /// exactly what merging all added windows at once gives (`merge_windows`), they never
    /// intersect, and every merge reported moves state into a live state window.
    #[test]
    fn random_additions_match_merging_all_windows_at_once() -> Result<()> {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for _ in 0..200 {
            let mut set = MergingWindowSet::default();
            let mut added = Vec::new();
            for _ in 0..12 {
                let start = next(200);
                let window = w(start, start + 1 + next(30));
                added.push(window);
                let live_before: Vec<TimeWindow> = set.to_pairs().iter().map(|p| p.0).collect();
                let mut merges = Vec::new();
                let result = set.add_window(window, |m| {
                    merges.push(m.clone());
                    Ok(())
                })?;
                assert!(result.start <= window.start && window.end <= result.end);
                for merge in &merges {
                    for merged in &merge.merged_windows {
                        assert!(live_before.contains(merged), "{merged:?} was not live");
                    }
                    assert_eq!(set.state_window(&merge.result), Some(merge.state_window));
                }
                let expected: Vec<TimeWindow> = super::super::merge_windows(&added)
                    .into_iter()
                    .map(|(c, _)| c)
                    .collect();
                let live: Vec<TimeWindow> = set.to_pairs().iter().map(|p| p.0).collect();
                assert_eq!(live, expected);
                assert!(live.windows(2).all(|pair| !pair[0].intersects(&pair[1])));
            }
        }
        Ok(())
    }
}
