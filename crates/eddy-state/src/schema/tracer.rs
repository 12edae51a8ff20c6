//! Derives a type's [`TracedShape`] from its `Deserialize` implementation.
//!
//! A tracing `Deserializer` hands the type's visitor made-up values (zeros, empty strings,
//! one element per collection) and records what the visitor asks for: `deserialize_struct`
//! names the fields, `deserialize_enum` names the variants. A visitor can take only one
//! enum variant per call, so the type is deserialized again, pass after pass, each pass
//! exploring the next unexplored variant of every enum it meets, until every variant of every
//! enum reached is known.
//!
//! (The `serde-reflection` crate does the same, but it stops exploring a collection's
//! elements after the first pass, so an enum inside a `Vec` never completes; tracing is
//! small enough to own, and what checkpoints store should not depend on another crate's
//! format types anyway.)
//!
//! Tracing fails, and the schema is then opaque, for types whose `Deserialize` needs a
//! self-describing format (`deserialize_any`: untagged enums, `flatten`), refuses the
//! made-up values (validation), recurses (a type containing itself), or has more enum
//! variants than [`MAX_PASSES`] explores.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{
    DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde::Deserializer;

use super::{Container, Field, Shape, TracedShape, Variant, VariantBody};

/// The most passes over a type (about the most variants of its enums together).
const MAX_PASSES: usize = 1024;

/// How deep tracing goes: deeper means a recursive type.
const MAX_DEPTH: usize = 64;

/// Traces `T`; `None` if it cannot be traced (see the module docs).
pub(crate) fn trace<T: DeserializeOwned>() -> Option<TracedShape> {
    let mut state = TraceState::default();
    for _ in 0..MAX_PASSES {
        state.discovered = false;
        let mut root = None;
        T::deserialize(Tracing {
            state: &mut state,
            out: &mut root,
            depth: 0,
        })
        .ok()?;
        if state.failed {
            return None;
        }
        if !state.discovered && state.enums.values().all(EnumProgress::complete) {
            return state.finish(root?);
        }
    }
    None
}

#[derive(Default)]
struct TraceState {
    containers: BTreeMap<String, Container>,
    enums: BTreeMap<String, EnumProgress>,
    /// Whether this pass met an enum or explored a variant for the first time.
    discovered: bool,
    /// Two different types of one name, or other inconsistency.
    failed: bool,
}

struct EnumProgress {
    names: &'static [&'static str],
    bodies: Vec<Option<VariantBody>>,
}

impl EnumProgress {
    fn complete(&self) -> bool {
        self.bodies.iter().all(Option::is_some)
    }

    fn next_variant(&self) -> usize {
        self.bodies.iter().position(Option::is_none).unwrap_or(0)
    }
}

impl TraceState {
    fn record(&mut self, name: &str, container: Container) {
        match self.containers.get(name) {
            Some(existing) if *existing != container => self.failed = true,
            Some(_) => {}
            None => {
                self.containers.insert(name.to_string(), container);
            }
        }
    }

