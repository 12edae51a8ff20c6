//! Streams and their transformations.

use std::cell::RefCell;
use std::rc::Rc;

use eddy_core::{Data, Key};
use eddy_runtime::{
    FilterNode, FlatMapNode, KeyedProcessFunction, KeyedProcessNode, MapNode, Sink,
    SinkOperatorNode, StreamNode, TimestampsAndWatermarksNode, WatermarkStrategy,
};

use crate::environment::EnvInner;

/// A stream of records of type `T`, being defined in a [`StreamExecutionEnvironment`].
///
/// [`StreamExecutionEnvironment`]: crate::StreamExecutionEnvironment
pub struct DataStream<T> {
    pub(crate) env: Rc<RefCell<EnvInner>>,
    pub(crate) node: Box<dyn StreamNode<T>>,
}

impl<T: Data> DataStream<T> {
    pub(crate) fn new(env: Rc<RefCell<EnvInner>>, node: Box<dyn StreamNode<T>>) -> Self {
        DataStream { env, node }
    }

    fn then<U>(
        self,
        node: impl FnOnce(Box<dyn StreamNode<T>>) -> Box<dyn StreamNode<U>>,
    ) -> DataStream<U> {
        DataStream {
            env: self.env,
            node: node(self.node),
        }
    }

    /// Applies `f` to every record.
    pub fn map<U: Data, F>(self, f: F) -> DataStream<U>
    where
        F: Fn(T) -> U + Clone + Send + Sync + 'static,
    {
        self.then(|input| Box::new(MapNode::new(input, f)))
    }

    /// Keeps the records for which `predicate` returns true.
    pub fn filter<P>(self, predicate: P) -> DataStream<T>
    where
        P: Fn(&T) -> bool + Clone + Send + Sync + 'static,
    {
        self.then(|input| Box::new(FilterNode::new(input, predicate)))
    }

    /// Replaces every record by the records `f` returns for it (zero or more).
    pub fn flat_map<U: Data, I, F>(self, f: F) -> DataStream<U>
    where
        I: IntoIterator<Item = U> + 'static,
        F: Fn(T) -> I + Clone + Send + Sync + 'static,
    {
        self.then(|input| Box::new(FlatMapNode::new(input, f)))
    }

    /// Gives every record its event timestamp and generates the stream's watermarks by
    /// `strategy` (Flink's `assignTimestampsAndWatermarks`), chained to this stream's
    /// operator. Watermarks from upstream are replaced.
    pub fn assign_timestamps_and_watermarks(self, strategy: WatermarkStrategy<T>) -> DataStream<T> {
        let name = self.env.borrow_mut().unique_name("timestamps-watermarks");
        self.then(|input| Box::new(TimestampsAndWatermarksNode::new(name, input, strategy)))
    }

    /// Partitions the stream by the key `selector` returns: every record of one key goes to
    /// the same subtask of the next (keyed) operator, through its key group.
    pub fn key_by<K: Key, KS>(self, selector: KS) -> KeyedStream<T, KS>
    where
        KS: Fn(&T) -> K + Clone + Send + Sync + 'static,
    {
        KeyedStream {
            stream: self,
            selector,
        }
    }

    /// Sets the parallelism of the operator producing this stream (a source or a keyed
    /// operator; chained `map`/`filter`/`flat_map` follow their input's).
    pub fn set_parallelism(mut self, parallelism: usize) -> Self {
        if let Err(error) = self.node.set_parallelism(parallelism) {
            self.env.borrow_mut().errors.push(error);
        }
        self
    }

    /// Gives the operator producing this stream (a source or a keyed operator) the stable id
    /// `uid` under which checkpoints and savepoints keep its state (Flink's `uid`). Without
    /// one, its id is its name, which changes when the job's operators are renamed. On a
    /// chained `map`/`filter`/`flat_map`, which hold no state, it does nothing.
    pub fn uid(self, uid: &str) -> Self {
        if let Some(name) = self.node.operator_name() {
            let mut env = self.env.borrow_mut();
            if let Err(error) = env.graph.set_uid(name, uid) {
                env.errors.push(error);
            }
        }
        self
    }

