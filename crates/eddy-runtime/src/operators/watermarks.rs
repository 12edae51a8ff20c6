//! Where event time enters a job (`assign_timestamps_and_watermarks`), and how an operator
//! without timers of its own combines the watermarks of its inputs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use eddy_core::{Data, EddyError, Result};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::Concatenate;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, StreamVec};

use crate::graph::{Built, StreamNode, WorkerContext};
use crate::operators::check_parallelism;
use crate::time::{
    InputWatermarks, ProcessingClock, Stamped, WatermarkMessage, WatermarkStatus, MAX_WATERMARK,
};
use crate::Epoch;

type Assigner<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

/// How a stream's records get their event timestamps and how its watermarks follow them
/// (Flink's `WatermarkStrategy`).
///
/// ```
/// use std::time::Duration;
/// use eddy_runtime::WatermarkStrategy;
///
/// struct Click { at_ms: u64 }
/// let strategy = WatermarkStrategy::<Click>::for_bounded_out_of_orderness(Duration::from_secs(5))
///     .with_timestamp_assigner(|click| click.at_ms)
///     .with_idleness(Duration::from_secs(60));
/// assert_eq!(strategy.out_of_orderness(), Duration::from_secs(5));
/// ```
///
/// The watermark of a subtask is `max timestamp seen - out_of_orderness - 1` ms (Flink's
/// `BoundedOutOfOrdernessWatermarks`), emitted at every epoch boundary (the periodic
/// emission), and never goes backwards.
pub struct WatermarkStrategy<T> {
    out_of_orderness: Duration,
    assigner: Option<Assigner<T>>,
    idleness: Option<Duration>,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        WatermarkStrategy {
            out_of_orderness: self.out_of_orderness,
            assigner: self.assigner.clone(),
            idleness: self.idleness,
        }
    }
}

impl<T> WatermarkStrategy<T> {
    /// Records may arrive up to `max` behind the latest timestamp seen.
    pub fn for_bounded_out_of_orderness(max: Duration) -> Self {
        WatermarkStrategy {
            out_of_orderness: max,
            assigner: None,
            idleness: None,
        }
    }

    /// Timestamps never decrease within a source subtask.
    pub fn for_monotonous_timestamps() -> Self {
        Self::for_bounded_out_of_orderness(Duration::ZERO)
    }

    /// Takes each record's timestamp (milliseconds) from `assigner`. Without one, records
    /// must already carry timestamps.
    pub fn with_timestamp_assigner(
        mut self,
        assigner: impl Fn(&T) -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.assigner = Some(Arc::new(assigner));
        self
    }

    /// Marks a subtask idle when it has had no record for `timeout` of processing time, so
    /// that it stops holding back the watermark downstream; it rejoins with its next record.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }

    /// The out-of-orderness bound.
    pub fn out_of_orderness(&self) -> Duration {
        self.out_of_orderness
    }
}

/// `assign_timestamps_and_watermarks(strategy)` in the job graph, chained to its input.
pub struct TimestampsAndWatermarksNode<T> {
    name: String,
    input: Box<dyn StreamNode<T>>,
    strategy: WatermarkStrategy<T>,
}

impl<T: Data> TimestampsAndWatermarksNode<T> {
    /// Stamps the records of `input` and generates its watermarks by `strategy`.
    pub fn new(
        name: impl Into<String>,
        input: Box<dyn StreamNode<T>>,
        strategy: WatermarkStrategy<T>,
    ) -> Self {
        TimestampsAndWatermarksNode {
            name: name.into(),
            input,
            strategy,
        }
    }
}

