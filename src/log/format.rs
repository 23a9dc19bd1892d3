//! The bytes on disk: segment headers, frames and frame payloads, all
//! explicit little-endian. `docs/FORMAT.md` describes the same layout byte by
//! byte; keep the two in step.

use bytes::Bytes;

use crate::clock::Timestamp;
use crate::fingerprint::{FingerprintAlgorithm, StoredFingerprint};
use crate::identity::IdempotencyKey;
use crate::record::{Record, RecordState};

/// First 8 bytes of every segment file.
pub(crate) const MAGIC: [u8; 8] = *b"IDEMLOG\0";
/// The format version this build reads and writes.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Length of a segment header.
pub(crate) const HEADER_LEN: u32 = 32;
/// Bytes a frame adds around its payload: length, length checksum, payload
/// checksum.
pub(crate) const FRAME_OVERHEAD: usize = 12;
/// Largest payload a frame may carry (so a frame length fits the index's 30
/// bits).
pub(crate) const MAX_PAYLOAD: usize = (1 << 30) - 1 - FRAME_OVERHEAD;

const KIND_PUT: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
const KIND_MARK: u8 = 3;

const PUT_FIXED: usize = 88;
const TOMBSTONE_FIXED: usize = 12;
const MARK_LEN: usize = 24;

/// A CRC-32C, rotated and offset so that runs of zeros (preallocated,
/// never-written space) never checksum as valid.
pub(crate) fn checksum(bytes: &[u8]) -> u32 {
    masked(crc32c::crc32c(bytes))
}

fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// [`checksum`] of a frame's 4-byte length field, twice per operation
/// (written, and read back by recovery). A table lookup per byte: the
/// crc32c crate's setup for its wide loops cost more than the 4 bytes.
fn length_checksum(len: [u8; 4]) -> u32 {
    let crc = len.iter().fold(!0u32, |crc, &b| {
        CRC32C_BYTE_TABLE[usize::from(crc as u8 ^ b)] ^ (crc >> 8)
    });
    masked(!crc)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of each byte value.
const CRC32C_BYTE_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The segment header: magic, version, segment id, checksum.
pub(crate) fn encode_header(segment: u32, size: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&segment.to_le_bytes());
    // The size the file was created with; 0 in files that predate it.
    h[16..24].copy_from_slice(&size.to_le_bytes());
    // 24..28 reserved, zero.
    let c = checksum(&h[0..28]);
    h[28..32].copy_from_slice(&c.to_le_bytes());
    h
}

/// Why a segment header was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Not an idemlog file.
    Magic,
    /// Another format version.
    Version(u32),
    /// Damaged header.
    Corrupt(&'static str),
}

