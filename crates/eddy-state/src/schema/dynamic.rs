//! Migration: an old value's `postcard` bytes read with the *old* schema into a dynamic
//! value, which the *new* type then deserializes from (fields matched by name, variants by
//! name, numbers widened by serde's own conversions), and which is written back with
//! `postcard`.
//!
//! `postcard` is not self-describing, so the old schema is what makes the old bytes
//! readable at all: the same bytes mean different things to different types.

use std::fmt;

use serde::de::value::StringDeserializer;
use serde::de::{
    DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde::{Deserializer, Serialize};

use super::{Container, Field, Shape, TracedShape, VariantBody};

/// How deep old values may nest: corrupt bytes must not overflow the stack.
const MAX_DEPTH: usize = 128;

/// How many probe values are built at most (one more enum variant each).
const MAX_PROBES: usize = 16;

/// Migrates the values of one state to its new type `T`.
#[derive(Clone, Copy)]
pub(crate) struct Migrator {
    migrate: fn(&TracedShape, &[u8]) -> Result<Vec<u8>, MigrationError>,
    probe: fn(&TracedShape) -> Result<(), MigrationError>,
}

impl Migrator {
    /// The migrator to `T`.
    pub(crate) fn of<T: Serialize + DeserializeOwned>() -> Self {
        Migrator {
            migrate: migrate::<T>,
            probe: probe::<T>,
        }
    }

    /// Re-encodes one value written with `old` as the new type.
    pub(crate) fn migrate(&self, old: &TracedShape, bytes: &[u8]) -> Result<Vec<u8>, String> {
        (self.migrate)(old, bytes).map_err(|e| e.to_string())
    }

    /// Checks, before any stored value is touched, that values of `old`'s shape can become
    /// the new type: it builds probe values of the old shape (every enum variant, one element
    /// per collection) and migrates them. This finds fields added without a default.
    pub(crate) fn probe(&self, old: &TracedShape) -> Result<(), String> {
        (self.probe)(old).map_err(|e| match e {
            MigrationError::MissingField(field) => {
                format!("field \"{field}\" was added without a default (give it #[serde(default)])")
            }
            MigrationError::Other(reason) => reason,
        })
    }
}

fn migrate<T: Serialize + DeserializeOwned>(
    old: &TracedShape,
    bytes: &[u8],
) -> Result<Vec<u8>, MigrationError> {
    let mut reader = Reader {
        rest: bytes,
        schema: old,
        depth: 0,
    };
    let value = reader.read(&old.root)?;
    if !reader.rest.is_empty() {
        return Err(MigrationError::Other(format!(
            "{} bytes left after an old value (corrupt, or not written with the recorded schema)",
            reader.rest.len()
        )));
    }
    let migrated = T::deserialize(value)?;
    postcard::to_allocvec(&migrated).map_err(|e| MigrationError::Other(e.to_string()))
}

fn probe<T: DeserializeOwned>(old: &TracedShape) -> Result<(), MigrationError> {
    for choice in 0..MAX_PROBES {
        let sample = Sampler {
            schema: old,
            choice,
            depth: 0,
        }
        .sample(&old.root);
        T::deserialize(sample)?;
        if choice + 1 >= most_variants(old) {
            break;
        }
    }
    Ok(())
}

fn most_variants(schema: &TracedShape) -> usize {
    schema
        .containers
        .values()
        .map(|c| match c {
            Container::Enum(variants) => variants.len(),
            _ => 1,
        })
        .max()
        .unwrap_or(1)
}

/// Why an old value could not become the new type.
#[derive(Debug)]
pub(crate) enum MigrationError {
    /// The new type has a field the old value lacks, and no default for it.
    MissingField(String),
    /// Anything else.
    Other(String),
}

impl fmt::Display for MigrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationError::MissingField(field) => write!(f, "missing field \"{field}\""),
            MigrationError::Other(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for MigrationError {}

impl serde::de::Error for MigrationError {
    fn custom<E: fmt::Display>(msg: E) -> Self {
        MigrationError::Other(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        MigrationError::MissingField(field.to_string())
    }
}

/// A value read with its old schema, field and variant names included.
#[derive(Clone, Debug, PartialEq)]
enum Dyn {
    Unit,
    Bool(bool),
    Unsigned(u128),
    Signed(i128),
    F32(f32),
    F64(f64),
    Char(char),
    Str(String),
    Bytes(Vec<u8>),
    Option(Option<Box<Dyn>>),
    Seq(Vec<Dyn>),
    Map(Vec<(Dyn, Dyn)>),
    /// Tuples, tuple structs and fixed-size arrays.
    Tuple(Vec<Dyn>),
    Struct(Vec<(String, Dyn)>),
    Newtype(Box<Dyn>),
    Enum(String, Box<DynVariant>),
}

#[derive(Clone, Debug, PartialEq)]
enum DynVariant {
    Unit,
    Newtype(Dyn),
    Tuple(Vec<Dyn>),
    Struct(Vec<(String, Dyn)>),
}

/// Reads `postcard` bytes along a schema.
struct Reader<'a> {
    rest: &'a [u8],
    schema: &'a TracedShape,
    depth: usize,
}

fn truncated() -> MigrationError {
    MigrationError::Other("an old value is truncated".into())
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, MigrationError> {
        let (&first, rest) = self.rest.split_first().ok_or_else(truncated)?;
        self.rest = rest;
        Ok(first)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], MigrationError> {
        let taken = self.rest.get(..n).ok_or_else(truncated)?;
        self.rest = &self.rest[n..];
        Ok(taken)
    }

    /// An unsigned LEB128 varint of at most `bits` bits (postcard's integer encoding).
    fn varint(&mut self, bits: u32) -> Result<u128, MigrationError> {
        let mut value: u128 = 0;
        for shift in (0..bits.div_ceil(7) * 7).step_by(7) {
            let byte = self.byte()?;
            value |= u128::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return if bits < 128 && value >> bits != 0 {
                    Err(MigrationError::Other(
                        "an old integer is out of range".into(),
                    ))
                } else {
                    Ok(value)
                };
            }
        }
        Err(MigrationError::Other(
            "an old integer's encoding is too long".into(),
        ))
    }

    fn zigzag(&mut self, bits: u32) -> Result<i128, MigrationError> {
        let n = self.varint(bits)?;
        Ok((n >> 1) as i128 ^ -((n & 1) as i128))
    }

    fn len(&mut self) -> Result<usize, MigrationError> {
        usize::try_from(self.varint(64)?)
            .map_err(|_| MigrationError::Other("an old length is too large".into()))
    }

    fn string(&mut self) -> Result<String, MigrationError> {
        let len = self.len()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| MigrationError::Other("an old string is not UTF-8".into()))
    }

    fn read(&mut self, shape: &Shape) -> Result<Dyn, MigrationError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(MigrationError::Other(
                "an old value nests too deeply".into(),
            ));
        }
        let value = self.read_shape(shape);
        self.depth -= 1;
        value
    }

    fn read_shape(&mut self, shape: &Shape) -> Result<Dyn, MigrationError> {
        Ok(match shape {
            Shape::Unit => Dyn::Unit,
            Shape::Bool => match self.byte()? {
                0 => Dyn::Bool(false),
                1 => Dyn::Bool(true),
                _ => {
                    return Err(MigrationError::Other(
                        "an old bool is neither 0 nor 1".into(),
                    ))
                }
            },
            Shape::U8 => Dyn::Unsigned(u128::from(self.byte()?)),
            Shape::I8 => Dyn::Signed(i128::from(self.byte()? as i8)),
            Shape::U16 => Dyn::Unsigned(self.varint(16)?),
            Shape::U32 => Dyn::Unsigned(self.varint(32)?),
            Shape::U64 => Dyn::Unsigned(self.varint(64)?),
            Shape::U128 => Dyn::Unsigned(self.varint(128)?),
            Shape::I16 => Dyn::Signed(self.zigzag(16)?),
            Shape::I32 => Dyn::Signed(self.zigzag(32)?),
            Shape::I64 => Dyn::Signed(self.zigzag(64)?),
            Shape::I128 => Dyn::Signed(self.zigzag(128)?),
            Shape::F32 => Dyn::F32(f32::from_le_bytes(fixed(self.take(4)?)?)),
            Shape::F64 => Dyn::F64(f64::from_le_bytes(fixed(self.take(8)?)?)),
            Shape::Char => {
                let s = self.string()?;
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Dyn::Char(c),
                    _ => return Err(MigrationError::Other("an old char is not one char".into())),
                }
            }
            Shape::Str => Dyn::Str(self.string()?),
            Shape::Bytes => {
                let len = self.len()?;
                Dyn::Bytes(self.take(len)?.to_vec())
            }
            Shape::Option(inner) => match self.byte()? {
                0 => Dyn::Option(None),
                1 => Dyn::Option(Some(Box::new(self.read(inner)?))),
                _ => return Err(MigrationError::Other("an old option tag is invalid".into())),
            },
            Shape::Seq(inner) => {
                let len = self.len()?;
                let mut items = Vec::with_capacity(len.min(self.rest.len()));
                for _ in 0..len {
                    items.push(self.read(inner)?);
                }
                Dyn::Seq(items)
            }
            Shape::Map(key, value) => {
                let len = self.len()?;
                let mut entries = Vec::with_capacity(len.min(self.rest.len()));
                for _ in 0..len {
                    let k = self.read(key)?;
                    entries.push((k, self.read(value)?));
                }
                Dyn::Map(entries)
            }
            Shape::Tuple(items) => Dyn::Tuple(self.read_all(items)?),
            Shape::Array(inner, n) => {
                let n = usize::try_from(*n).map_err(|_| truncated())?;
                let mut items = Vec::with_capacity(n.min(self.rest.len()));
                for _ in 0..n {
                    items.push(self.read(inner)?);
                }
                Dyn::Tuple(items)
            }
            Shape::Named(name) => self.read_named(name)?,
        })
    }

    fn read_all(&mut self, shapes: &[Shape]) -> Result<Vec<Dyn>, MigrationError> {
        shapes.iter().map(|s| self.read(s)).collect()
    }

    fn read_fields(&mut self, fields: &[Field]) -> Result<Vec<(String, Dyn)>, MigrationError> {
        fields
            .iter()
            .map(|f| Ok((f.name.clone(), self.read(&f.shape)?)))
            .collect()
    }

    fn read_named(&mut self, name: &str) -> Result<Dyn, MigrationError> {
        let schema = self.schema;
        let container = schema.containers.get(name).ok_or_else(|| {
            MigrationError::Other(format!("the old schema does not describe {name}"))
        })?;
        Ok(match container {
            Container::UnitStruct => Dyn::Unit,
            Container::Newtype(inner) => Dyn::Newtype(Box::new(self.read(inner)?)),
            Container::TupleStruct(items) => Dyn::Tuple(self.read_all(items)?),
            Container::Struct(fields) => Dyn::Struct(self.read_fields(fields)?),
            Container::Enum(variants) => {
                let index = self.varint(32)?;
                let variant = variants
                    .iter()
                    .find(|v| u128::from(v.index) == index)
                    .ok_or_else(|| {
                        MigrationError::Other(format!("old {name} has no variant {index}"))
                    })?;
                let body = match &variant.body {
                    VariantBody::Unit => DynVariant::Unit,
                    VariantBody::Newtype(inner) => DynVariant::Newtype(self.read(inner)?),
                    VariantBody::Tuple(items) => DynVariant::Tuple(self.read_all(items)?),
                    VariantBody::Struct(fields) => DynVariant::Struct(self.read_fields(fields)?),
                };
                Dyn::Enum(variant.name.clone(), Box::new(body))
            }
        })
    }
}

fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], MigrationError> {
    bytes.try_into().map_err(|_| truncated())
}

/// Builds probe values of an old schema: zeros, one element per collection, enum variant
/// number `choice` (modulo the variant count).
struct Sampler<'a> {
    schema: &'a TracedShape,
    choice: usize,
    depth: usize,
}

impl Sampler<'_> {
    fn sample(&mut self, shape: &Shape) -> Dyn {
        // Past a few levels collections are empty and options none, so recursive types end.
        let shallow = self.depth < 6;
        self.depth += 1;
        let value = match shape {
            Shape::Unit => Dyn::Unit,
            Shape::Bool => Dyn::Bool(false),
            Shape::U8 | Shape::U16 | Shape::U32 | Shape::U64 | Shape::U128 => Dyn::Unsigned(0),
            Shape::I8 | Shape::I16 | Shape::I32 | Shape::I64 | Shape::I128 => Dyn::Signed(0),
            Shape::F32 => Dyn::F32(0.0),
            Shape::F64 => Dyn::F64(0.0),
            Shape::Char => Dyn::Char('a'),
            Shape::Str => Dyn::Str(String::new()),
            Shape::Bytes => Dyn::Bytes(Vec::new()),
            Shape::Option(inner) if shallow => Dyn::Option(Some(Box::new(self.sample(inner)))),
            Shape::Option(_) => Dyn::Option(None),
            Shape::Seq(inner) if shallow => Dyn::Seq(vec![self.sample(inner)]),
            Shape::Seq(_) => Dyn::Seq(Vec::new()),
            Shape::Map(k, v) if shallow => Dyn::Map(vec![(self.sample(k), self.sample(v))]),
            Shape::Map(..) => Dyn::Map(Vec::new()),
            Shape::Tuple(items) => Dyn::Tuple(items.iter().map(|s| self.sample(s)).collect()),
            Shape::Array(inner, n) => {
                let one = self.sample(inner);
                Dyn::Tuple(vec![one; usize::try_from(*n).unwrap_or(0).min(4096)])
            }
            Shape::Named(name) => self.sample_named(name),
        };
        self.depth -= 1;
        value
    }

    fn fields(&mut self, fields: &[Field]) -> Vec<(String, Dyn)> {
        fields
            .iter()
            .map(|f| (f.name.clone(), self.sample(&f.shape)))
            .collect()
    }

    fn sample_named(&mut self, name: &str) -> Dyn {
        let schema = self.schema;
        match schema.containers.get(name) {
            None | Some(Container::UnitStruct) => Dyn::Unit,
            Some(Container::Newtype(inner)) => Dyn::Newtype(Box::new(self.sample(inner))),
            Some(Container::TupleStruct(items)) => {
                Dyn::Tuple(items.iter().map(|s| self.sample(s)).collect())
            }
            Some(Container::Struct(fields)) => Dyn::Struct(self.fields(fields)),
            Some(Container::Enum(variants)) if variants.is_empty() => Dyn::Unit,
            Some(Container::Enum(variants)) => {
                let variant = &variants[self.choice % variants.len()];
                let body = match &variant.body {
                    VariantBody::Unit => DynVariant::Unit,
                    VariantBody::Newtype(inner) => DynVariant::Newtype(self.sample(inner)),
                    VariantBody::Tuple(items) => {
                        DynVariant::Tuple(items.iter().map(|s| self.sample(s)).collect())
                    }
                    VariantBody::Struct(fields) => DynVariant::Struct(self.fields(fields)),
                };
                Dyn::Enum(variant.name.clone(), Box::new(body))
            }
        }
    }
}