impl<T: Data> StreamNode<T> for TimestampsAndWatermarksNode<T> {
    fn build<'s>(&self, scope: Scope<'s, Epoch>, worker: &WorkerContext) -> Built<'s, T> {
        // Upstream watermarks are replaced, as in Flink, except the maximum one that marks the
        // end of the input split.
        let input = self.input.build(scope, worker);
        let mut builder = OperatorBuilder::new(self.name.clone(), scope);
        let mut records_in = builder.new_input(input.records, Pipeline);
        let mut watermarks_in = builder.new_input(input.watermarks, Pipeline);
        let (records_out, records) = builder.new_output::<Vec<Stamped<T>>>();
        let (watermarks_out, watermarks) = builder.new_output::<Vec<WatermarkMessage>>();
        let mut records_out = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(records_out);
        let mut watermarks_out =
            OutputBuilder::<_, CapacityContainerBuilder<_>>::from(watermarks_out);
        let active = worker.index < self.input.parallelism(worker.peers);
        let mut generator = WatermarkGenerator {
            strategy: self.strategy.clone(),
            clock: worker.config.clock.clone(),
            max_by_epoch: BTreeMap::new(),
            max_timestamp: None,
            emitted: None,
            last_record_ms: worker.config.clock.now_ms(),
            idle: false,
            input_ended: None,
        };
        let failures = worker.failures();
        let (job, name, index) = (worker.job_name.clone(), self.name.clone(), worker.index);
        let mut failed = false;
        builder.build(move |capabilities| {
            let mut held: Option<Vec<Capability<Epoch>>> = Some(capabilities);
            move |frontiers| {
                let mut records_out = records_out.activate();
                records_in.for_each(|cap, data| {
                    if failed {
                        data.clear();
                        return;
                    }
                    let epoch = cap.least().copied().unwrap_or_default();
                    if let Err(error) = generator.stamp(epoch, data) {
                        failures.fail(&job, &name, index, error);
                        failed = true;
                        return;
                    }
                    records_out.session(&cap).give_container(data);
                });
                watermarks_in.for_each(|cap, data| {
                    let epoch = cap.least().copied().unwrap_or_default();
                    if data
                        .iter()
                        .any(|m| m.status == WatermarkStatus::At(MAX_WATERMARK))
                    {
                        generator.input_ended = Some(epoch);
                    }
                    data.clear();
                });
                let Some(caps) = held.as_mut() else { return };
                let frontier = frontiers
                    .iter()
                    .filter_map(|f| f.frontier().first().copied())
                    .min();
                if active && !failed {
                    let mut watermarks_out = watermarks_out.activate();
                    for (epoch, status) in generator.advance(frontier) {
                        let at = caps[1].delayed(&epoch.max(*caps[1].time()));
                        watermarks_out.session(&at).give(WatermarkMessage {
                            from: index,
                            status,
                        });
                    }
                }
                match frontier {
                    Some(time) => caps.iter_mut().for_each(|c| {
                        if *c.time() < time {
                            c.downgrade(&time)
                        }
                    }),
                    None => held = None,
                }
            }
        });
        Built {
            records,
            watermarks,
        }
    }

    fn parallelism(&self, job: usize) -> usize {
        self.input.parallelism(job)
    }

    fn validate(&self, job: usize) -> Result<()> {
        check_parallelism(&self.name, None, job)?;
        self.input.validate(job)
    }

    fn set_parallelism(&mut self, _: usize) -> Result<()> {
        Err(EddyError::Config(
            "`assign_timestamps_and_watermarks` runs chained to its input at the input's parallelism; set the parallelism of the source or keyed operator instead".into(),
        ))
    }
}

/// One subtask's timestamps and watermarks.
struct WatermarkGenerator<T> {
    strategy: WatermarkStrategy<T>,
    clock: ProcessingClock,
    /// The largest timestamp of each epoch whose records the inputs may not have finished.
    max_by_epoch: BTreeMap<Epoch, u64>,
    /// The largest timestamp of the finished epochs.
    max_timestamp: Option<u64>,
    emitted: Option<u64>,
    last_record_ms: u64,
    idle: bool,
    /// The epoch at which the upstream split ended (its maximum watermark).
    input_ended: Option<Epoch>,
}

impl<T> WatermarkGenerator<T> {
    /// Gives every record of `batch` (received at `epoch`) its timestamp.
    fn stamp(&mut self, epoch: Epoch, batch: &mut [Stamped<T>]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut max = 0;
        for record in batch.iter_mut() {
            if let Some(assigner) = &self.strategy.assigner {
                record.timestamp = assigner(&record.value);
            } else if record.timestamp().is_none() {
                return Err(EddyError::Config(
                    "a record has no timestamp: give the watermark strategy a timestamp assigner (`with_timestamp_assigner`)".into(),
                ));
            }
            max = max.max(record.timestamp);
        }
        let slot = self.max_by_epoch.entry(epoch).or_insert(max);
        *slot = (*slot).max(max);
        self.last_record_ms = self.clock.now_ms();
        Ok(())
    }

