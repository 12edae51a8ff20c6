//! State descriptors: a state's name and type, from which a backend creates a handle.

use std::marker::PhantomData;
use std::sync::Arc;

use eddy_core::StateValue;

use crate::ttl::StateTtlConfig;

/// The kinds of keyed state, as recorded by a backend for each registered name (and in
/// snapshots, see [`StateMeta`](crate::snapshot::StateMeta)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StateKind {
    /// [`ValueState`](crate::ValueState).
    Value,
    /// [`ListState`](crate::ListState).
    List,
    /// [`MapState`](crate::MapState).
    Map,
    /// [`ReducingState`](crate::ReducingState).
    Reducing,
    /// [`AggregatingState`](crate::AggregatingState).
    Aggregating,
}

macro_rules! descriptor {
    ($(#[$doc:meta])* $name:ident<$($t:ident),*>) => {
        $(#[$doc])*
        pub struct $name<$($t),*> {
            name: String,
            ttl: Option<StateTtlConfig>,
            _type: PhantomData<fn() -> ($($t,)*)>,
        }

        impl<$($t),*> $name<$($t),*> {
            /// A descriptor for the state called `name` (unique within its operator).
            pub fn new(name: impl Into<String>) -> Self {
                Self { name: name.into(), ttl: None, _type: PhantomData }
            }

            /// The state's name.
            pub fn name(&self) -> &str {
                &self.name
            }

            /// Gives the state a time-to-live (Flink's `enableTimeToLive`); see
            /// [`StateTtlConfig`].
            pub fn enable_ttl(mut self, ttl: StateTtlConfig) -> Self {
                self.ttl = Some(ttl);
                self
            }

            /// The state's time-to-live, if enabled.
            pub fn ttl(&self) -> Option<&StateTtlConfig> {
                self.ttl.as_ref()
            }
        }

        impl<$($t),*> Clone for $name<$($t),*> {
            fn clone(&self) -> Self {
                Self { name: self.name.clone(), ttl: self.ttl.clone(), _type: PhantomData }
            }
        }

        impl<$($t),*> std::fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("name", &self.name)
                    .field("ttl", &self.ttl)
                    .finish()
            }
        }
    };
}

descriptor!(
    /// Describes a [`ValueState<T>`](crate::ValueState): one `T` per key.
    ValueStateDescriptor<T>
);
descriptor!(
    /// Describes a [`ListState<T>`](crate::ListState): a list of `T` per key.
    ListStateDescriptor<T>
);
descriptor!(
    /// Describes a [`MapState<UK, UV>`](crate::MapState): a map from `UK` to `UV` per key.
    MapStateDescriptor<UK, UV>
);

/// The reduce function of a [`ReducingStateDescriptor`]: combines the stored value with a new
/// one into the value to store.
pub type ReduceFn<T> = Arc<dyn Fn(&T, &T) -> T + Send + Sync>;

/// Describes a [`ReducingState<T>`](crate::ReducingState): one `T` per key, folded with a
/// reduce function on every `add`.
///
/// ```
/// use eddy_state::ReducingStateDescriptor;
/// let total = ReducingStateDescriptor::new("total", |a: &u64, b: &u64| a + b);
/// assert_eq!(total.name(), "total");
/// ```
pub struct ReducingStateDescriptor<T> {
    name: String,
    reduce: ReduceFn<T>,
    ttl: Option<StateTtlConfig>,
}

