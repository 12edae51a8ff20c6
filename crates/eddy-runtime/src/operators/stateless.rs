//! `map`, `filter` and `flat_map`: chained to their input, on the same workers.

use eddy_core::{EddyError, Result};
use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::Scope;

use crate::graph::{Built, StreamNode, WorkerContext};
use crate::time::Stamped;
use crate::Epoch;

fn chained(kind: &str) -> Result<()> {
    Err(EddyError::Config(format!(
        "`{kind}` runs chained to its input at the input's parallelism; set the parallelism of the source or keyed operator instead"
    )))
}

/// `map(f)`: one output per input.
pub struct MapNode<I, F> {
    input: Box<dyn StreamNode<I>>,
    f: F,
}

impl<I, F> MapNode<I, F> {
    /// Applies `f` to every record of `input`.
    pub fn new(input: Box<dyn StreamNode<I>>, f: F) -> Self {
        MapNode { input, f }
    }
}

impl<I: 'static, O: 'static, F> StreamNode<O> for MapNode<I, F>
where
    F: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    fn build<'s>(&self, scope: Scope<'s, Epoch>, worker: &WorkerContext) -> Built<'s, O> {
        let f = self.f.clone();
        let input = self.input.build(scope, worker);
        Built {
            records: input.records.map(move |record| Stamped {
                value: f(record.value),
                timestamp: record.timestamp,
            }),
            watermarks: input.watermarks,
        }
    }

    fn parallelism(&self, job: usize) -> usize {
        self.input.parallelism(job)
    }

    fn validate(&self, job: usize) -> Result<()> {
        self.input.validate(job)
    }

    fn set_parallelism(&mut self, _: usize) -> Result<()> {
        chained("map")
    }
}

/// `filter(p)`: keeps the records for which `p` is true.
pub struct FilterNode<T, P> {
    input: Box<dyn StreamNode<T>>,
    predicate: P,
}

impl<T, P> FilterNode<T, P> {
    /// Keeps the records of `input` that satisfy `predicate`.
    pub fn new(input: Box<dyn StreamNode<T>>, predicate: P) -> Self {
        FilterNode { input, predicate }
    }
}

impl<T: 'static, P> StreamNode<T> for FilterNode<T, P>
where
    P: Fn(&T) -> bool + Clone + Send + Sync + 'static,
{
    fn build<'s>(&self, scope: Scope<'s, Epoch>, worker: &WorkerContext) -> Built<'s, T> {
        let predicate = self.predicate.clone();
        let input = self.input.build(scope, worker);
        Built {
            records: input.records.filter(move |record| predicate(&record.value)),
            watermarks: input.watermarks,
        }
    }

    fn parallelism(&self, job: usize) -> usize {
        self.input.parallelism(job)
    }

    fn validate(&self, job: usize) -> Result<()> {
        self.input.validate(job)
    }

    fn set_parallelism(&mut self, _: usize) -> Result<()> {
        chained("filter")
    }
}

/// `flat_map(f)`: zero or more outputs per input.
pub struct FlatMapNode<I, F> {
    input: Box<dyn StreamNode<I>>,
    f: F,
}

impl<I, F> FlatMapNode<I, F> {
    /// Replaces every record of `input` by the items `f` returns for it.
    pub fn new(input: Box<dyn StreamNode<I>>, f: F) -> Self {
        FlatMapNode { input, f }
    }
}

impl<I: 'static, O: 'static, It, F> StreamNode<O> for FlatMapNode<I, F>
where
    It: IntoIterator<Item = O>,
    F: Fn(I) -> It + Clone + Send + Sync + 'static,
{
    fn build<'s>(&self, scope: Scope<'s, Epoch>, worker: &WorkerContext) -> Built<'s, O> {
        let f = self.f.clone();
        let input = self.input.build(scope, worker);
        Built {
            // Every output inherits the timestamp of the record it came from, as in Flink.
            records: input.records.flat_map(move |record| {
                let timestamp = record.timestamp;
                f(record.value)
                    .into_iter()
                    .map(move |value| Stamped { value, timestamp })
            }),
            watermarks: input.watermarks,
        }
    }

    fn parallelism(&self, job: usize) -> usize {
        self.input.parallelism(job)
    }

    fn validate(&self, job: usize) -> Result<()> {
        self.input.validate(job)
    }

    fn set_parallelism(&mut self, _: usize) -> Result<()> {
        chained("flat_map")
    }
}
