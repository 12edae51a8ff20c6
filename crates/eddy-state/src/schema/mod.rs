//! Schema snapshots of state types, and schema evolution on restore.
//!
//! Every checkpoint and savepoint records, per state, a [`TypeSchema`] of its key, namespace,
//! user key (map state) and value: the *shape* of the type as `serde` sees it (structs with
//! named fields, enums with named variants, sequences, maps, options, primitives). It is
//! derived from the Rust type itself by tracing its `Deserialize` implementation (see
//! `tracer.rs`, the approach of `serde-reflection`), so user types need no extra derive:
//! `#[derive(Serialize, Deserialize)]`, which state types have anyway, is enough.
//!
//! When a restored state is registered again, the new code's schema is checked against the
//! snapshot's, with Flink's three outcomes ([`Compatibility`]):
//!
//! * **compatible as is**: the same shape (names of types may differ); the bytes are used
//!   unchanged.
//! * **compatible after migration**: struct fields were added (with `#[serde(default)]`),
//!   removed or reordered, enum variants were reordered or added, or a number was widened
//!   (see [`compat`] for the exact rules). Each old value is decoded with the *old* schema
//!   and re-encoded with the new type, **eagerly, during the restore, for both backends**
//!   (the heap decodes every value on restore anyway; for RocksDB, rewriting once on restore
//!   keeps every later read on the fast path, at the cost of restore time proportional to
//!   the state's size).
//! * **incompatible**: anything else, e.g. a field's type changed (`u64` to `String`), a
//!   field added without a default, an enum variant removed, or a changed key, namespace or
//!   map user-key type (keys decide placement and identity, so they may never change). The
//!   restore fails when the state is registered, before any of its entries is read, with an
//!   [`EddyError::Schema`] naming the operator, the state, the field and the reason; the
//!   checkpoint itself is never modified.
//!
//! Types that cannot be traced (a `Deserialize` that validates its input or needs a
//! self-describing format, recursive types, more enum variants than the tracer explores) get
//! an *opaque* schema: their Rust type name, which must then stay exactly the same.

pub mod compat;
mod dynamic;
pub(crate) mod skip;
mod tracer;

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use compat::Compatibility;
pub(crate) use dynamic::Migrator;
pub(crate) use skip::encoded_len;

/// The shape of one state type, as recorded in checkpoints (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeSchema {
    /// `std::any::type_name` of the type (informational unless the schema is opaque).
    pub type_name: String,
    /// The traced shape, or `None` when the type could not be traced (opaque).
    pub shape: Option<TracedShape>,
}

/// A traced type: its root shape and every named container it refers to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracedShape {
    /// The shape of the type itself.
    pub root: Shape,
    /// The named structs and enums, by name.
    pub containers: BTreeMap<String, Container>,
}

/// The shape of a value in `serde`'s data model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // the variants are serde's primitive types
pub enum Shape {
    Unit,
    Bool,
    I8,
    I16,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
    U128,
    F32,
    F64,
    Char,
    Str,
    Bytes,
    /// `Option<T>`.
    Option(Box<Shape>),
    /// A sequence (`Vec<T>`, `VecDeque<T>`, sets).
    Seq(Box<Shape>),
    /// A map (`HashMap<K, V>`, `BTreeMap<K, V>`).
    Map(Box<Shape>, Box<Shape>),
    /// A tuple.
    Tuple(Vec<Shape>),
    /// A fixed-size array `[T; N]`.
    Array(Box<Shape>, u64),
    /// A named struct or enum, described in [`TracedShape::containers`].
    Named(String),
}

/// A named struct or enum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Container {
    /// `struct A;`
    UnitStruct,
    /// `struct A(T);`
    Newtype(Shape),
    /// `struct A(T, U);`
    TupleStruct(Vec<Shape>),
    /// `struct A { a: T }`
    Struct(Vec<Field>),
    /// `enum A { ... }`, variants in index order.
    Enum(Vec<Variant>),
}

/// A named field of a struct or struct variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The field's name as serde sees it (after `rename`).
    pub name: String,
    /// Its shape.
    pub shape: Shape,
}

/// One variant of an enum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// The variant's index: what the binary encoding writes.
    pub index: u32,
    /// The variant's name.
    pub name: String,
    /// What it carries.
    pub body: VariantBody,
}