    fn finish(mut self, root: Shape) -> Option<TracedShape> {
        for (name, progress) in std::mem::take(&mut self.enums) {
            let variants = progress
                .names
                .iter()
                .zip(progress.bodies)
                .zip(0u32..)
                .map(|((name, body), index)| {
                    Some(Variant {
                        index,
                        name: (*name).to_string(),
                        body: body?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            self.containers.insert(name, Container::Enum(variants));
        }
        Some(TracedShape {
            root,
            containers: self.containers,
        })
    }
}

/// Why tracing stopped.
#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl serde::de::Error for TraceError {
    fn custom<E: fmt::Display>(msg: E) -> Self {
        TraceError(msg.to_string())
    }
}

/// Deserializes made-up values, writing the shape asked for into `out`.
struct Tracing<'a> {
    state: &'a mut TraceState,
    out: &'a mut Option<Shape>,
    depth: usize,
}

impl Tracing<'_> {
    fn deeper(&self) -> Result<usize, TraceError> {
        if self.depth >= MAX_DEPTH {
            return Err(TraceError("too deep: a recursive type?".into()));
        }
        Ok(self.depth + 1)
    }

    /// Traces `shapes.len()` elements in a row (tuples, struct fields, one collection
    /// element).
    fn elements<'de, V: Visitor<'de>>(
        state: &mut TraceState,
        depth: usize,
        shapes: &mut [Option<Shape>],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_seq(TraceSeq {
            state,
            shapes,
            next: 0,
            depth,
        })
    }
}

fn unknown() -> TraceError {
    TraceError("a traced element's shape is unknown".into())
}

fn collect(shapes: Vec<Option<Shape>>) -> Result<Vec<Shape>, TraceError> {
    shapes.into_iter().map(|s| s.ok_or_else(unknown)).collect()
}

fn named_fields(names: &[&str], shapes: Vec<Option<Shape>>) -> Result<Vec<Field>, TraceError> {
    Ok(names
        .iter()
        .zip(collect(shapes)?)
        .map(|(name, shape)| Field {
            name: (*name).to_string(),
            shape,
        })
        .collect())
}

macro_rules! primitives {
    ($($method:ident => $shape:ident, $visit:ident($value:expr);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
                *self.out = Some(Shape::$shape);
                visitor.$visit($value)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for Tracing<'_> {
    type Error = TraceError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        Err(TraceError("needs a self-describing format".into()))
    }

    primitives! {
        deserialize_bool => Bool, visit_bool(false);
        deserialize_i8 => I8, visit_i8(0);
        deserialize_i16 => I16, visit_i16(0);
        deserialize_i32 => I32, visit_i32(0);
        deserialize_i64 => I64, visit_i64(0);
        deserialize_i128 => I128, visit_i128(0);
        deserialize_u8 => U8, visit_u8(0);
        deserialize_u16 => U16, visit_u16(0);
        deserialize_u32 => U32, visit_u32(0);
        deserialize_u64 => U64, visit_u64(0);
        deserialize_u128 => U128, visit_u128(0);
        deserialize_f32 => F32, visit_f32(0.0);
        deserialize_f64 => F64, visit_f64(0.0);
        deserialize_char => Char, visit_char('a');
        deserialize_str => Str, visit_borrowed_str("");
        deserialize_string => Str, visit_borrowed_str("");
        deserialize_bytes => Bytes, visit_borrowed_bytes(&[]);
        deserialize_byte_buf => Bytes, visit_borrowed_bytes(&[]);
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.out = Some(Shape::Unit);
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let depth = self.deeper()?;
        let mut inner = None;
        let value = visitor.visit_some(Tracing {
            state: self.state,
            out: &mut inner,
            depth,
        })?;
        *self.out = Some(Shape::Option(Box::new(inner.ok_or_else(unknown)?)));
        Ok(value)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.state.record(name, Container::UnitStruct);
        *self.out = Some(Shape::Named(name.to_string()));
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let depth = self.deeper()?;
        let mut inner = None;
        let value = visitor.visit_newtype_struct(Tracing {
            state: self.state,
            out: &mut inner,
            depth,
        })?;
        self.state
            .record(name, Container::Newtype(inner.ok_or_else(unknown)?));
        *self.out = Some(Shape::Named(name.to_string()));
        Ok(value)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let depth = self.deeper()?;
        let mut shapes = vec![None];
        let value = Self::elements(self.state, depth, &mut shapes, visitor)?;
        let element = shapes.pop().flatten().ok_or_else(unknown)?;
        *self.out = Some(Shape::Seq(Box::new(element)));
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let depth = self.deeper()?;
        let mut shapes = vec![None; len];
        let value = Self::elements(self.state, depth, &mut shapes, visitor)?;
        *self.out = Some(Shape::Tuple(collect(shapes)?));
        Ok(value)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let depth = self.deeper()?;
        let mut shapes = vec![None; len];
        let value = Self::elements(self.state, depth, &mut shapes, visitor)?;
        self.state
            .record(name, Container::TupleStruct(collect(shapes)?));
        *self.out = Some(Shape::Named(name.to_string()));
        Ok(value)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let depth = self.deeper()?;
        let mut key = None;
        let mut value_shape = None;
        let value = visitor.visit_map(TraceMap {
            state: self.state,
            key: &mut key,
            value: &mut value_shape,
            step: 0,
            depth,
        })?;
        *self.out = Some(Shape::Map(
            Box::new(key.ok_or_else(unknown)?),
            Box::new(value_shape.ok_or_else(unknown)?),
        ));
        Ok(value)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let depth = self.deeper()?;
        let mut shapes = vec![None; fields.len()];
        let value = Self::elements(self.state, depth, &mut shapes, visitor)?;
        self.state
            .record(name, Container::Struct(named_fields(fields, shapes)?));
        *self.out = Some(Shape::Named(name.to_string()));
        Ok(value)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let depth = self.deeper()?;
        if variants.is_empty() {
            return Err(TraceError(format!("enum {name} has no variants")));
        }
        let state = self.state;
        if !state.enums.contains_key(name) {
            state.discovered = true;
            state.enums.insert(
                name.to_string(),
                EnumProgress {
                    names: variants,
                    bodies: vec![None; variants.len()],
                },
            );
        }
        let index = state.enums.get(name).map_or(0, EnumProgress::next_variant);
        let mut body = None;
        let value = visitor.visit_enum(TraceEnum {
            state: &mut *state,
            index,
            body: &mut body,
            depth,
        })?;
        let body = body.ok_or_else(unknown)?;
        if let Some(progress) = state.enums.get_mut(name) {
            match &progress.bodies[index] {
                Some(existing) if *existing != body => state.failed = true,
                Some(_) => {}
                None => {
                    progress.bodies[index] = Some(body);
                    state.discovered = true;
                }
            }
        }
        *self.out = Some(Shape::Named(name.to_string()));
        Ok(value)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        Err(TraceError("identifiers are not traced".into()))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        Err(TraceError("ignored values are not traced".into()))
    }

    fn is_human_readable(&self) -> bool {
        false // postcard, which stores the values, is not
    }
}

struct TraceSeq<'a> {
    state: &'a mut TraceState,
    shapes: &'a mut [Option<Shape>],
    next: usize,
    depth: usize,
}

impl<'de> SeqAccess<'de> for TraceSeq<'_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        let Some(slot) = self.shapes.get_mut(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        seed.deserialize(Tracing {
            state: self.state,
            out: slot,
            depth: self.depth,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.shapes.len() - self.next)
    }
}

