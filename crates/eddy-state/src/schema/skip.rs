//! The length of one `postcard`-encoded value, found by walking its traced shape without
//! decoding it.
//!
//! `postcard` writes no length in front of a value and is not self-describing, so where one
//! encoded value is followed by another with no separator, only the shape tells where the
//! first one ends. RocksDB keys are exactly that, `[key group][postcard(key)][postcard(namespace)]`,
//! and splitting a checkpoint's keys into key and namespace must work without the Rust types,
//! with only the schemas recorded in the checkpoint: hence [`encoded_len`].
//!
//! The wire format followed here is postcard 1.x's (see its `de/deserializer.rs`): `u8`/`i8`
//! and `bool` one byte, wider integers LEB128 varints (signed ones zigzagged), floats
//! little-endian, strings/bytes/sequences/maps a varint length first, options a tag byte,
//! enums a `u32` varint variant index, and tuples, structs and arrays their fields back to
//! back.

use super::{Container, Field, Shape, TracedShape, VariantBody};

/// How deep values may nest, as in `dynamic.rs`: corrupt bytes or a cyclic schema must not
/// overflow the stack.
const MAX_DEPTH: usize = 128;

/// The length in bytes of the one postcard-encoded value of shape `shape` at the start of
/// `bytes`, or `None` if `bytes` does not start with a complete, well-formed value of that shape.
///
/// It validates what postcard's own deserializer rejects and is cheap to check: `bool` bytes
/// (0 or 1), option tags (0 or 1), enum variant indexes (must exist in the schema), varints
/// (at most the type's maximum length, no bits beyond the type's width), lengths (must fit in
/// the remaining bytes), `str` UTF-8 and `char` (one UTF-8 character of 1 to 4 bytes). Named
/// shapes missing from `shape.containers` and nesting deeper than [`MAX_DEPTH`] are `None`.
/// It never panics and never allocates.
pub(crate) fn encoded_len(shape: &TracedShape, bytes: &[u8]) -> Option<usize> {
    let mut skipper = Skipper {
        schema: shape,
        bytes,
        pos: 0,
        depth: 0,
    };
    skipper.skip(&shape.root)?;
    Some(skipper.pos)
}

/// Walks `bytes` along a schema, moving `pos` past each value.
struct Skipper<'a> {
    /// Where named shapes are looked up.
    schema: &'a TracedShape,
    /// The whole input.
    bytes: &'a [u8],
    /// How many bytes of `bytes` were skipped so far.
    pos: usize,
    /// How many shapes are being skipped at once (the recursion depth).
    depth: usize,
}