/// Checks a header read from the start of a segment file (`bytes` may be
/// short if the file is) and returns the size the file was created with
/// (0 when the header predates that field).
pub(crate) fn decode_header(bytes: &[u8], segment: u32) -> Result<u64, HeaderError> {
    if bytes.len() < 8 || bytes[0..8] != MAGIC {
        return Err(HeaderError::Magic);
    }
    if bytes.len() < 12 {
        return Err(HeaderError::Corrupt("header is truncated"));
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    if bytes.len() < HEADER_LEN as usize {
        return Err(HeaderError::Corrupt("header is truncated"));
    }
    if checksum(&bytes[0..28]) != u32_at(bytes, 28) {
        return Err(HeaderError::Corrupt("header checksum mismatch"));
    }
    if u32_at(bytes, 12) != segment {
        return Err(HeaderError::Corrupt(
            "segment id in the header differs from the file name",
        ));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&bytes[16..24]);
    Ok(u64::from_le_bytes(size))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Starts a frame in `out`: reserves the length and its checksum.
fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    start
}

/// Finishes the frame started at `start`: fills in the length and appends
/// the payload checksum.
fn end_frame(out: &mut Vec<u8>, start: usize) {
    let len = (out.len() - start - 8) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let lc = length_checksum(len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&lc.to_le_bytes());
    let pc = checksum(&out[start + 8..]);
    out.extend_from_slice(&pc.to_le_bytes());
}

/// The frame length a record will take, to check limits before encoding.
pub(crate) fn put_frame_len(r: &Record) -> usize {
    let response = r.response().map_or(0, |b| b.len());
    let checkpoint = r.checkpoint.as_ref().map_or(0, |b| b.len());
    FRAME_OVERHEAD
        + PUT_FIXED
        + r.key.scope().len()
        + r.key.key_bytes().len()
        + checkpoint
        + response
}

/// Appends the frame of a stored record.
pub(crate) fn encode_put(out: &mut Vec<u8>, r: &Record) {
    // One capacity check instead of one per field.
    out.reserve(put_frame_len(r));
    let start = begin_frame(out);
    let (state, state_time, response): (u8, Timestamp, &[u8]) = match &r.state {
        RecordState::InFlight { lease_until } => (0, *lease_until, &[]),
        RecordState::Completed {
            completed_at,
            response,
        } => (1, *completed_at, response),
    };
    let checkpoint: &[u8] = r.checkpoint.as_deref().map_or(&[], |c| &c[..]);
    let scope = r.key.scope();
    let key = r.key.key_bytes();
    // The fixed fields are assembled on the stack and appended at once:
    // appending them one by one cost a length check and a store each.
    let mut fixed = [0u8; PUT_FIXED];
    fixed[0] = KIND_PUT;
    fixed[1] = state;
    fixed[2] = r.fingerprint.algorithm().id();
    fixed[3] = u8::from(r.checkpoint.is_some());
    fixed[4..8].copy_from_slice(&r.attempts.to_le_bytes());
    fixed[8..16].copy_from_slice(&r.token.to_le_bytes());
    fixed[16..24].copy_from_slice(&r.created_at.as_millis().to_le_bytes());
    fixed[24..32].copy_from_slice(&r.expires_at.as_millis().to_le_bytes());
    fixed[32..40].copy_from_slice(&state_time.as_millis().to_le_bytes());
    fixed[40..44].copy_from_slice(&(scope.len() as u32).to_le_bytes());
    fixed[44..48].copy_from_slice(&(key.len() as u32).to_le_bytes());
    fixed[48..52].copy_from_slice(&(checkpoint.len() as u32).to_le_bytes());
    fixed[52..56].copy_from_slice(&(response.len() as u32).to_le_bytes());
    fixed[56..88].copy_from_slice(r.fingerprint.digest());
    out.extend_from_slice(&fixed);
    out.extend_from_slice(scope);
    out.extend_from_slice(key);
    out.extend_from_slice(checkpoint);
    out.extend_from_slice(response);
    end_frame(out, start);
}

/// Appends the frame that deletes an identity's record.
pub(crate) fn encode_tombstone(out: &mut Vec<u8>, key: &IdempotencyKey) {
    let start = begin_frame(out);
    out.extend_from_slice(&[KIND_TOMBSTONE, 0, 0, 0]);
    out.extend_from_slice(&(key.scope().len() as u32).to_le_bytes());
    out.extend_from_slice(&(key.key_bytes().len() as u32).to_le_bytes());
    out.extend_from_slice(key.scope());
    out.extend_from_slice(key.key_bytes());
    end_frame(out, start);
}

/// Appends a mark: everything before `synced_upto` was on stable storage
/// when it was written, and no fencing token above `token_floor` was used.
pub(crate) fn encode_mark(out: &mut Vec<u8>, synced_upto: u64, token_floor: u64) {
    let start = begin_frame(out);
    out.extend_from_slice(&[KIND_MARK, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&synced_upto.to_le_bytes());
    out.extend_from_slice(&token_floor.to_le_bytes());
    end_frame(out, start);
}

/// What the 8-byte frame header says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameHeader {
    /// Eight zero bytes: never-written space.
    Zero,
    /// The length checksum does not match.
    Bad,
    /// A payload of this many bytes follows.
    Len(usize),
}

/// Reads a frame header; `bytes` holds at least 8 bytes.
pub(crate) fn frame_header(bytes: &[u8]) -> FrameHeader {
    if bytes[..8] == [0u8; 8] {
        return FrameHeader::Zero;
    }
    let len = u32_at(bytes, 0);
    if length_checksum(len.to_le_bytes()) != u32_at(bytes, 4) || len as usize > MAX_PAYLOAD {
        return FrameHeader::Bad;
    }
    FrameHeader::Len(len as usize)
}

/// Checks a payload against the checksum stored after it: `bytes` holds the
/// payload and its 4 checksum bytes.
pub(crate) fn payload_ok(bytes: &[u8]) -> bool {
    let n = bytes.len() - 4;
    checksum(&bytes[..n]) == u32_at(bytes, n)
}

/// A frame payload, decoded only as far as recovery needs.
#[derive(Debug)]
pub(crate) enum Summary<'a> {
    /// A record.
    Put {
        scope: &'a [u8],
        key: &'a [u8],
        in_flight: bool,
        token: u64,
        expires_at: u64,
    },
    /// A deletion.
    Tombstone { scope: &'a [u8], key: &'a [u8] },
    /// A sync mark.
    Mark { synced_upto: u64, token_floor: u64 },
}