    /// Writes every record to `sink`, as an operator called "sink".
    pub fn sink<S: Sink<T>>(self, sink: S) -> DataStreamSink {
        self.sink_named("sink", sink)
    }

    /// Writes every record to `sink`, as an operator called `name`.
    pub fn sink_named<S: Sink<T>>(self, name: &str, sink: S) -> DataStreamSink {
        let mut env = self.env.borrow_mut();
        let name = env.unique_name(name);
        let metrics = env.graph.register_operator(&name);
        let index = env.graph.add_sink(Box::new(SinkOperatorNode::new(
            name, self.node, sink, metrics,
        )));
        drop(env);
        DataStreamSink {
            env: self.env,
            index,
        }
    }

    /// Calls `f` on every record (a sink made of a closure).
    pub fn for_each<F>(self, f: F) -> DataStreamSink
    where
        F: Fn(T) + Clone + Send + Sync + 'static,
    {
        self.sink_named("for-each", ForEachSink(f))
    }
}

/// A stream partitioned by key: the input of a keyed operator.
pub struct KeyedStream<T, KS> {
    pub(crate) stream: DataStream<T>,
    pub(crate) selector: KS,
}

impl<T: Data, KS> KeyedStream<T, KS> {
    /// Runs `function` on every record, with the record's key as the current key of its state,
    /// as an operator called "process".
    pub fn process<F>(self, function: F) -> DataStream<F::Out>
    where
        F: KeyedProcessFunction<In = T>,
        KS: Fn(&T) -> F::Key + Clone + Send + Sync + 'static,
    {
        self.process_named("process", function)
    }

    /// Like [`process`](Self::process), as an operator called `name`.
    pub fn process_named<F>(self, name: &str, function: F) -> DataStream<F::Out>
    where
        F: KeyedProcessFunction<In = T>,
        KS: Fn(&T) -> F::Key + Clone + Send + Sync + 'static,
    {
        let env = self.stream.env;
        let (name, metrics) = {
            let mut env = env.borrow_mut();
            let name = env.unique_name(name);
            let metrics = env.graph.register_operator(&name);
            (name, metrics)
        };
        let node = KeyedProcessNode::new(name, self.stream.node, self.selector, function, metrics);
        DataStream::new(env, Box::new(node))
    }
}

/// A sink that has been added to a job; set its parallelism here.
pub struct DataStreamSink {
    env: Rc<RefCell<EnvInner>>,
    index: usize,
}

impl DataStreamSink {
    /// Gives the sink the stable id `uid` in checkpoints (see [`DataStream::uid`]).
    pub fn uid(self, uid: &str) -> Self {
        {
            let mut env = self.env.borrow_mut();
            let name = env
                .graph
                .sink_mut(self.index)
                .map(|sink| sink.name().to_string());
            if let Some(name) = name {
                if let Err(error) = env.graph.set_uid(&name, uid) {
                    env.errors.push(error);
                }
            }
        }
        self
    }

    /// Runs the sink on `parallelism` subtasks (records are rebalanced round-robin onto them
    /// when its input has more).
    pub fn set_parallelism(self, parallelism: usize) -> Self {
        if let Some(sink) = self.env.borrow_mut().graph.sink_mut(self.index) {
            sink.set_parallelism(parallelism);
        }
        self
    }
}

/// A sink calling a closure on every record.
#[derive(Clone)]
struct ForEachSink<F>(F);

impl<T, F> Sink<T> for ForEachSink<F>
where
    F: Fn(T) + Clone + Send + Sync + 'static,
{
    fn write(&mut self, record: T) -> eddy_core::Result<()> {
        (self.0)(record);
        Ok(())
    }
}
