//! The broadcast state pattern: `DataStream::broadcast`, `KeyedStream::connect` and
//! [`BroadcastConnectedStream::process`] (Flink's `broadcast(MapStateDescriptor...)`,
//! `KeyedStream.connect(BroadcastStream)` and `KeyedBroadcastProcessFunction`).

use std::cell::RefCell;
use std::rc::Rc;

use eddy_core::{Data, EddyError, Key, StateValue};
use eddy_runtime::{
    BroadcastStateSpec, KeyedBroadcastInputs, KeyedBroadcastNode, KeyedBroadcastProcessFunction,
    StreamNode,
};
use eddy_state::MapStateDescriptor;

use crate::environment::EnvInner;
use crate::stream::{DataStream, KeyedStream};

/// A stream whose every record goes to every subtask of the operator it is connected to,
/// with the broadcast states that operator keeps (see [`DataStream::broadcast`]).
pub struct BroadcastStream<T> {
    env: Rc<RefCell<EnvInner>>,
    node: Box<dyn StreamNode<T>>,
    states: Vec<BroadcastStateSpec>,
}

impl<T: Data> DataStream<T> {
    /// Broadcasts this stream (e.g. rules) to every subtask of the operator it is connected to
    /// (with [`KeyedStream::connect`]), which keeps a broadcast state described by
    /// `descriptor`: a map, the same on every subtask, written from the broadcast elements.
    pub fn broadcast<K: Key, V: StateValue>(
        self,
        descriptor: MapStateDescriptor<K, V>,
    ) -> BroadcastStream<T> {
        BroadcastStream {
            env: self.env,
            node: self.node,
            states: vec![BroadcastStateSpec::new(descriptor)],
        }
    }
}

impl<T> BroadcastStream<T> {
    /// Adds another broadcast state (Flink's `broadcast(descriptor1, descriptor2, ...)`).
    pub fn with_state<K: Key, V: StateValue>(
        mut self,
        descriptor: MapStateDescriptor<K, V>,
    ) -> Self {
        self.states.push(BroadcastStateSpec::new(descriptor));
        self
    }
}

impl<T: Data, KS> KeyedStream<T, KS> {
    /// Connects this keyed stream to `broadcast`: the next operator sees every broadcast
    /// element on every subtask and this stream's elements by key.
    pub fn connect<B: Data>(
        self,
        broadcast: BroadcastStream<B>,
    ) -> BroadcastConnectedStream<T, KS, B> {
        BroadcastConnectedStream {
            keyed: self,
            broadcast,
        }
    }
}

/// A keyed stream connected to a broadcast stream: the input of a
/// [`KeyedBroadcastProcessFunction`].
pub struct BroadcastConnectedStream<T, KS, B> {
    keyed: KeyedStream<T, KS>,
    broadcast: BroadcastStream<B>,
}

impl<T: Data, KS, B: Data> BroadcastConnectedStream<T, KS, B> {
    /// Runs `function` on both inputs, as an operator called "broadcast-process".
    pub fn process<F>(self, function: F) -> DataStream<F::Out>
    where
        F: KeyedBroadcastProcessFunction<In = T, BroadcastIn = B>,
        KS: Fn(&T) -> F::Key + Clone + Send + Sync + 'static,
    {
        self.process_named("broadcast-process", function)
    }

    /// Like [`process`](Self::process), as an operator called `name`.
    pub fn process_named<F>(self, name: &str, function: F) -> DataStream<F::Out>
    where
        F: KeyedBroadcastProcessFunction<In = T, BroadcastIn = B>,
        KS: Fn(&T) -> F::Key + Clone + Send + Sync + 'static,
    {
        let env = self.keyed.stream.env;
        let (name, metrics) = {
            let mut inner = env.borrow_mut();
            if !Rc::ptr_eq(&env, &self.broadcast.env) {
                inner.errors.push(EddyError::Config(format!(
                    "operator \"{name}\" connects streams of two different environments"
                )));
            }
            let name = inner.unique_name(name);
            let metrics = inner.graph.register_operator(&name);
            (name, metrics)
        };
        let inputs = KeyedBroadcastInputs {
            keyed: self.keyed.stream.node,
            key_selector: self.keyed.selector,
            broadcast: self.broadcast.node,
            broadcast_states: self.broadcast.states,
        };
        let node = KeyedBroadcastNode::new(name, inputs, function, metrics);
        DataStream::new(env, Box::new(node))
    }
}
