//! Windowed streams: `key_by(..).window(assigner)` and its window functions.

use std::sync::Arc;
use std::time::Duration;

use eddy_core::{Data, Key};
use eddy_runtime::windows::{
    AggregateContents, Emit, LateOutput, ListContents, ProcessWindowFunction, ReduceContents,
    TimeWindow, WindowAssigner, WindowContents, WindowContentsSpec, WindowNode, WindowOutput,
    WindowSpec,
};
use eddy_runtime::Collector;
use eddy_state::AggregateFunction;

use crate::stream::{DataStream, KeyedStream};

impl<T: Data, KS> KeyedStream<T, KS> {
    /// Groups each key's records into the windows `assigner` gives them (tumbling, sliding or
    /// session; event or processing time), as Flink's `window(..)`. Event-time windows need
    /// timestamps and watermarks (`assign_timestamps_and_watermarks`) upstream.
    pub fn window(self, assigner: WindowAssigner) -> WindowedStream<T, KS> {
        WindowedStream {
            keyed: self,
            assigner,
            allowed_lateness: 0,
            name: "window".to_string(),
        }
    }
}

/// A keyed stream cut into windows; a window function ends it.
///
/// Window contents are keyed state under the window's namespace, fired by a timer at the
/// window's end (the watermark passing it, for event time), and purged once the watermark
/// passes the end plus the allowed lateness. Elements that arrive later are dropped, or go to
/// the side output with [`side_output_late_data`](Self::side_output_late_data).
pub struct WindowedStream<T, KS> {
    keyed: KeyedStream<T, KS>,
    assigner: WindowAssigner,
    allowed_lateness: u64,
    name: String,
}

impl<T: Data, KS> WindowedStream<T, KS> {
    /// Keeps each event-time window's state this long after its end: an element that arrives
    /// within it updates the window and fires it again (Flink's `allowedLateness`).
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = u64::try_from(lateness.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Names the window operator (default "window").
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Emits late elements too: the window functions then produce [`WindowOutput`]s, results
    /// and late elements in one stream (Flink's `sideOutputLateData`).
    pub fn side_output_late_data(self) -> LateDataWindowedStream<T, KS> {
        LateDataWindowedStream { windowed: self }
    }

    /// Folds each window's elements with `reduce` as they arrive and emits the result.
    pub fn reduce<K: Key, F>(self, reduce: F) -> DataStream<T>
    where
        KS: Fn(&T) -> K + Clone + Send + Sync + 'static,
        F: Fn(&T, &T) -> T + Send + Sync + 'static,
    {
        self.build(ReduceContents::new(reduce), emit_result(), None)
    }

    /// Aggregates each window's elements with `function` as they arrive and emits its result.
    pub fn aggregate<K: Key, F>(self, function: F) -> DataStream<F::Out>
    where
        KS: Fn(&T) -> K + Clone + Send + Sync + 'static,
        F: AggregateFunction<T> + Clone,
        F::Out: Data,
    {
        self.build(AggregateContents(function), emit_result(), None)
    }

    /// Keeps each window's elements and hands them to `function` when it fires (the function
    /// is cloned for each firing).
    pub fn process<K: Key, O: Data, P>(self, function: P) -> DataStream<O>
    where
        KS: Fn(&T) -> K + Clone + Send + Sync + 'static,
        P: ProcessWindowFunction<K, T, O>,
    {
        self.build(ListContents::default(), emit_processed(function), None)
    }

    fn build<K: Key, C, O: Data>(
        self,
        contents: C,
        emit: Emit<K, <C::Contents as WindowContents<T>>::Result, O>,
        late: LateOutput<T, O>,
    ) -> DataStream<O>
    where
        KS: Fn(&T) -> K + Clone + Send + Sync + 'static,
        C: WindowContentsSpec<K, T>,
    {
        let env = self.keyed.stream.env;
        let (name, metrics) = {
            let mut env = env.borrow_mut();
            let name = env.unique_name(&self.name);
            let metrics = env.graph.register_operator(&name);
            (name, metrics)
        };
        let spec = WindowSpec {
            key_selector: self.keyed.selector,
            assigner: self.assigner,
            allowed_lateness: self.allowed_lateness,
            contents,
            emit,
            late,
        };
        let node = WindowNode::new(name, self.keyed.stream.node, spec, metrics);
        DataStream::new(env, Box::new(node))
    }
}

/// A [`WindowedStream`] whose late elements are emitted as [`WindowOutput::Late`].
pub struct LateDataWindowedStream<T, KS> {
    windowed: WindowedStream<T, KS>,
}

impl<T: Data, KS> LateDataWindowedStream<T, KS> {
    /// [`WindowedStream::reduce`], with late elements.
    pub fn reduce<K: Key, F>(self, reduce: F) -> DataStream<WindowOutput<T, T>>
    where
        KS: Fn(&T) -> K + Clone + Send + Sync + 'static,
        F: Fn(&T, &T) -> T + Send + Sync + 'static,
    {
        self.windowed.build(
            ReduceContents::new(reduce),
            as_results(emit_result()),
            late_elements(),
        )
    }

    /// [`WindowedStream::aggregate`], with late elements.
    pub fn aggregate<K: Key, F>(self, function: F) -> DataStream<WindowOutput<F::Out, T>>
    where
        KS: Fn(&T) -> K + Clone + Send + Sync + 'static,
        F: AggregateFunction<T> + Clone,
        F::Out: Data,
    {
        self.windowed.build(
            AggregateContents(function),
            as_results(emit_result()),
            late_elements(),
        )
    }

    /// [`WindowedStream::process`], with late elements.
    pub fn process<K: Key, O: Data, P>(self, function: P) -> DataStream<WindowOutput<O, T>>
    where
        KS: Fn(&T) -> K + Clone + Send + Sync + 'static,
        P: ProcessWindowFunction<K, T, O>,
    {
        self.windowed.build(
            ListContents::default(),
            as_results(emit_processed(function)),
            late_elements(),
        )
    }
}

/// Emits a window's incremental result as it is.
fn emit_result<K, R: 'static>() -> Emit<K, R, R> {
    Arc::new(
        |_: &K, _: &TimeWindow, result: R, out: &mut Collector<'_, R>| {
            out.collect(result);
            Ok(())
        },
    )
}

/// Hands a window's elements to a process window function.
fn emit_processed<K: Key, T: 'static, O: 'static, P>(function: P) -> Emit<K, Vec<T>, O>
where
    P: ProcessWindowFunction<K, T, O>,
{
    Arc::new(
        move |key: &K, window: &TimeWindow, elements: Vec<T>, out: &mut Collector<'_, O>| {
            function.clone().process(key, window, elements, out)
        },
    )
}

/// Wraps what `emit` produces as [`WindowOutput::Result`].
fn as_results<K: 'static, R: 'static, O: 'static, T: 'static>(
    emit: Emit<K, R, O>,
) -> Emit<K, R, WindowOutput<O, T>> {
    Arc::new(
        move |key: &K,
              window: &TimeWindow,
              result: R,
              out: &mut Collector<'_, WindowOutput<O, T>>| {
            let mut produced = Vec::new();
            emit(key, window, result, &mut Collector::new(&mut produced))?;
            for record in produced {
                out.collect(WindowOutput::Result(record.value));
            }
            Ok(())
        },
    )
}

/// Emits late elements as [`WindowOutput::Late`].
fn late_elements<O: 'static, T: 'static>() -> LateOutput<T, WindowOutput<O, T>> {
    Some(Arc::new(|element: T| WindowOutput::Late(element)))
}
