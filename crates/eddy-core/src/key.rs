//! Keys and their stable hash.
//!
//! A key's hash decides its key group, and key groups are persisted in checkpoints and
//! savepoints, so the hash must never change: not between runs (Rust's `std` hasher is
//! randomized per process), not between machines (no pointer width or endianness may leak in),
//! and not between Eddy versions.
//!
//! Eddy uses **Java's `hashCode` contract** for every built-in key type. It is documented,
//! platform-independent and, combined with Flink's murmur step in
//! [`key_group`](crate::key_group), puts every key in the same key group Apache Flink would:
//!
//! | Rust type | hash (Java equivalent) |
//! | --- | --- |
//! | `u64`, `i64` | `Long.hashCode`: `(int)(v ^ (v >>> 32))` |
//! | `u32`, `i32`, `u16`, `i16`, `u8`, `i8` | `Integer.hashCode` of the value (`u32` by its bits) |
//! | `bool` | `Boolean.hashCode`: 1231 / 1237 |
//! | `char` | `String.hashCode` of the character (one or two UTF-16 units) |
//! | `String` | `String.hashCode` over UTF-16 code units |
//! | `(A, B, ..)` | Flink `TupleN.hashCode`: `h = 31 * h + field` from the first field's hash |
//! | `Option<T>` | `None` is 0 (a Java `null`), `Some(v)` is `v`'s hash |
//! | `Vec<T>` | `java.util.List.hashCode`: `h = 1; h = 31 * h + e` |
//!
//! For your own key types, implement [`Key::stable_hash`] by combining fields with
//! [`Key::combine`]; never use `std::hash::Hash` output.
//!
//! ```
//! use eddy_core::Key;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
//! struct Account { bank: u32, number: u64 }
//!
//! impl Key for Account {
//!     fn stable_hash(&self) -> i32 {
//!         Self::combine(self.bank.stable_hash(), self.number.stable_hash())
//!     }
//! }
//! let a = Account { bank: 7, number: 1 };
//! assert_eq!(a.stable_hash(), 31 * 7 + 1);
//! ```

use std::hash::Hash;

use serde::{de::DeserializeOwned, Serialize};

/// A value that keyed state can hold: owned, cloneable, serializable and shareable between
/// threads.
///
/// The heap backend stores such values as objects and never serializes them on access; the
/// serde bounds are there because checkpoints, savepoints and the RocksDB backend need them,
/// and `Send + Sync` because an asynchronous snapshot of the heap backend encodes a copy of
/// the values as of the barrier on a background thread while the operator goes on.
pub trait StateValue: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> StateValue for T {}

/// A record that can flow through a stream: owned, cloneable, sendable between subtasks, and
/// serializable (timely serializes records that cross process boundaries). `Sync` because
/// records are kept in keyed state too (window contents, join buffers), which is
/// [`StateValue`].
pub trait Data: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {}

impl<T: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> Data for T {}

/// A type a stream can be keyed by (`key_by`), with a hash that never changes.
///
/// `Eq` and `std::hash::Hash` are used by in-memory tables only (they may be randomized);
/// [`stable_hash`](Key::stable_hash) alone decides the key group.
pub trait Key: StateValue + Eq + Hash + Send + std::fmt::Debug {
    /// The key's stable hash: Java's `hashCode` of the equivalent Java value.
    fn stable_hash(&self) -> i32;

    /// Combines two hashes the way Java and Flink tuples do: `31 * a + b` (wrapping).
    fn combine(a: i32, b: i32) -> i32 {
        a.wrapping_mul(31).wrapping_add(b)
    }
}

/// Java's `String.hashCode`: `s[0]*31^(n-1) + ... + s[n-1]` over UTF-16 code units.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

impl Key for u64 {
    fn stable_hash(&self) -> i32 {
        (*self ^ (*self >> 32)) as u32 as i32
    }
}

impl Key for i64 {
    fn stable_hash(&self) -> i32 {
        (*self as u64).stable_hash()
    }
}

impl Key for u32 {
    fn stable_hash(&self) -> i32 {
        *self as i32
    }
}

macro_rules! small_int_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn stable_hash(&self) -> i32 {
                i32::from(*self)
            }
        }
    )*};
}
small_int_key!(i32, u16, i16, u8, i8);

impl Key for bool {
    fn stable_hash(&self) -> i32 {
        if *self {
            1231
        } else {
            1237
        }
    }
}

impl Key for char {
    fn stable_hash(&self) -> i32 {
        let mut buf = [0u8; 4];
        java_string_hash(self.encode_utf8(&mut buf))
    }
}

impl Key for String {
    fn stable_hash(&self) -> i32 {
        java_string_hash(self)
    }
}

impl<T: Key> Key for Option<T> {
    fn stable_hash(&self) -> i32 {
        self.as_ref().map_or(0, Key::stable_hash)
    }
}

impl<T: Key> Key for Vec<T> {
    fn stable_hash(&self) -> i32 {
        self.iter()
            .fold(1, |h, e| Self::combine(h, e.stable_hash()))
    }
}

macro_rules! tuple_key {
    ($first:ident $(, $rest:ident)*) => {
        impl<$first: Key $(, $rest: Key)*> Key for ($first, $($rest),*) {
            #[allow(non_snake_case)]
            fn stable_hash(&self) -> i32 {
                let ($first, $($rest),*) = self;
                let h = $first.stable_hash();
                $(let h = Self::combine(h, $rest.stable_hash());)*
                h
            }
        }
    };
}
tuple_key!(A, B);
tuple_key!(A, B, C);
tuple_key!(A, B, C, D);
tuple_key!(A, B, C, D, E);

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values are Java's: `Long.valueOf(x).hashCode()`, `"...".hashCode()`, etc.
    #[test]
    fn long_hash_matches_java() {
        assert_eq!(0u64.stable_hash(), 0);
        assert_eq!(42u64.stable_hash(), 42);
        assert_eq!((1u64 << 32).stable_hash(), 1);
        assert_eq!(u64::MAX.stable_hash(), 0);
        assert_eq!((-1i64).stable_hash(), 0);
        assert_eq!(
            0x1234_5678_9abc_def0u64.stable_hash(),
            0x1234_5678 ^ 0x9abc_def0u32 as i32
        );
    }

    #[test]
    fn string_hash_matches_java() {
        assert_eq!("".to_string().stable_hash(), 0);
        assert_eq!("a".to_string().stable_hash(), 97);
        assert_eq!("hello".to_string().stable_hash(), 99_162_322);
        // "customer-1".hashCode() in Java.
        assert_eq!("customer-1".to_string().stable_hash(), -1_581_185_534);
        // A non-BMP character hashes as its surrogate pair, as in Java.
        assert_eq!('😀'.stable_hash(), 0xD83D * 31 + 0xDE00);
    }

    #[test]
    fn tuple_hash_matches_flink_tuple2() {
        let t = (1u64, "a".to_string());
        assert_eq!(t.stable_hash(), 31 + 97);
        assert_eq!((1u64, 2u64, 3u64).stable_hash(), (31 + 2) * 31 + 3);
    }

    #[test]
    fn misc_hashes() {
        assert_eq!(true.stable_hash(), 1231);
        assert_eq!(false.stable_hash(), 1237);
        assert_eq!(None::<u64>.stable_hash(), 0);
        assert_eq!(Some(5u64).stable_hash(), 5);
        assert_eq!(vec![1u64, 2].stable_hash(), (31 + 1) * 31 + 2);
        assert_eq!(u32::MAX.stable_hash(), -1);
        assert_eq!((-7i32).stable_hash(), -7);
    }
}