/// Reads the kind and identity of a checksummed payload; `Err` names what
/// does not add up.
pub(crate) fn summarize(p: &[u8]) -> Result<Summary<'_>, &'static str> {
    match p.first() {
        Some(&KIND_PUT) => {
            let lens = put_lengths(p)?;
            let scope = &p[PUT_FIXED..PUT_FIXED + lens.0];
            let key = &p[PUT_FIXED + lens.0..PUT_FIXED + lens.0 + lens.1];
            Ok(Summary::Put {
                scope,
                key,
                in_flight: p[1] == 0,
                token: u64_at(p, 8),
                expires_at: u64_at(p, 24),
            })
        }
        Some(&KIND_TOMBSTONE) => {
            if p.len() < TOMBSTONE_FIXED {
                return Err("tombstone shorter than its fixed part");
            }
            let s = u32_at(p, 4) as usize;
            let k = u32_at(p, 8) as usize;
            if TOMBSTONE_FIXED
                .checked_add(s)
                .and_then(|n| n.checked_add(k))
                != Some(p.len())
            {
                return Err("tombstone lengths do not add up");
            }
            Ok(Summary::Tombstone {
                scope: &p[TOMBSTONE_FIXED..TOMBSTONE_FIXED + s],
                key: &p[TOMBSTONE_FIXED + s..],
            })
        }
        Some(&KIND_MARK) if p.len() == MARK_LEN => Ok(Summary::Mark {
            synced_upto: u64_at(p, 8),
            token_floor: u64_at(p, 16),
        }),
        Some(&KIND_MARK) => Err("mark of the wrong length"),
        _ => Err("unknown frame kind"),
    }
}

/// (scope, key, checkpoint, response) lengths of a put payload, checked
/// against its size.
fn put_lengths(p: &[u8]) -> Result<(usize, usize, usize, usize), &'static str> {
    if p.len() < PUT_FIXED {
        return Err("record shorter than its fixed part");
    }
    let l = (
        u32_at(p, 40) as usize,
        u32_at(p, 44) as usize,
        u32_at(p, 48) as usize,
        u32_at(p, 52) as usize,
    );
    let total = PUT_FIXED
        .checked_add(l.0)
        .and_then(|n| n.checked_add(l.1))
        .and_then(|n| n.checked_add(l.2))
        .and_then(|n| n.checked_add(l.3));
    if total != Some(p.len()) {
        return Err("record lengths do not add up");
    }
    if p[1] > 1 || p[3] > 1 {
        return Err("unknown record state or flags");
    }
    Ok(l)
}

