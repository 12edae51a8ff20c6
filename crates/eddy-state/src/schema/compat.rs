//! Whether a value written with one schema can be read as another: Flink's
//! `TypeSerializerSchemaCompatibility` outcomes, with Avro/POJO-style rules.
//!
//! | change | outcome |
//! | --- | --- |
//! | nothing but type names (a struct renamed or moved) | compatible as is |
//! | enum variants added after the existing ones | compatible as is |
//! | struct field added with `#[serde(default)]` | after migration |
//! | struct field added without a default | incompatible (checked with a probe value) |
//! | struct field removed, or fields reordered | after migration |
//! | enum variants reordered, or added in between | after migration |
//! | a number widened: unsigned to a wider unsigned or signed, signed to a wider signed, integers up to 16 bits to `f32`, up to 32 bits to `f64`, `f32` to `f64`; `char` to `String` | after migration |
//! | `T` to `Option<T>` | after migration |
//! | an enum variant removed | incompatible |
//! | any other type change (`u64` to `String`, narrowing, struct to enum, tuple arity) | incompatible |
//! | map keys, keys and namespaces: anything but "as is" | incompatible |

use std::collections::HashSet;
use std::fmt;

use super::{Container, Field, Shape, TracedShape, TypeSchema, VariantBody};

/// The outcome of checking a new schema against a restored one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compatibility {
    /// The old bytes read as the new type unchanged.
    AsIs,
    /// The old values must be decoded with the old schema and re-encoded.
    AfterMigration,
    /// The new type cannot read the old values.
    Incompatible(Incompatibility),
}

/// Why a schema change is incompatible, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incompatibility {
    /// The field path from the top-level type, e.g. `["address", "zip"]`; empty for the
    /// type itself.
    pub path: Vec<String>,
    /// What changed, e.g. `changed from u64 to String`.
    pub reason: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "type {}", self.reason)
        } else {
            write!(f, "field \"{}\" {}", self.path.join("."), self.reason)
        }
    }
}

/// Checks whether values written as `old` can be read as `new`.
pub fn check(old: &TypeSchema, new: &TypeSchema) -> Compatibility {
    match (&old.shape, &new.shape) {
        (Some(old_shape), Some(new_shape)) => {
            let mut comparer = Comparer {
                old: old_shape,
                new: new_shape,
                path: Vec::new(),
                visiting: HashSet::new(),
            };
            match comparer.shape(&old_shape.root, &new_shape.root) {
                Ok(Outcome::AsIs) => Compatibility::AsIs,
                Ok(Outcome::Migrate) => Compatibility::AfterMigration,
                Err(why) => Compatibility::Incompatible(why),
            }
        }
        _ if old.type_name == new.type_name => Compatibility::AsIs,
        _ => Compatibility::Incompatible(Incompatibility {
            path: Vec::new(),
            reason: format!(
                "changed from {} to {} (a type that cannot be traced for schema evolution \
                 must keep its exact type)",
                old.type_name, new.type_name
            ),
        }),
    }
}

/// Checks that `new` is `old` exactly as is (keys, namespaces, map user keys).
pub fn check_identical(old: &TypeSchema, new: &TypeSchema) -> Result<(), String> {
    match check(old, new) {
        Compatibility::AsIs => Ok(()),
        _ => Err(format!("changed from {old} to {new}")),
    }
}

/// Whether a comparison needs a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    AsIs,
    Migrate,
}

type Checked = Result<Outcome, Incompatibility>;

struct Comparer<'a> {
    old: &'a TracedShape,
    new: &'a TracedShape,
    path: Vec<String>,
    /// Container pairs being compared, so that recursive types terminate.
    visiting: HashSet<(String, String)>,
}

