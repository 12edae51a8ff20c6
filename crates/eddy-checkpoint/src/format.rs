//! The frame around every checkpoint file (`docs/checkpoints.md`, "How: every file is framed").
//!
//! ```text
//! magic      8 bytes   b"EDDYCKPT"
//! version    u16 LE    format version (3)
//! kind       u8        1 = metadata, 2 = keyed state, 3 = operator state,
//!                      4 = incremental keyed state, 5 = shared state file
//! length     u64 LE    payload length
//! payload    length    bytes
//! crc32c     u32 LE    over everything before it
//! ```
//!
//! [`unframe`] accepts a file only if every field is consistent and the checksum matches; each
//! refusal is an [`EddyError::Checkpoint`] naming the file and a distinct reason. It never
//! panics, whatever the input (a property test feeds it random bytes, truncations and
//! corrupted frames).
//!
//! The checks run in the order that gives the most useful message: size, magic (a foreign
//! file), version (a newer Eddy wrote it: its layout past the version may differ), length
//! (truncated or padded), checksum (corrupt), and only then kind (a file that is intact but not
//! the one expected, e.g. metadata passed where keyed state belongs).

use eddy_core::{EddyError, Result};

/// The first 8 bytes of every checkpoint file.
pub const MAGIC: [u8; 8] = *b"EDDYCKPT";

/// The newest format version this build writes and reads; newer ones are refused.
///
/// Version 2 added the schema snapshot of every state's types (schema evolution) to keyed
/// state files. Version 3 added shared files (incremental checkpoints) to the metadata
/// ([`crate::SubtaskMetadata::shared`]) and the file kinds
/// [`FileKind::IncrementalKeyedState`] and [`FileKind::SharedState`].
pub const FORMAT_VERSION: u16 = 3;

/// The oldest format version this build reads. Version 1 keyed state lacks the schemas a
/// restore checks types against, so it is refused rather than trusted. Version 3 added shared
/// files (incremental checkpoints) to the metadata, and postcard is not self-describing: the
/// metadata of version 2 has another shape and cannot be decoded, so version 2 is refused too.
pub const OLDEST_READABLE_VERSION: u16 = 3;

/// Bytes before the payload: magic, version, kind, length.
pub const HEADER_LEN: usize = 8 + 2 + 1 + 8;

/// Bytes after the payload: the crc32c.
pub const TRAILER_LEN: usize = 4;

/// What a checkpoint file holds (the frame's `kind` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FileKind {
    /// A checkpoint's `_metadata` ([`crate::CheckpointMetadata`]).
    Metadata,
    /// The keyed state of one subtask (`keyed-<subtask>.bin`).
    KeyedState,
    /// The operator state of one subtask (`operator-<subtask>.bin`).
    OperatorState,
    /// The keyed state of one subtask as a native (RocksDB) incremental snapshot
    /// (`keyed-<subtask>.bin`): it refers to shared files
    /// ([`crate::SubtaskMetadata::shared`]) instead of holding every SST file itself.
    IncrementalKeyedState,
    /// One shared file (an uploaded SST file), `shared/<operator uid>/<file>` under the
    /// checkpoint root, referred to by the incremental keyed state of one or more checkpoints.
    SharedState,
}

impl FileKind {
    /// The frame's `kind` byte.
    pub fn code(self) -> u8 {
        match self {
            FileKind::Metadata => 1,
            FileKind::KeyedState => 2,
            FileKind::OperatorState => 3,
            FileKind::IncrementalKeyedState => 4,
            FileKind::SharedState => 5,
        }
    }

    /// The kind with frame byte `code`, if there is one.
    pub fn from_code(code: u8) -> Option<FileKind> {
        match code {
            1 => Some(FileKind::Metadata),
            2 => Some(FileKind::KeyedState),
            3 => Some(FileKind::OperatorState),
            4 => Some(FileKind::IncrementalKeyedState),
            5 => Some(FileKind::SharedState),
            _ => None,
        }
    }

    /// A name for messages and listings.
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Metadata => "checkpoint metadata",
            FileKind::KeyedState => "keyed state",
            FileKind::OperatorState => "operator state",
            FileKind::IncrementalKeyedState => "incremental keyed state",
            FileKind::SharedState => "shared state file",
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// The bytes a frame adds to its payload: a producer that leaves this much spare capacity
/// behind a payload lets [`frame_owned`] frame it without reallocating.
pub const FRAME_LEN: usize = HEADER_LEN + TRAILER_LEN;

/// Frames `payload` as a checkpoint file of `kind` (current [`FORMAT_VERSION`]).
pub fn frame(kind: FileKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_LEN + payload.len());
    out.extend_from_slice(&header(kind, payload.len()));
    out.extend_from_slice(payload);
    seal(out)
}