impl<T> ReducingStateDescriptor<T> {
    /// A descriptor for the state called `name`, folding added values with `reduce`.
    pub fn new(
        name: impl Into<String>,
        reduce: impl Fn(&T, &T) -> T + Send + Sync + 'static,
    ) -> Self {
        ReducingStateDescriptor {
            name: name.into(),
            reduce: Arc::new(reduce),
            ttl: None,
        }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The reduce function.
    pub fn reduce_fn(&self) -> ReduceFn<T> {
        Arc::clone(&self.reduce)
    }

    /// Gives the state a time-to-live (Flink's `enableTimeToLive`); see [`StateTtlConfig`].
    pub fn enable_ttl(mut self, ttl: StateTtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The state's time-to-live, if enabled.
    pub fn ttl(&self) -> Option<&StateTtlConfig> {
        self.ttl.as_ref()
    }
}

impl<T> Clone for ReducingStateDescriptor<T> {
    fn clone(&self) -> Self {
        ReducingStateDescriptor {
            name: self.name.clone(),
            reduce: Arc::clone(&self.reduce),
            ttl: self.ttl.clone(),
        }
    }
}

impl<T> std::fmt::Debug for ReducingStateDescriptor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReducingStateDescriptor")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// An aggregation over the values added to an [`AggregatingState`](crate::AggregatingState):
/// Flink's `AggregateFunction<IN, ACC, OUT>`.
///
/// The accumulator is what the state stores; the result is computed from it on `get`.
///
/// ```
/// use eddy_state::AggregateFunction;
///
/// /// The average of the added values.
/// struct Average;
///
/// impl AggregateFunction<u64> for Average {
///     type Acc = (u64, u64); // (sum, count)
///     type Out = f64;
///     fn create_accumulator(&self) -> (u64, u64) { (0, 0) }
///     fn add(&self, value: u64, acc: &mut (u64, u64)) { acc.0 += value; acc.1 += 1; }
///     fn get_result(&self, acc: &(u64, u64)) -> f64 { acc.0 as f64 / acc.1.max(1) as f64 }
///     fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) { (a.0 + b.0, a.1 + b.1) }
/// }
/// ```
pub trait AggregateFunction<In>: Send + Sync + 'static {
    /// The accumulator: what the state stores per key.
    type Acc: StateValue;
    /// The aggregate's result.
    type Out;

    /// A fresh accumulator, for a key's first `add`.
    fn create_accumulator(&self) -> Self::Acc;

    /// Adds one value to the accumulator.
    fn add(&self, value: In, acc: &mut Self::Acc);

    /// The result for an accumulator.
    fn get_result(&self, acc: &Self::Acc) -> Self::Out;

    /// Merges two accumulators (used when windows merge).
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
}

/// Describes an [`AggregatingState<In, F::Out>`](crate::AggregatingState): one accumulator
/// per key, updated by the [`AggregateFunction`] `F` on every `add`.
pub struct AggregatingStateDescriptor<In, F> {
    name: String,
    function: Arc<F>,
    ttl: Option<StateTtlConfig>,
    _input: PhantomData<fn(In)>,
}

impl<In, F: AggregateFunction<In>> AggregatingStateDescriptor<In, F> {
    /// A descriptor for the state called `name`, aggregating with `function`.
    pub fn new(name: impl Into<String>, function: F) -> Self {
        AggregatingStateDescriptor {
            name: name.into(),
            function: Arc::new(function),
            ttl: None,
            _input: PhantomData,
        }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The aggregate function.
    pub fn function(&self) -> Arc<F> {
        Arc::clone(&self.function)
    }

    /// Gives the state a time-to-live (Flink's `enableTimeToLive`); see [`StateTtlConfig`].
    pub fn enable_ttl(mut self, ttl: StateTtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The state's time-to-live, if enabled.
    pub fn ttl(&self) -> Option<&StateTtlConfig> {
        self.ttl.as_ref()
    }
}

impl<In, F> Clone for AggregatingStateDescriptor<In, F> {
    fn clone(&self) -> Self {
        AggregatingStateDescriptor {
            name: self.name.clone(),
            function: Arc::clone(&self.function),
            ttl: self.ttl.clone(),
            _input: PhantomData,
        }
    }
}

impl<In, F> std::fmt::Debug for AggregatingStateDescriptor<In, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregatingStateDescriptor")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .finish()
    }
}