    /// The watermark messages due now that the input has reached `frontier`: one per
    /// finished epoch that raised the watermark, and idleness changes.
    fn advance(&mut self, frontier: Option<Epoch>) -> Vec<(Epoch, WatermarkStatus)> {
        let mut messages = Vec::new();
        let mut last_epoch = None;
        while let Some(entry) = self.max_by_epoch.first_entry() {
            if frontier.is_some_and(|f| *entry.key() >= f) {
                break;
            }
            last_epoch = Some(*entry.key());
            let max = entry.remove();
            self.max_timestamp = Some(self.max_timestamp.map_or(max, |m| m.max(max)));
        }
        if self.emitted == Some(MAX_WATERMARK) {
            return messages;
        }
        if let Some(ended) = self.input_ended {
            if frontier.is_none_or(|f| ended < f) {
                self.emitted = Some(MAX_WATERMARK);
                let epoch = last_epoch.map_or(ended, |e| e.max(ended));
                messages.push((epoch, WatermarkStatus::At(MAX_WATERMARK)));
                return messages;
            }
        }
        let Some(epoch) = last_epoch.or(frontier) else {
            return messages;
        };
        if let Some(max) = self.max_timestamp {
            let lag = u64::try_from(self.strategy.out_of_orderness.as_millis()).unwrap_or(u64::MAX);
            let watermark = max.saturating_sub(lag).saturating_sub(1);
            let rejoining = self.idle && last_epoch.is_some();
            if rejoining || self.emitted.is_none_or(|w| watermark > w) {
                self.idle = false;
                let watermark = self.emitted.map_or(watermark, |w| w.max(watermark));
                self.emitted = Some(watermark);
                messages.push((epoch, WatermarkStatus::At(watermark)));
            }
        }
        if let Some(timeout) = self.strategy.idleness {
            let timeout = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let quiet = self.clock.now_ms().saturating_sub(self.last_record_ms);
            if !self.idle && last_epoch.is_none() && quiet >= timeout {
                self.idle = true;
                messages.push((epoch, WatermarkStatus::Idle));
            }
        }
        messages
    }
}

/// The combined watermark of an operator that has no timers (so it need not align them with
/// its records): the minimum over `inputs` (each a watermark stream and the channel offset of
/// its senders), sent as subtask `from` (`None`: this worker runs no subtask, send nothing).
pub(crate) fn combine_watermarks<'s, const N: usize>(
    scope: Scope<'s, Epoch>,
    name: &str,
    inputs: [(StreamVec<'s, Epoch, WatermarkMessage>, usize); N],
    channels: usize,
    from: Option<usize>,
) -> StreamVec<'s, Epoch, WatermarkMessage> {
    let streams = inputs.into_iter().map(|(stream, offset)| {
        stream.broadcast().map(move |message| WatermarkMessage {
            from: message.from + offset,
            status: message.status,
        })
    });
    let mut combined = InputWatermarks::new(channels);
    scope
        .concatenate(streams)
        .unary_frontier(Pipeline, name, move |cap, _info| {
            let mut held = Some(cap);
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let epoch = cap.least().copied().unwrap_or_default();
                    for message in data.drain(..) {
                        combined.stage(epoch, message);
                    }
                });
                let Some(cap) = held.as_mut() else { return };
                let now = frontier.frontier().first().copied();
                for change in combined.advance(now) {
                    if let Some(from) = from {
                        let at = cap.delayed(&change.epoch.max(*cap.time()));
                        output.session(&at).give(WatermarkMessage {
                            from,
                            status: change.status,
                        });
                    }
                }
                match now {
                    Some(time) if *cap.time() < time => cap.downgrade(&time),
                    Some(_) => {}
                    None => held = None,
                }
            }
        })
}