/// Frames `payload` like [`frame`], in its own buffer: the payload moves up behind the
/// header in place, so a multi-megabyte snapshot is not copied into a second buffer (whose
/// fresh pages the kernel would zero first). Reallocates only if `payload` has less than
/// [`FRAME_LEN`] bytes of spare capacity.
pub fn frame_owned(kind: FileKind, mut payload: Vec<u8>) -> Vec<u8> {
    let len = payload.len();
    payload.reserve_exact(FRAME_LEN);
    payload.resize(HEADER_LEN + len, 0);
    payload.copy_within(..len, HEADER_LEN);
    payload[..HEADER_LEN].copy_from_slice(&header(kind, len));
    seal(payload)
}

/// The header of a frame of `kind` around `payload_len` bytes.
fn header(kind: FileKind, payload_len: usize) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[10] = kind.code();
    header[11..].copy_from_slice(&(payload_len as u64).to_le_bytes());
    header
}

/// Appends the checksum of everything in `framed` (header and payload).
fn seal(mut framed: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&framed);
    framed.extend_from_slice(&crc.to_le_bytes());
    framed
}

/// Checks the frame of a checkpoint file and returns its payload.
///
/// `location` names the file in the error (a path or URL). Refuses, each with its own reason:
/// a file shorter than an empty frame, wrong magic (a foreign file), a newer (or zero) format
/// version, a payload length that disagrees with the file's size, a checksum mismatch, an
/// unknown kind, and a kind other than `expected`.
pub fn unframe<'a>(bytes: &'a [u8], expected: FileKind, location: &str) -> Result<&'a [u8]> {
    let refuse = |reason: String| Err(EddyError::checkpoint(location, reason));
    let min = HEADER_LEN + TRAILER_LEN;

    // A file too short for the magic that is still a prefix of it was cut off while being
    // written (or copied); anything else that short is not ours.
    if bytes.len() < MAGIC.len() {
        return if MAGIC.starts_with(bytes) {
            refuse(format!(
                "truncated: {} bytes, shorter than the {min}-byte frame of an empty file",
                bytes.len()
            ))
        } else {
            refuse("not an Eddy checkpoint file (foreign file?): wrong magic bytes".into())
        };
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return refuse("not an Eddy checkpoint file (foreign file?): wrong magic bytes".into());
    }
    if bytes.len() < min {
        return refuse(format!(
            "truncated: {} bytes, shorter than the {min}-byte frame of an empty file",
            bytes.len()
        ));
    }

    let (header, rest) = bytes.split_at(HEADER_LEN);
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version > FORMAT_VERSION {
        return refuse(format!(
            "written in checkpoint format version {version}, but this Eddy reads versions up to \
             {FORMAT_VERSION}: restore it with a newer Eddy"
        ));
    }
    if version == 0 {
        return refuse("invalid checkpoint format version 0 (corrupt file?)".into());
    }
    if version < OLDEST_READABLE_VERSION {
        return refuse(format!(
            "written in checkpoint format version {version}, which this Eddy no longer reads \
             (version 2 added the state schemas that restores check, version \
             {OLDEST_READABLE_VERSION} the shared files of incremental checkpoints to the \
             metadata): restore it with the Eddy that wrote it"
        ));
    }

    let kind_code = header[10];
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[11..HEADER_LEN]);
    let declared = u64::from_le_bytes(len_bytes);
    let actual = (rest.len() - TRAILER_LEN) as u64;
    if declared > actual {
        return refuse(format!(
            "truncated: the header announces {declared} payload bytes, the file holds {actual}"
        ));
    }
    if declared < actual {
        return refuse(format!(
            "length mismatch: the header announces {declared} payload bytes, the file holds \
             {actual} (trailing bytes?)"
        ));
    }

    let (covered, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        return refuse(format!(
            "checksum mismatch (file is corrupt): stored crc32c {stored:#010x}, computed \
             {computed:#010x}"
        ));
    }

    let Some(kind) = FileKind::from_code(kind_code) else {
        return refuse(format!("unknown file kind {kind_code}"));
    };
    if kind != expected {
        return refuse(format!("holds {kind}, but {expected} was expected"));
    }
    Ok(&rest[..rest.len() - TRAILER_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reason(result: Result<&[u8]>) -> String {
        match result {
            Err(EddyError::Checkpoint { location, reason }) => {
                assert_eq!(location, "chk-1/op/keyed-0.bin");
                reason
            }
            other => panic!("expected a checkpoint error, got {other:?}"),
        }
    }

    const LOC: &str = "chk-1/op/keyed-0.bin";

    #[test]
    fn framing_in_place_gives_the_same_bytes_and_reuses_the_buffer() {
        for payload in [&b""[..], b"x", &[0xAB; 1000][..]] {
            let mut owned = Vec::with_capacity(payload.len() + FRAME_LEN);
            owned.extend_from_slice(payload);
            let buffer = owned.as_ptr();
            let framed = frame_owned(FileKind::KeyedState, owned);
            assert_eq!(framed, frame(FileKind::KeyedState, payload));
            assert_eq!(framed.as_ptr(), buffer, "framed without reallocating");
            assert_eq!(
                unframe(&framed, FileKind::KeyedState, "t").ok(),
                Some(payload)
            );
        }
        // Without spare capacity it still frames correctly.
        let tight = b"tight".to_vec();
        assert_eq!(
            frame_owned(FileKind::OperatorState, tight),
            frame(FileKind::OperatorState, b"tight")
        );
    }

    #[test]
    fn round_trip() {
        let framed = frame(FileKind::KeyedState, b"hello");
        assert_eq!(framed.len(), HEADER_LEN + 5 + TRAILER_LEN);
        assert_eq!(
            unframe(&framed, FileKind::KeyedState, LOC).unwrap(),
            b"hello"
        );
        let empty = frame(FileKind::Metadata, b"");
        assert_eq!(unframe(&empty, FileKind::Metadata, LOC).unwrap(), b"");
    }

    #[test]
    fn layout_is_the_documented_one() {
        let framed = frame(FileKind::OperatorState, &[0xAB; 3]);
        assert_eq!(&framed[..8], b"EDDYCKPT");
        assert_eq!(&framed[8..10], &[3, 0]);
        assert_eq!(framed[10], 3);
        assert_eq!(&framed[11..19], &[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&framed[19..22], &[0xAB; 3]);
        let crc = crc32c::crc32c(&framed[..22]).to_le_bytes();
        assert_eq!(&framed[22..], &crc);
    }

    #[test]
    fn kind_codes_are_the_documented_ones() {
        let kinds = [
            (FileKind::Metadata, 1, "checkpoint metadata"),
            (FileKind::KeyedState, 2, "keyed state"),
            (FileKind::OperatorState, 3, "operator state"),
            (
                FileKind::IncrementalKeyedState,
                4,
                "incremental keyed state",
            ),
            (FileKind::SharedState, 5, "shared state file"),
        ];
        for (kind, code, name) in kinds {
            assert_eq!(kind.code(), code);
            assert_eq!(FileKind::from_code(code), Some(kind));
            assert_eq!(kind.to_string(), name);
        }
        assert_eq!(FileKind::from_code(0), None);
        assert_eq!(FileKind::from_code(6), None);
        let framed = frame(FileKind::SharedState, b"sst");
        assert_eq!(framed[10], 5);
        let r = reason(unframe(&framed, FileKind::KeyedState, LOC));
        assert_eq!(r, "holds shared state file, but keyed state was expected");
    }

    #[test]
    fn each_refusal_has_its_own_reason() {
        let good = frame(FileKind::KeyedState, b"payload");

        let r = reason(unframe(b"", FileKind::KeyedState, LOC));
        assert!(r.starts_with("truncated: 0 bytes"), "{r}");
        let r = reason(unframe(&good[..12], FileKind::KeyedState, LOC));
        assert!(r.starts_with("truncated: 12 bytes"), "{r}");
        let r = reason(unframe(&good[..good.len() - 1], FileKind::KeyedState, LOC));
        assert!(r.starts_with("truncated: the header announces 7"), "{r}");

        let r = reason(unframe(b"PK\x03\x04 a zip file", FileKind::KeyedState, LOC));
        assert!(
            r.contains("not an Eddy checkpoint file (foreign file?)"),
            "{r}"
        );
        let r = reason(unframe(b"{}", FileKind::KeyedState, LOC));
        assert!(r.contains("foreign file?"), "{r}");

        let mut newer = good.clone();
        newer[8..10].copy_from_slice(&7u16.to_le_bytes());
        let r = reason(unframe(&newer, FileKind::KeyedState, LOC));
        assert!(r.contains("version 7") && r.contains("up to 3"), "{r}");

        for old in [1u16, 2] {
            let mut older = good.clone();
            older[8..10].copy_from_slice(&old.to_le_bytes());
            let r = reason(unframe(&older, FileKind::KeyedState, LOC));
            assert!(
                r.contains(&format!("version {old}, which this Eddy no longer reads")),
                "{r}"
            );
        }

        let mut padded = good.clone();
        padded.insert(HEADER_LEN, 0);
        let r = reason(unframe(&padded, FileKind::KeyedState, LOC));
        assert!(r.starts_with("length mismatch"), "{r}");

        let mut flipped = good.clone();
        flipped[HEADER_LEN] ^= 0x10;
        let r = reason(unframe(&flipped, FileKind::KeyedState, LOC));
        assert!(r.starts_with("checksum mismatch (file is corrupt)"), "{r}");

        let r = reason(unframe(&good, FileKind::Metadata, LOC));
        assert_eq!(r, "holds keyed state, but checkpoint metadata was expected");

        // An unknown kind with a valid checksum: a file from a future kind of part.
        let mut unknown = good[..good.len() - TRAILER_LEN].to_vec();
        unknown[10] = 9;
        let crc = crc32c::crc32c(&unknown);
        unknown.extend_from_slice(&crc.to_le_bytes());
        let r = reason(unframe(&unknown, FileKind::KeyedState, LOC));
        assert_eq!(r, "unknown file kind 9");
    }

    #[test]
    fn error_message_names_the_file() {
        let err = unframe(
            b"garbage!garbage!garbage!",
            FileKind::Metadata,
            "s3://b/chk-2/_metadata",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "checkpoint s3://b/chk-2/_metadata: not an Eddy checkpoint file (foreign file?): \
             wrong magic bytes"
        );
    }

    fn any_kind() -> impl Strategy<Value = FileKind> {
        prop_oneof![
            Just(FileKind::Metadata),
            Just(FileKind::KeyedState),
            Just(FileKind::OperatorState),
            Just(FileKind::IncrementalKeyedState),
            Just(FileKind::SharedState)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic_nor_decode(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            kind in any_kind(),
        ) {
            prop_assert!(unframe(&bytes, kind, LOC).is_err());
        }

        #[test]
        fn random_bytes_behind_the_magic_never_decode(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            kind in any_kind(),
        ) {
            // Past the magic, random bytes reach the version, length and checksum checks.
            let mut file = MAGIC.to_vec();
            file.extend_from_slice(&bytes);
            prop_assert!(unframe(&file, kind, LOC).is_err());
        }

        #[test]
        fn a_valid_frame_round_trips(
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            kind in any_kind(),
        ) {
            let framed = frame(kind, &payload);
            prop_assert_eq!(unframe(&framed, kind, LOC).unwrap(), &payload[..]);
        }

        #[test]
        fn any_truncation_is_refused(
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            kind in any_kind(),
            cut in any::<prop::sample::Index>(),
        ) {
            let framed = frame(kind, &payload);
            let len = cut.index(framed.len()); // 0..framed.len(): strictly shorter
            prop_assert!(unframe(&framed[..len], kind, LOC).is_err());
        }

        #[test]
        fn any_changed_byte_is_refused(
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            kind in any_kind(),
            at in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            // One changed byte is a burst error of at most 8 bits: crc32c detects every burst
            // up to 32 bits, so no single-byte change can pass, wherever it is.
            let mut framed = frame(kind, &payload);
            let i = at.index(framed.len());
            framed[i] ^= xor;
            prop_assert!(unframe(&framed, kind, LOC).is_err());
        }

        #[test]
        fn any_single_bit_flip_is_refused(
            payload in proptest::collection::vec(any::<u8>(), 0..128),
            kind in any_kind(),
            bit in any::<prop::sample::Index>(),
        ) {
            let mut framed = frame(kind, &payload);
            let b = bit.index(framed.len() * 8);
            framed[b / 8] ^= 1 << (b % 8);
            prop_assert!(unframe(&framed, kind, LOC).is_err());
        }

        #[test]
        fn appended_bytes_are_refused(
            payload in proptest::collection::vec(any::<u8>(), 0..128),
            extra in proptest::collection::vec(any::<u8>(), 1..16),
            kind in any_kind(),
        ) {
            let mut framed = frame(kind, &payload);
            framed.extend_from_slice(&extra);
            prop_assert!(unframe(&framed, kind, LOC).is_err());
        }
    }
}