/// What an enum variant carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VariantBody {
    /// `A`
    Unit,
    /// `A(T)`
    Newtype(Shape),
    /// `A(T, U)`
    Tuple(Vec<Shape>),
    /// `A { a: T }`
    Struct(Vec<Field>),
}

impl TypeSchema {
    /// The schema of `T`, traced from its `Deserialize` implementation; opaque if `T` cannot
    /// be traced.
    pub fn of<T: DeserializeOwned>() -> Self {
        TypeSchema {
            type_name: std::any::type_name::<T>().to_string(),
            shape: tracer::trace::<T>(),
        }
    }

    /// An opaque schema: only the type name, which must match exactly.
    pub fn opaque(type_name: impl Into<String>) -> Self {
        TypeSchema {
            type_name: type_name.into(),
            shape: None,
        }
    }

    /// How the shape reads in errors and `eddy checkpoints show`, e.g. `u64`,
    /// `Option<String>`, `Transaction { customer_id: u64, amount: u64 }`.
    pub fn describe(&self) -> String {
        match &self.shape {
            Some(traced) => traced.render(&traced.root, true),
            None => self.type_name.clone(),
        }
    }
}

impl fmt::Display for TypeSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl TracedShape {
    /// `shape` as Rust-like text; `expand` spells out the fields of a top-level struct.
    pub(crate) fn render(&self, shape: &Shape, expand: bool) -> String {
        match shape {
            Shape::Named(name) => match (expand, self.containers.get(name)) {
                (true, Some(Container::Struct(fields))) => {
                    let fields: Vec<String> = fields
                        .iter()
                        .map(|f| format!("{}: {}", f.name, self.render(&f.shape, false)))
                        .collect();
                    format!("{name} {{ {} }}", fields.join(", "))
                }
                _ => name.clone(),
            },
            Shape::Option(inner) => format!("Option<{}>", self.render(inner, false)),
            Shape::Seq(inner) => format!("Vec<{}>", self.render(inner, false)),
            Shape::Map(k, v) => {
                format!("Map<{}, {}>", self.render(k, false), self.render(v, false))
            }
            Shape::Tuple(items) => {
                let items: Vec<String> = items.iter().map(|s| self.render(s, false)).collect();
                format!("({})", items.join(", "))
            }
            Shape::Array(inner, n) => format!("[{}; {n}]", self.render(inner, false)),
            primitive => primitive_name(primitive).to_string(),
        }
    }
}

/// The Rust name of a primitive shape.
pub(crate) fn primitive_name(shape: &Shape) -> &'static str {
    match shape {
        Shape::Unit => "()",
        Shape::Bool => "bool",
        Shape::I8 => "i8",
        Shape::I16 => "i16",
        Shape::I32 => "i32",
        Shape::I64 => "i64",
        Shape::I128 => "i128",
        Shape::U8 => "u8",
        Shape::U16 => "u16",
        Shape::U32 => "u32",
        Shape::U64 => "u64",
        Shape::U128 => "u128",
        Shape::F32 => "f32",
        Shape::F64 => "f64",
        Shape::Char => "char",
        Shape::Str => "String",
        Shape::Bytes => "bytes",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Tx {
        id: u64,
        note: Option<String>,
        kind: Kind,
        tags: Vec<(u8, String)>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Kind {
        Sale,
        Refund(u64),
        Fee { cents: i32 },
    }

    #[test]
    fn traces_nested_structs_and_enums() {
        let schema = TypeSchema::of::<Tx>();
        let traced = schema.shape.as_ref().expect("traceable");
        assert_eq!(traced.root, Shape::Named("Tx".into()));
        let Some(Container::Enum(variants)) = traced.containers.get("Kind") else {
            panic!("Kind is an enum: {traced:?}");
        };
        let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["Sale", "Refund", "Fee"]);
        assert_eq!(
            schema.describe(),
            "Tx { id: u64, note: Option<String>, kind: Kind, tags: Vec<(u8, String)> }"
        );
    }

    #[test]
    fn primitives_and_opaque_types() {
        assert_eq!(TypeSchema::of::<u64>().describe(), "u64");
        // NonZero's Deserialize refuses the tracer's zero: opaque, named by its type.
        let opaque = TypeSchema::of::<std::num::NonZeroU64>();
        assert!(opaque.shape.is_none());
        assert!(opaque.describe().contains("NonZero"));
    }
}