struct TraceMap<'a> {
    state: &'a mut TraceState,
    key: &'a mut Option<Shape>,
    value: &'a mut Option<Shape>,
    step: u8,
    depth: usize,
}

impl<'de> MapAccess<'de> for TraceMap<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        if self.step > 0 {
            return Ok(None);
        }
        self.step = 1;
        seed.deserialize(Tracing {
            state: self.state,
            out: self.key,
            depth: self.depth,
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        seed.deserialize(Tracing {
            state: self.state,
            out: self.value,
            depth: self.depth,
        })
    }
}

struct TraceEnum<'a> {
    state: &'a mut TraceState,
    index: usize,
    body: &'a mut Option<VariantBody>,
    depth: usize,
}

impl<'de, 'a> EnumAccess<'de> for TraceEnum<'a> {
    type Error = TraceError;
    type Variant = TraceEnum<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, TraceEnum<'a>), TraceError> {
        let index = u32::try_from(self.index).map_err(|_| unknown())?;
        let variant = seed.deserialize(IntoDeserializer::<TraceError>::into_deserializer(index))?;
        Ok((variant, self))
    }
}

impl<'de> VariantAccess<'de> for TraceEnum<'_> {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        *self.body = Some(VariantBody::Unit);
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, TraceError> {
        let mut inner = None;
        let value = seed.deserialize(Tracing {
            state: self.state,
            out: &mut inner,
            depth: self.depth,
        })?;
        *self.body = Some(VariantBody::Newtype(inner.ok_or_else(unknown)?));
        Ok(value)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let mut shapes = vec![None; len];
        let value = Tracing::elements(self.state, self.depth, &mut shapes, visitor)?;
        *self.body = Some(VariantBody::Tuple(collect(shapes)?));
        Ok(value)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let mut shapes = vec![None; fields.len()];
        let value = Tracing::elements(self.state, self.depth, &mut shapes, visitor)?;
        *self.body = Some(VariantBody::Struct(named_fields(fields, shapes)?));
        Ok(value)
    }
}