impl Comparer<'_> {
    fn fail(&self, reason: String) -> Incompatibility {
        Incompatibility {
            path: self.path.clone(),
            reason,
        }
    }

    fn changed(&self, old: &Shape, new: &Shape) -> Incompatibility {
        self.fail(format!(
            "changed from {} to {}",
            self.old.render(old, false),
            self.new.render(new, false)
        ))
    }

    fn shape(&mut self, old: &Shape, new: &Shape) -> Checked {
        match (old, new) {
            (Shape::Named(a), Shape::Named(b)) => self.named(a, b),
            (Shape::Option(a), Shape::Option(b)) | (Shape::Seq(a), Shape::Seq(b)) => {
                self.shape(a, b)
            }
            (Shape::Map(ak, av), Shape::Map(bk, bv)) => {
                if self.shape(ak, bk)? != Outcome::AsIs {
                    return Err(self.fail(format!(
                        "changed its map key from {} to {} (map keys may not change)",
                        self.old.render(ak, false),
                        self.new.render(bk, false)
                    )));
                }
                self.shape(av, bv)
            }
            (Shape::Tuple(a), Shape::Tuple(b)) if a.len() == b.len() => self.all(a, b),
            (Shape::Array(a, n), Shape::Array(b, m)) if n == m => self.shape(a, b),
            (old, Shape::Option(inner)) if !matches!(old, Shape::Option(_)) => {
                self.shape(old, inner).map(|_| Outcome::Migrate)
            }
            (a, b) if a == b => Ok(Outcome::AsIs),
            (a, b) if widens(a, b) => Ok(Outcome::Migrate),
            (a, b) => Err(self.changed(a, b)),
        }
    }

    fn all(&mut self, old: &[Shape], new: &[Shape]) -> Checked {
        let mut outcome = Outcome::AsIs;
        for (a, b) in old.iter().zip(new) {
            outcome = outcome.max(self.shape(a, b)?);
        }
        Ok(outcome)
    }

    fn named(&mut self, old_name: &str, new_name: &str) -> Checked {
        let key = (old_name.to_string(), new_name.to_string());
        if !self.visiting.insert(key.clone()) {
            return Ok(Outcome::AsIs); // already being compared further up
        }
        let outcome = match (
            self.old.containers.get(old_name),
            self.new.containers.get(new_name),
        ) {
            (Some(old), Some(new)) => self.container(old, new),
            _ => Err(self.fail(format!(
                "refers to an undescribed type ({old_name} / {new_name})"
            ))),
        };
        self.visiting.remove(&key);
        outcome
    }

    fn container(&mut self, old: &Container, new: &Container) -> Checked {
        match (old, new) {
            (Container::UnitStruct, Container::UnitStruct) => Ok(Outcome::AsIs),
            (Container::Newtype(a), Container::Newtype(b)) => self.shape(a, b),
            (Container::TupleStruct(a), Container::TupleStruct(b)) if a.len() == b.len() => {
                self.all(a, b)
            }
            (Container::Struct(a), Container::Struct(b)) => self.fields(a, b),
            (Container::Enum(a), Container::Enum(b)) => {
                let mut outcome = Outcome::AsIs;
                for variant in a {
                    let Some(matching) = b.iter().find(|v| v.name == variant.name) else {
                        return Err(self.fail(format!(
                            "lost enum variant \"{}\" (old values may hold it)",
                            variant.name
                        )));
                    };
                    if matching.index != variant.index {
                        outcome = Outcome::Migrate;
                    }
                    self.path.push(variant.name.clone());
                    let body = self.variant(&variant.body, &matching.body);
                    self.path.pop();
                    outcome = outcome.max(body?);
                }
                Ok(outcome)
            }
            (a, b) => Err(self.fail(format!(
                "changed from {} to {}",
                container_kind(a),
                container_kind(b)
            ))),
        }
    }

    fn variant(&mut self, old: &VariantBody, new: &VariantBody) -> Checked {
        match (old, new) {
            (VariantBody::Unit, VariantBody::Unit) => Ok(Outcome::AsIs),
            (VariantBody::Newtype(a), VariantBody::Newtype(b)) => self.shape(a, b),
            (VariantBody::Tuple(a), VariantBody::Tuple(b)) if a.len() == b.len() => self.all(a, b),
            (VariantBody::Struct(a), VariantBody::Struct(b)) => self.fields(a, b),
            _ => Err(self.fail("changed the kind of its variant's contents".into())),
        }
    }

    /// Fields match by name: added and removed fields, and a new order, need a migration
    /// (whether an added field has a default is checked with a probe value afterwards).
    fn fields(&mut self, old: &[Field], new: &[Field]) -> Checked {
        let same_names =
            old.len() == new.len() && old.iter().zip(new).all(|(a, b)| a.name == b.name);
        let mut outcome = if same_names {
            Outcome::AsIs
        } else {
            Outcome::Migrate
        };
        for field in old {
            if let Some(matching) = new.iter().find(|f| f.name == field.name) {
                self.path.push(field.name.clone());
                let checked = self.shape(&field.shape, &matching.shape);
                self.path.pop();
                outcome = outcome.max(checked?);
            }
        }
        Ok(outcome)
    }
}