/// Decodes a checksummed put payload into a record (`replays` 0).
pub(crate) fn decode_put(p: &[u8]) -> Result<Record, &'static str> {
    if p.first() != Some(&KIND_PUT) {
        return Err("expected a record frame");
    }
    let (s, k, c, r) = put_lengths(p)?;
    let algorithm =
        FingerprintAlgorithm::from_id(p[2]).ok_or("unknown fingerprint algorithm id")?;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&p[56..88]);
    let mut at = PUT_FIXED;
    let scope = &p[at..at + s];
    at += s;
    let key = std::str::from_utf8(&p[at..at + k]).map_err(|_| "key is not UTF-8")?;
    at += k;
    let checkpoint = &p[at..at + c];
    at += c;
    let response = &p[at..at + r];
    let state_time = Timestamp::from_millis(u64_at(p, 32));
    let state = if p[1] == 0 {
        RecordState::InFlight {
            lease_until: state_time,
        }
    } else {
        RecordState::Completed {
            completed_at: state_time,
            response: Bytes::copy_from_slice(response),
        }
    };
    Ok(Record {
        key: IdempotencyKey::from_stored(scope, key),
        fingerprint: StoredFingerprint::from_parts(algorithm, digest),
        state,
        created_at: Timestamp::from_millis(u64_at(p, 16)),
        expires_at: Timestamp::from_millis(u64_at(p, 24)),
        token: u64_at(p, 8),
        attempts: u32_at(p, 4),
        replays: 0,
        checkpoint: (p[3] == 1).then(|| Box::new(Bytes::copy_from_slice(checkpoint))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use std::time::Duration;

    fn record(response: Option<&'static [u8]>, checkpoint: Option<&'static [u8]>) -> Record {
        let key = IdempotencyKey::new("tenant\x00x", "key-1").unwrap();
        let fp = Fingerprint::of_bytes(b"body");
        let mut r = crate::decision::acquired_record(
            None,
            false,
            &key,
            &fp,
            Timestamp::from_millis(1_000),
            Duration::from_secs(60),
            Duration::from_secs(3600),
            77,
        );
        r.checkpoint = checkpoint.map(|c| Box::new(Bytes::from_static(c)));
        if let Some(body) = response {
            r = crate::decision::completed_record(
                &r,
                Bytes::from_static(body),
                Timestamp::from_millis(2_000),
                Duration::from_secs(10),
            );
        }
        r
    }

    fn payload(frame: &[u8]) -> &[u8] {
        let FrameHeader::Len(n) = frame_header(frame) else {
            panic!("bad header")
        };
        assert_eq!(frame.len(), n + FRAME_OVERHEAD);
        assert!(payload_ok(&frame[8..]));
        &frame[8..8 + n]
    }

    #[test]
    fn records_round_trip() {
        for r in [
            record(None, None),
            record(None, Some(b"")),
            record(None, Some(b"phase-2")),
            record(Some(b"{\"ok\":true}"), None),
            record(Some(b""), None),
        ] {
            let mut out = vec![9u8];
            encode_put(&mut out, &r);
            assert_eq!(out.len() - 1, put_frame_len(&r));
            assert_eq!(decode_put(payload(&out[1..])).unwrap(), r);
        }
    }

    #[test]
    fn put_layout_is_little_endian_and_stable() {
        let r = record(Some(b"R"), None);
        let mut out = Vec::new();
        encode_put(&mut out, &r);
        let p = payload(&out);
        assert_eq!(&p[0..4], &[KIND_PUT, 1, 1, 0]);
        assert_eq!(&p[4..8], &1u32.to_le_bytes());
        assert_eq!(&p[8..16], &77u64.to_le_bytes());
        assert_eq!(&p[16..24], &1_000u64.to_le_bytes());
        assert_eq!(&p[24..32], &12_000u64.to_le_bytes());
        assert_eq!(&p[32..40], &2_000u64.to_le_bytes());
        assert_eq!(
            &p[40..56],
            &[8, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(&p[88..], b"tenant\x00xkey-1R");
    }

    #[test]
    fn tombstones_and_marks_summarize() {
        let key = IdempotencyKey::new("s", "k").unwrap();
        let mut out = Vec::new();
        encode_tombstone(&mut out, &key);
        assert!(matches!(
            summarize(payload(&out)),
            Ok(Summary::Tombstone {
                scope: b"s",
                key: b"k"
            })
        ));
        let mut out = Vec::new();
        encode_mark(&mut out, 5 << 32 | 100, 42);
        let s = summarize(payload(&out));
        assert!(
            matches!(
                s,
                Ok(Summary::Mark {
                    synced_upto: 0x5_0000_0064,
                    token_floor: 42
                })
            ),
            "got {s:?}"
        );
    }

    #[test]
    fn length_checksum_is_the_checksum_of_the_four_bytes() {
        let mut x = 0x1234_5678u32;
        for len in [0u32, 1, 255, 256, 65_535, 1 << 24, u32::MAX] {
            assert_eq!(
                length_checksum(len.to_le_bytes()),
                checksum(&len.to_le_bytes())
            );
        }
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            assert_eq!(length_checksum(x.to_le_bytes()), checksum(&x.to_le_bytes()));
        }
    }

    #[test]
    fn zeros_never_checksum() {
        assert_eq!(frame_header(&[0u8; 8]), FrameHeader::Zero);
        assert_ne!(checksum(&[0u8; 4]), 0);
        assert!(!payload_ok(&[0u8; 20]));
        let mut one = [0u8; 8];
        one[0] = 1;
        assert_eq!(frame_header(&one), FrameHeader::Bad);
    }

    #[test]
    fn headers_check_magic_version_checksum_and_id() {
        let h = encode_header(7, 1 << 20);
        assert_eq!(decode_header(&h, 7), Ok(1 << 20));
        assert!(matches!(decode_header(&h, 8), Err(HeaderError::Corrupt(_))));
        assert_eq!(decode_header(b"PK\x03\x04", 7), Err(HeaderError::Magic));
        let mut v2 = h;
        v2[8] = 2;
        assert_eq!(decode_header(&v2, 7), Err(HeaderError::Version(2)));
        let mut flipped = h;
        flipped[13] ^= 1;
        assert!(matches!(
            decode_header(&flipped, 7),
            Err(HeaderError::Corrupt(_))
        ));
        assert!(matches!(
            decode_header(&h[..20], 7),
            Err(HeaderError::Corrupt(_))
        ));
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let r = record(Some(b"abc"), None);
        let mut out = Vec::new();
        encode_put(&mut out, &r);
        let p = payload(&out).to_vec();
        assert!(decode_put(&p[..p.len() - 1]).is_err());
        let mut bad_alg = p.clone();
        bad_alg[2] = 99;
        assert_eq!(
            decode_put(&bad_alg).unwrap_err(),
            "unknown fingerprint algorithm id"
        );
        assert_eq!(summarize(&[42]).unwrap_err(), "unknown frame kind");
    }
}
