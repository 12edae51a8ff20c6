//! State descriptors: a state's name and type, from which a backend creates a handle.

use std::marker::PhantomData;

/// The kinds of keyed state, as recorded by a backend for each registered name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// [`ValueState`](crate::ValueState).
    Value,
    /// [`ListState`](crate::ListState).
    List,
    /// [`MapState`](crate::MapState).
    Map,
}

macro_rules! descriptor {
    ($(#[$doc:meta])* $name:ident<$($t:ident),*>) => {
        $(#[$doc])*
        pub struct $name<$($t),*> {
            name: String,
            _type: PhantomData<fn() -> ($($t,)*)>,
        }

        impl<$($t),*> $name<$($t),*> {
            /// A descriptor for the state called `name` (unique within its operator).
            pub fn new(name: impl Into<String>) -> Self {
                Self { name: name.into(), _type: PhantomData }
            }

            /// The state's name.
            pub fn name(&self) -> &str {
                &self.name
            }
        }

        impl<$($t),*> Clone for $name<$($t),*> {
            fn clone(&self) -> Self {
                Self::new(self.name.clone())
            }
        }

        impl<$($t),*> std::fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("name", &self.name).finish()
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