fn container_kind(container: &Container) -> &'static str {
    match container {
        Container::UnitStruct => "a unit struct",
        Container::Newtype(_) => "a newtype struct",
        Container::TupleStruct(_) => "a tuple struct",
        Container::Struct(_) => "a struct",
        Container::Enum(_) => "an enum",
    }
}

/// The declared widenings: every old value is exactly representable in the new type.
fn widens(old: &Shape, new: &Shape) -> bool {
    use Shape::*;
    matches!(
        (old, new),
        (
            U8,
            U16 | U32 | U64 | U128 | I16 | I32 | I64 | I128 | F32 | F64
        ) | (U16, U32 | U64 | U128 | I32 | I64 | I128 | F32 | F64)
            | (U32, U64 | U128 | I64 | I128 | F64)
            | (U64, U128 | I128)
            | (I8, I16 | I32 | I64 | I128 | F32 | F64)
            | (I16, I32 | I64 | I128 | F32 | F64)
            | (I32, I64 | I128 | F64)
            | (I64, I128)
            | (F32, F64)
            | (Char, Str)
    )
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    mod v1 {
        use serde::Deserialize;
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Tx {
            pub id: u64,
            pub amount: u32,
            pub kind: super::Kind,
        }
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Kind {
        Sale,
        Refund,
    }

    mod renamed {
        use serde::Deserialize;
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Transaction {
            pub id: u64,
            pub amount: u32,
            pub kind: super::Kind,
        }
    }

    mod widened_and_added {
        use serde::Deserialize;
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Tx {
            pub amount: u64,
            pub id: u64,
            pub kind: super::Kind,
            #[serde(default)]
            pub note: String,
        }
    }

    mod narrowed {
        use serde::Deserialize;
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Tx {
            pub id: u64,
            pub amount: u16,
            pub kind: super::Kind,
        }
    }

    mod lost_variant {
        use serde::Deserialize;
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub enum Kind {
            Sale,
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Tx {
            pub id: u64,
            pub amount: u32,
            pub kind: Kind,
        }
    }

    fn outcome<A: serde::de::DeserializeOwned, B: serde::de::DeserializeOwned>() -> Compatibility {
        check(&TypeSchema::of::<A>(), &TypeSchema::of::<B>())
    }

    #[test]
    fn renaming_a_type_is_compatible_as_is() {
        assert_eq!(
            outcome::<v1::Tx, renamed::Transaction>(),
            Compatibility::AsIs
        );
    }

    #[test]
    fn widening_reordering_and_adding_need_a_migration() {
        assert_eq!(
            outcome::<v1::Tx, widened_and_added::Tx>(),
            Compatibility::AfterMigration
        );
        assert_eq!(outcome::<u32, Option<u64>>(), Compatibility::AfterMigration);
    }

    #[test]
    fn narrowing_and_lost_variants_are_incompatible_with_the_field_named() {
        let Compatibility::Incompatible(why) = outcome::<v1::Tx, narrowed::Tx>() else {
            panic!("narrowing must be incompatible");
        };
        assert_eq!(why.to_string(), "field \"amount\" changed from u32 to u16");
        let Compatibility::Incompatible(why) = outcome::<v1::Tx, lost_variant::Tx>() else {
            panic!("a lost variant must be incompatible");
        };
        assert_eq!(
            why.to_string(),
            "field \"kind\" lost enum variant \"Refund\" (old values may hold it)"
        );
        let Compatibility::Incompatible(why) = outcome::<u64, String>() else {
            panic!("u64 to String must be incompatible");
        };
        assert_eq!(why.to_string(), "type changed from u64 to String");
    }
}