impl<'a> Skipper<'a> {
    /// Takes one byte.
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(byte)
    }

    /// Takes `n` bytes; `None` rather than a panic or an overflow for a corrupt huge `n`.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let taken = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(taken)
    }

    /// An unsigned LEB128 varint of a `bits`-bit integer, checked like postcard checks it: at
    /// most `ceil(bits / 7)` bytes, and the last possible byte carries no bits beyond `bits`.
    fn varint(&mut self, bits: u32) -> Option<u128> {
        let max_len = bits.div_ceil(7);
        // The value bits left for the last possible byte (1..=7 for every width used here).
        let last_bits = bits - 7 * (max_len - 1);
        let mut value: u128 = 0;
        for i in 0..max_len {
            let byte = self.byte()?;
            // `7 * i` is at most 126 for u128, so the shift itself cannot overflow.
            value |= u128::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                if i == max_len - 1 && u32::from(byte) >> last_bits != 0 {
                    return None;
                }
                return Some(value);
            }
        }
        // Every allowed byte had its continuation bit set: overlong.
        None
    }

    /// A length (of a string, bytes, sequence or map): postcard writes a `usize` varint.
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.varint(usize::BITS)?).ok()
    }

    /// Skips one value of `shape`, counting the depth.
    fn skip(&mut self, shape: &Shape) -> Option<()> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let skipped = self.skip_shape(shape);
        self.depth -= 1;
        skipped
    }

    /// Skips one value of `shape` (see the module docs for the encoding).
    fn skip_shape(&mut self, shape: &Shape) -> Option<()> {
        match shape {
            Shape::Unit => Some(()),
            Shape::Bool => matches!(self.byte()?, 0 | 1).then_some(()),
            Shape::U8 | Shape::I8 => self.byte().map(drop),
            Shape::U16 | Shape::I16 => self.varint(16).map(drop),
            Shape::U32 | Shape::I32 => self.varint(32).map(drop),
            Shape::U64 | Shape::I64 => self.varint(64).map(drop),
            Shape::U128 | Shape::I128 => self.varint(128).map(drop),
            Shape::F32 => self.take(4).map(drop),
            Shape::F64 => self.take(8).map(drop),
            Shape::Char => {
                let len = self.len()?;
                // Postcard refuses more than 4 bytes before looking at them.
                if len > 4 {
                    return None;
                }
                let text = std::str::from_utf8(self.take(len)?).ok()?;
                let mut chars = text.chars();
                (chars.next().is_some() && chars.next().is_none()).then_some(())
            }
            Shape::Str => {
                let len = self.len()?;
                std::str::from_utf8(self.take(len)?).ok().map(drop)
            }
            Shape::Bytes => {
                let len = self.len()?;
                self.take(len).map(drop)
            }
            Shape::Option(inner) => match self.byte()? {
                0 => Some(()),
                1 => self.skip(inner),
                _ => None,
            },
            Shape::Seq(inner) => {
                let len = self.len()?;
                self.repeat(len as u128, |s| s.skip(inner))
            }
            Shape::Map(key, value) => {
                let len = self.len()?;
                self.repeat(len as u128, |s| {
                    s.skip(key)?;
                    s.skip(value)
                })
            }
            Shape::Tuple(items) => self.skip_all(items),
            Shape::Array(inner, n) => self.repeat(u128::from(*n), |s| s.skip(inner)),
            Shape::Named(name) => self.skip_named(name),
        }
    }

    /// Skips `count` elements with `element`.
    ///
    /// A corrupt length can be up to `2^64`, so the loop must end early: an element that
    /// consumed no byte has a shape that never reads any (which bytes are read is decided only
    /// by bytes read before, so reading none once means reading none every time), so all the
    /// others succeed the same way and are not walked; every other element consumes at least
    /// one byte, which bounds the loop by the input's length.
    fn repeat(
        &mut self,
        count: u128,
        mut element: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        for _ in 0..count {
            let before = self.pos;
            element(self)?;
            if self.pos == before {
                break;
            }
        }
        Some(())
    }

    /// Skips the elements of a tuple, tuple struct or tuple variant, back to back.
    fn skip_all(&mut self, shapes: &[Shape]) -> Option<()> {
        shapes.iter().try_for_each(|shape| self.skip(shape))
    }

    /// Skips the fields of a struct or struct variant, in declaration order (field names are
    /// not encoded).
    fn skip_fields(&mut self, fields: &[Field]) -> Option<()> {
        fields.iter().try_for_each(|field| self.skip(&field.shape))
    }

    /// Skips a value of the named struct or enum `name`.
    fn skip_named(&mut self, name: &str) -> Option<()> {
        // Copy the `&'a` out of `self` so the container does not borrow `self`.
        let schema = self.schema;
        match schema.containers.get(name)? {
            Container::UnitStruct => Some(()),
            Container::Newtype(inner) => self.skip(inner),
            Container::TupleStruct(items) => self.skip_all(items),
            Container::Struct(fields) => self.skip_fields(fields),
            Container::Enum(variants) => {
                let index = u32::try_from(self.varint(32)?).ok()?;
                // The tracer records variants in index order, so look there first; search
                // only if the recorded indexes are sparse.
                let variant = usize::try_from(index)
                    .ok()
                    .and_then(|i| variants.get(i))
                    .filter(|v| v.index == index)
                    .or_else(|| variants.iter().find(|v| v.index == index))?;
                match &variant.body {
                    VariantBody::Unit => Some(()),
                    VariantBody::Newtype(inner) => self.skip(inner),
                    VariantBody::Tuple(items) => self.skip_all(items),
                    VariantBody::Struct(fields) => self.skip_fields(fields),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::collection::vec;
    use proptest::prelude::*;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize, Serializer};

    use super::*;
    use crate::schema::{TypeSchema, Variant};

    /// Bytes that follow a value in tests: `encoded_len` must stop before them.
    const GARBAGE: [u8; 5] = [0xFF, 0x00, 0x80, 0x01, 0x07];

    /// A typical namespace: an event-time window.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct TimeWindow {
        start: i64,
        end: i64,
    }

    /// An enum with every kind of variant.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Event {
        Tick,
        Id(u64),
        Window { start: i64, end: i64 },
        Pair(u8, String),
    }

    /// A struct nesting a struct, an option and an enum.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Outer {
        window: TimeWindow,
        name: String,
        last: Option<Event>,
        flags: [u8; 4],
    }

    /// A unit struct (encoded as nothing).
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Marker;

    /// A newtype struct (encoded as its inner value).
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct UserId(u64);

    /// A recursive type: the tracer cannot trace it, but a hand-written schema can describe it.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct List {
        next: Option<Box<List>>,
    }

    /// Bytes serialized with `serialize_bytes` (what `Shape::Bytes` describes).
    struct RawBytes<'a>(&'a [u8]);

    impl Serialize for RawBytes<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    /// The traced schema of `T`, which must be traceable.
    fn traced<T: DeserializeOwned>() -> TracedShape {
        let schema = TypeSchema::of::<T>();
        let name = schema.type_name.clone();
        schema
            .shape
            .unwrap_or_else(|| panic!("{name} must be traceable"))
    }

    /// A schema of one shape and no containers.
    fn bare(root: Shape) -> TracedShape {
        TracedShape {
            root,
            containers: BTreeMap::new(),
        }
    }

    /// Asserts that `encoded_len` finds exactly `encoded`'s length, with garbage after it,
    /// and `None` for every proper prefix.
    fn check_bytes(schema: &TracedShape, encoded: &[u8]) {
        let mut with_garbage = encoded.to_vec();
        with_garbage.extend_from_slice(&GARBAGE);
        assert_eq!(
            encoded_len(schema, encoded),
            Some(encoded.len()),
            "{encoded:?}"
        );
        assert_eq!(
            encoded_len(schema, &with_garbage),
            Some(encoded.len()),
            "{with_garbage:?}"
        );
        for end in 0..encoded.len() {
            assert_eq!(
                encoded_len(schema, &encoded[..end]),
                None,
                "prefix {end} of {encoded:?}"
            );
        }
    }

    /// Traces `T`, encodes `value` with postcard and checks its length (see `check_bytes`).
    fn check<T: Serialize + DeserializeOwned>(value: &T) {
        let encoded = postcard::to_stdvec(value).expect("encodes");
        check_bytes(&traced::<T>(), &encoded);
    }

    /// Agrees with postcard on arbitrary bytes: where postcard decodes a `T` from the front
    /// of `bytes`, `encoded_len` finds the same length, and where it fails, `None`.
    fn agrees_with_postcard<T: DeserializeOwned>(schema: &TracedShape, bytes: &[u8]) {
        let expected = postcard::take_from_bytes::<T>(bytes)
            .ok()
            .map(|(_, rest)| bytes.len() - rest.len());
        assert_eq!(encoded_len(schema, bytes), expected, "{bytes:?}");
    }

    /// Any `Event`.
    fn arb_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Tick),
            any::<u64>().prop_map(Event::Id),
            (any::<i64>(), any::<i64>()).prop_map(|(start, end)| Event::Window { start, end }),
            (any::<u8>(), any::<String>()).prop_map(|(a, b)| Event::Pair(a, b)),
        ]
    }

    /// Any `Outer`.
    fn arb_outer() -> impl Strategy<Value = Outer> {
        (
            any::<(i64, i64)>(),
            any::<String>(),
            proptest::option::of(arb_event()),
            any::<[u8; 4]>(),
        )
            .prop_map(|((start, end), name, last, flags)| Outer {
                window: TimeWindow { start, end },
                name,
                last,
                flags,
            })
    }

    /// Any shape, naming the containers `A` and `B` (see `arb_schema`) or a missing one.
    fn arb_shape() -> impl Strategy<Value = Shape> {
        let leaf = prop_oneof![
            Just(Shape::Unit),
            Just(Shape::Bool),
            Just(Shape::I8),
            Just(Shape::I16),
            Just(Shape::I32),
            Just(Shape::I64),
            Just(Shape::I128),
            Just(Shape::U8),
            Just(Shape::U16),
            Just(Shape::U32),
            Just(Shape::U64),
            Just(Shape::U128),
            Just(Shape::F32),
            Just(Shape::F64),
            Just(Shape::Char),
            Just(Shape::Str),
            Just(Shape::Bytes),
            Just(Shape::Named("A".into())),
            Just(Shape::Named("B".into())),
            Just(Shape::Named("Missing".into())),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|s| Shape::Option(Box::new(s))),
                inner.clone().prop_map(|s| Shape::Seq(Box::new(s))),
                (inner.clone(), inner.clone())
                    .prop_map(|(k, v)| Shape::Map(Box::new(k), Box::new(v))),
                vec(inner.clone(), 0..4).prop_map(Shape::Tuple),
                (inner, prop_oneof![Just(0), Just(3), Just(u64::MAX)])
                    .prop_map(|(s, n)| Shape::Array(Box::new(s), n)),
            ]
        })
    }

    /// Any container whose shapes come from `arb_shape` (so possibly cyclic).
    fn arb_container() -> impl Strategy<Value = Container> {
        let fields = || {
            vec(arb_shape(), 0..3).prop_map(|shapes| {
                shapes
                    .into_iter()
                    .enumerate()
                    .map(|(i, shape)| Field {
                        name: format!("f{i}"),
                        shape,
                    })
                    .collect::<Vec<_>>()
            })
        };
        let body = prop_oneof![
            Just(VariantBody::Unit),
            arb_shape().prop_map(VariantBody::Newtype),
            vec(arb_shape(), 0..3).prop_map(VariantBody::Tuple),
            fields().prop_map(VariantBody::Struct),
        ];
        prop_oneof![
            Just(Container::UnitStruct),
            arb_shape().prop_map(Container::Newtype),
            vec(arb_shape(), 0..3).prop_map(Container::TupleStruct),
            fields().prop_map(Container::Struct),
            vec(body, 1..4).prop_map(|bodies| {
                Container::Enum(
                    bodies
                        .into_iter()
                        .zip(0u32..)
                        .map(|(body, index)| Variant {
                            index,
                            name: format!("V{index}"),
                            body,
                        })
                        .collect(),
                )
            }),
        ]
    }

    /// Any schema with the containers `A` and `B`.
    fn arb_schema() -> impl Strategy<Value = TracedShape> {
        (arb_shape(), arb_container(), arb_container()).prop_map(|(root, a, b)| TracedShape {
            root,
            containers: BTreeMap::from([("A".to_string(), a), ("B".to_string(), b)]),
        })
    }

    /// Typical key and namespace types, at their edge values.
    #[test]
    fn key_and_namespace_types() {
        check(&String::new());
        check(&"user-42 ü 🦀".to_string());
        check(&"x".repeat(300)); // a two-byte length
        for n in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            check(&n);
            check(&UserId(n));
        }
        for n in [0, -1, 1, -64, 64, i64::MIN, i64::MAX] {
            check(&n);
        }
        check(&("key".to_string(), 7u64));
        check(&("".to_string(), u64::MAX));
        check(&TimeWindow {
            start: -5,
            end: i64::MAX,
        });
        check(&());
        check(&Marker);
        check(&vec![0u8; 200]);
        check(&Vec::<u8>::new());
        check(&[1u8, 2, 3, 255]);
        check(&Some(3u32));
        check(&None::<u32>);
    }

    /// Every kind of enum variant, alone and nested.
    #[test]
    fn enums_and_nested_structs() {
        let events = [
            Event::Tick,
            Event::Id(300),
            Event::Window { start: -1, end: 1 },
            Event::Pair(9, "pair".into()),
        ];
        for event in &events {
            check(event);
        }
        check(&events.to_vec());
        for last in [None, Some(Event::Tick), Some(Event::Pair(0, String::new()))] {
            check(&Outer {
                window: TimeWindow { start: 0, end: 60 },
                name: "nested".into(),
                last,
                flags: [0, 1, 2, 3],
            });
        }
    }

    /// Maps, floats, chars, 128-bit integers, bools and nested options of sequences.
    #[test]
    fn other_types() {
        check(&BTreeMap::from([
            ("a".to_string(), 1u64),
            ("b".to_string(), 2),
        ]));
        check(&BTreeMap::<String, u64>::new());
        check(&HashMap::from([(1u32, vec![-1i16, 300]), (2, vec![])]));
        for x in [0.0f32, -1.5, f32::NAN, f32::INFINITY] {
            check(&x);
        }
        for x in [0.0f64, 1e300, f64::NEG_INFINITY] {
            check(&x);
        }
        for c in ['a', 'é', '€', '🦀', '\0', char::MAX] {
            check(&c);
        }
        for n in [0, 1, u128::MAX] {
            check(&n);
        }
        for n in [0, -1, i128::MIN, i128::MAX] {
            check(&n);
        }
        check(&true);
        check(&false);
        check(&Some(vec![(1u8, "one".to_string()), (2, String::new())]));
        check(&Some(Vec::<(u8, String)>::new()));
        check(&None::<Vec<(u8, String)>>);
        check(&(Marker, (), UserId(1), Some(())));
    }

    /// Shapes the tracer does not produce (`[T; N]` traces as a tuple, `Vec<u8>` as a
    /// sequence), checked with hand-written schemas.
    #[test]
    fn bytes_and_arrays() {
        let bytes = bare(Shape::Bytes);
        for raw in [&b""[..], b"\x00\xFF", &[7u8; 130]] {
            check_bytes(
                &bytes,
                &postcard::to_stdvec(&RawBytes(raw)).expect("encodes"),
            );
        }
        let array = bare(Shape::Array(Box::new(Shape::U16), 3));
        check_bytes(
            &array,
            &postcard::to_stdvec(&[1u16, 300, u16::MAX]).expect("encodes"),
        );
        assert_eq!(
            encoded_len(&bare(Shape::Array(Box::new(Shape::U8), 0)), &[]),
            Some(0)
        );
    }

    /// Invalid bools, option tags, variant indexes, varints, UTF-8 and chars are `None`.
    #[test]
    fn rejects_invalid_values() {
        assert_eq!(encoded_len(&traced::<bool>(), &[2]), None);
        assert_eq!(encoded_len(&traced::<Option<u8>>(), &[2, 0]), None);
        let event = traced::<Event>();
        assert_eq!(encoded_len(&event, &[3, 0, 0]), Some(3));
        assert_eq!(encoded_len(&event, &[4, 0, 0]), None);
        // Index 3 as a two-byte varint is allowed (postcard accepts it); u32::MAX is not a
        // variant, and a sixth byte is overlong.
        assert_eq!(encoded_len(&event, &[0x83, 0x00, 0, 0]), Some(4));
        assert_eq!(encoded_len(&event, &[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), None);
        assert_eq!(
            encoded_len(&event, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            None
        );
        // A u16 fits in 3 bytes whose last one carries 2 bits.
        let u16s = traced::<u16>();
        assert_eq!(encoded_len(&u16s, &[0xFF, 0xFF, 0x03]), Some(3));
        assert_eq!(encoded_len(&u16s, &[0xFF, 0xFF, 0x04]), None);
        assert_eq!(encoded_len(&u16s, &[0x80, 0x80, 0x80, 0x00]), None);
        let u64s = traced::<u64>();
        assert_eq!(encoded_len(&u64s, &[0xFF; 11]), None);
        let mut too_wide = [0xFF; 10];
        too_wide[9] = 0x02;
        assert_eq!(encoded_len(&u64s, &too_wide), None);
        assert_eq!(encoded_len(&traced::<String>(), &[2, 0xC3, 0x28]), None);
        let chars = traced::<char>();
        assert_eq!(encoded_len(&chars, &[0]), None);
        assert_eq!(encoded_len(&chars, &[2, b'a', b'b']), None);
        assert_eq!(
            encoded_len(&chars, &[5, 0xF0, 0x9F, 0xA6, 0x80, b'a']),
            None
        );
    }

    /// Corrupt huge lengths fail (or, for elements of no bytes, succeed) without looping
    /// over them or allocating.
    #[test]
    fn huge_lengths() {
        let max_len = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        assert_eq!(encoded_len(&traced::<Vec<u8>>(), &max_len), None);
        assert_eq!(encoded_len(&traced::<String>(), &max_len), None);
        assert_eq!(encoded_len(&bare(Shape::Bytes), &max_len), None);
        assert_eq!(encoded_len(&traced::<BTreeMap<u8, u8>>(), &max_len), None);
        // Elements of no bytes: any count is well-formed, and takes no time.
        assert_eq!(encoded_len(&traced::<Vec<()>>(), &max_len), Some(10));
        let units = bare(Shape::Array(
            Box::new(Shape::Tuple(vec![Shape::Unit])),
            u64::MAX,
        ));
        assert_eq!(encoded_len(&units, &[]), Some(0));
        let bytes = bare(Shape::Array(Box::new(Shape::U8), u64::MAX));
        assert_eq!(encoded_len(&bytes, &[0; 100]), None);
    }

    /// Missing containers and cyclic or too deep schemas are `None`, without a stack
    /// overflow.
    #[test]
    fn missing_cyclic_and_deep_schemas() {
        assert_eq!(encoded_len(&bare(Shape::Named("Nope".into())), &[0]), None);
        let cyclic = TracedShape {
            root: Shape::Named("Loop".into()),
            containers: BTreeMap::from([(
                "Loop".to_string(),
                Container::TupleStruct(vec![Shape::Named("Loop".into()), Shape::U8]),
            )]),
        };
        assert_eq!(encoded_len(&cyclic, &[0; 1000]), None);

        // A recursive list: legal when shallow, refused past the depth cap.
        let list = TracedShape {
            root: Shape::Named("List".into()),
            containers: BTreeMap::from([(
                "List".to_string(),
                Container::Struct(vec![Field {
                    name: "next".into(),
                    shape: Shape::Option(Box::new(Shape::Named("List".into()))),
                }]),
            )]),
        };
        let mut shallow = List { next: None };
        for _ in 0..10 {
            shallow = List {
                next: Some(Box::new(shallow)),
            };
        }
        check_bytes(&list, &postcard::to_stdvec(&shallow).expect("encodes"));
        let mut deep = vec![1u8; 1000];
        deep.push(0);
        assert_eq!(encoded_len(&list, &deep), None);
    }

    proptest! {
        /// Arbitrary keys and namespaces of typical types.
        #[test]
        fn arbitrary_values(
            key in any::<(String, u64)>(),
            window in any::<(i64, i64)>(),
            outer in arb_outer(),
            nested in proptest::option::of(vec(any::<(u8, String)>(), 0..5)),
            map in proptest::collection::btree_map(any::<String>(), any::<u64>(), 0..5),
            wide in any::<(u128, i128, f32, f64, char, bool)>(),
        ) {
            check(&key);
            check(&TimeWindow { start: window.0, end: window.1 });
            check(&outer);
            check(&nested);
            check(&map);
            check(&wide);
        }

        /// Random bytes never panic, and give the length postcard itself decodes.
        #[test]
        fn random_bytes_agree_with_postcard(bytes in vec(any::<u8>(), 0..48)) {
            agrees_with_postcard::<(String, u64)>(&traced::<(String, u64)>(), &bytes);
            agrees_with_postcard::<Outer>(&traced::<Outer>(), &bytes);
            agrees_with_postcard::<Vec<Event>>(&traced::<Vec<Event>>(), &bytes);
            agrees_with_postcard::<Option<Vec<(u8, String)>>>(
                &traced::<Option<Vec<(u8, String)>>>(),
                &bytes,
            );
            agrees_with_postcard::<BTreeMap<i16, Option<bool>>>(
                &traced::<BTreeMap<i16, Option<bool>>>(),
                &bytes,
            );
            agrees_with_postcard::<(u128, i128, u32, char, f32)>(
                &traced::<(u128, i128, u32, char, f32)>(),
                &bytes,
            );
        }

        /// Random schemas (possibly cyclic, missing containers, huge arrays) over random
        /// bytes never panic, and never claim more bytes than there are.
        #[test]
        fn random_schemas_never_panic(schema in arb_schema(), bytes in vec(any::<u8>(), 0..64)) {
            if let Some(len) = encoded_len(&schema, &bytes) {
                prop_assert!(len <= bytes.len());
            }
        }
    }
}