// The new type deserializes from a `Dyn`: structs as maps by field name (unknown fields are
// ignored, missing ones take their serde default), enums by variant name, numbers through
// serde's own widening conversions.
impl<'de> Deserializer<'de> for Dyn {
    type Error = MigrationError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, MigrationError> {
        match self {
            Dyn::Unit => visitor.visit_unit(),
            Dyn::Bool(b) => visitor.visit_bool(b),
            Dyn::Unsigned(n) => match u64::try_from(n) {
                Ok(n) => visitor.visit_u64(n),
                Err(_) => visitor.visit_u128(n),
            },
            Dyn::Signed(n) => match i64::try_from(n) {
                Ok(n) => visitor.visit_i64(n),
                Err(_) => visitor.visit_i128(n),
            },
            Dyn::F32(x) => visitor.visit_f32(x),
            Dyn::F64(x) => visitor.visit_f64(x),
            Dyn::Char(c) => visitor.visit_char(c),
            Dyn::Str(s) => visitor.visit_string(s),
            Dyn::Bytes(b) => visitor.visit_byte_buf(b),
            Dyn::Option(None) => visitor.visit_none(),
            Dyn::Option(Some(inner)) => visitor.visit_some(*inner),
            Dyn::Seq(items) | Dyn::Tuple(items) => visitor.visit_seq(Items(items.into_iter())),
            Dyn::Map(entries) => visitor.visit_map(Entries {
                entries: entries.into_iter(),
                value: None,
            }),
            Dyn::Struct(fields) => visitor.visit_map(Fields {
                fields: fields.into_iter(),
                value: None,
            }),
            Dyn::Newtype(inner) => visitor.visit_newtype_struct(*inner),
            Dyn::Enum(name, body) => visitor.visit_enum(EnumValue { name, body: *body }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, MigrationError> {
        match self {
            Dyn::Option(None) => visitor.visit_none(),
            Dyn::Option(Some(inner)) => visitor.visit_some(*inner),
            // `T` widened to `Option<T>`.
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, MigrationError> {
        match self {
            Dyn::Newtype(inner) => visitor.visit_newtype_struct(*inner),
            other => visitor.visit_newtype_struct(other),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, MigrationError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct enum identifier
    }
}

impl<'de> IntoDeserializer<'de, MigrationError> for Dyn {
    type Deserializer = Dyn;

    fn into_deserializer(self) -> Dyn {
        self
    }
}

struct Items(std::vec::IntoIter<Dyn>);

impl<'de> SeqAccess<'de> for Items {
    type Error = MigrationError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, MigrationError> {
        self.0.next().map(|item| seed.deserialize(item)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries {
    entries: std::vec::IntoIter<(Dyn, Dyn)>,
    value: Option<Dyn>,
}

impl<'de> MapAccess<'de> for Entries {
    type Error = MigrationError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, MigrationError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, MigrationError> {
        let value = self.value.take().ok_or_else(|| {
            MigrationError::Other("a map value was requested before its key".into())
        })?;
        seed.deserialize(value)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct Fields {
    fields: std::vec::IntoIter<(String, Dyn)>,
    value: Option<Dyn>,
}

impl<'de> MapAccess<'de> for Fields {
    type Error = MigrationError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, MigrationError> {
        let Some((name, value)) = self.fields.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        let name: StringDeserializer<MigrationError> = name.into_deserializer();
        seed.deserialize(name).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, MigrationError> {
        let value = self.value.take().ok_or_else(|| {
            MigrationError::Other("a field value was requested before its name".into())
        })?;
        seed.deserialize(value)
    }
}

struct EnumValue {
    name: String,
    body: DynVariant,
}

impl<'de> EnumAccess<'de> for EnumValue {
    type Error = MigrationError;
    type Variant = DynVariant;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, DynVariant), MigrationError> {
        let name: StringDeserializer<MigrationError> = self.name.into_deserializer();
        Ok((seed.deserialize(name)?, self.body))
    }
}

impl<'de> VariantAccess<'de> for DynVariant {
    type Error = MigrationError;

    fn unit_variant(self) -> Result<(), MigrationError> {
        match self {
            DynVariant::Unit => Ok(()),
            _ => Err(MigrationError::Other(
                "an old variant with contents became a unit variant".into(),
            )),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, MigrationError> {
        match self {
            DynVariant::Newtype(inner) => seed.deserialize(inner),
            _ => Err(MigrationError::Other(
                "an old variant changed the kind of its contents".into(),
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, MigrationError> {
        match self {
            DynVariant::Tuple(items) => visitor.visit_seq(Items(items.into_iter())),
            _ => Err(MigrationError::Other(
                "an old variant changed the kind of its contents".into(),
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, MigrationError> {
        match self {
            DynVariant::Struct(fields) => visitor.visit_map(Fields {
                fields: fields.into_iter(),
                value: None,
            }),
            _ => Err(MigrationError::Other(
                "an old variant changed the kind of its contents".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::schema::TypeSchema;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Kind {
        Sale,
        Refund { reason: String },
        Fee(i16),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V1 {
        id: u64,
        amount: u32,
        dropped: String,
        kinds: Vec<Kind>,
        when: (i8, char),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum KindV2 {
        Fee(i64),
        Sale,
        Refund { reason: String },
        Chargeback,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V2 {
        kinds: Vec<KindV2>,
        amount: Option<u64>,
        id: u64,
        #[serde(default)]
        note: String,
        when: (i32, String),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct NoDefault {
        id: u64,
        note: String,
    }

    fn traced<T: DeserializeOwned>() -> TracedShape {
        TypeSchema::of::<T>().shape.expect("traceable")
    }

    #[test]
    fn migrates_added_removed_reordered_widened_and_renumbered() {
        let old = V1 {
            id: 7,
            amount: 4_000_000_000,
            dropped: "gone".into(),
            kinds: vec![
                Kind::Fee(-3),
                Kind::Sale,
                Kind::Refund {
                    reason: "late".into(),
                },
            ],
            when: (-5, 'é'),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let migrator = Migrator::of::<V2>();
        migrator.probe(&traced::<V1>()).unwrap();
        let new_bytes = migrator.migrate(&traced::<V1>(), &bytes).unwrap();
        let new: V2 = postcard::from_bytes(&new_bytes).unwrap();
        assert_eq!(
            new,
            V2 {
                kinds: vec![
                    KindV2::Fee(-3),
                    KindV2::Sale,
                    KindV2::Refund {
                        reason: "late".into()
                    }
                ],
                amount: Some(4_000_000_000),
                id: 7,
                note: String::new(),
                when: (-5, "é".into()),
            }
        );
    }

    #[test]
    fn the_probe_finds_a_field_added_without_a_default() {
        #[derive(Serialize, Deserialize)]
        struct Old {
            id: u64,
        }
        let err = Migrator::of::<NoDefault>()
            .probe(&traced::<Old>())
            .unwrap_err();
        assert_eq!(
            err,
            "field \"note\" was added without a default (give it #[serde(default)])"
        );
    }

    #[test]
    fn corrupt_old_bytes_are_an_error_not_a_panic() {
        let migrator = Migrator::of::<V2>();
        let schema = traced::<V1>();
        let bytes = postcard::to_allocvec(&V1 {
            id: 1,
            amount: 2,
            dropped: "x".into(),
            kinds: vec![Kind::Sale],
            when: (0, 'a'),
        })
        .unwrap();
        for cut in 0..bytes.len() {
            assert!(
                migrator.migrate(&schema, &bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(migrator.migrate(&schema, &longer).is_err());
        for (i, garbage) in [[0xFF; 16], [0x80; 16], [0x01; 16]].iter().enumerate() {
            let _ = migrator.migrate(&schema, garbage).map(|_| i);
        }
    }
}
