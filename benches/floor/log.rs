//! The `None` floor: the in-memory floor's map, with every record also
//! written to a log file the way any log-structured store without syncs
//! must, and nothing more.
//!
//! Each reserve and each complete appends one whole record (the identity,
//! fingerprint, token, expiry and, for a completion, the response) behind a
//! length and a CRC-32C, so that recovery could rebuild the map and tell a
//! torn tail. Records are appended under the identity's shard lock (two
//! requests for one identity reach the log in the order they were decided)
//! into one shared buffer; a writer thread writes the buffer to the file
//! once it holds 1 MiB or every 10 ms, and a caller writes it itself past
//! 4 MiB, the thresholds idemlog's `None` log uses. A completed entry keeps
//! where its record was written instead of the response. There are no
//! segments, no index packing, no in-flight side table and no read-backs.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::memory::{FloorMap, Identity, Ticket};
use super::Floor;

/// The writer thread writes the buffer once it holds this much...
const WRITE_AT: usize = 1 << 20;
/// ...and a caller writes it itself past this much.
const WRITE_MYSELF_AT: usize = 4 << 20;
/// How often the writer thread writes a non-empty buffer.
const WRITE_EVERY: Duration = Duration::from_millis(10);

/// The writer thread, which ends with the first write that failed, if any.
pub type WriterThread = JoinHandle<Result<(), String>>;

/// Bytes ahead of each record: its length and its checksum.
const FRAME_HEADER: usize = 8;

thread_local! {
    /// Each caller's frame, encoded outside the buffer's lock.
    static FRAME: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The map and its log.
pub struct LogFloor {
    map: FloorMap<u64>,
    tail: CachePadded<Mutex<Tail>>,
    /// Held by whoever writes the buffer out, so writes land in order.
    io: Mutex<Io>,
    writer: OnceLock<Thread>,
    stop: AtomicBool,
}

/// Records appended but not yet written.
struct Tail {
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    pos: u64,
}

struct Io {
    file: File,
    spare: Vec<u8>,
}

/// A record's fields, borrowed from the caller.
struct Record<'a> {
    identity: &'a [u8],
    fingerprint: &'a [u8; 32],
    token: u64,
    expires_at_ms: u64,
    /// Empty for an in-flight record.
    response: &'a [u8],
}

impl LogFloor {
    /// A floor logging to `file` from its start, with its writer thread
    /// running; [`LogFloor::close`] stops it.
    pub fn start(file: File) -> std::io::Result<(Arc<LogFloor>, WriterThread)> {
        let floor = Arc::new(LogFloor {
            map: FloorMap::default(),
            tail: CachePadded::new(Mutex::new(Tail {
                buf: Vec::with_capacity(WRITE_AT * 2),
                pos: 0,
            })),
            io: Mutex::new(Io {
                file,
                spare: Vec::with_capacity(WRITE_AT * 2),
            }),
            writer: OnceLock::new(),
            stop: AtomicBool::new(false),
        });
        let writer = {
            let floor = Arc::clone(&floor);
            std::thread::Builder::new()
                .name("floor-log-writer".into())
                .spawn(move || {
                    let _ = floor.writer.set(std::thread::current());
                    while !floor.stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(WRITE_EVERY);
                        floor.write_out()?;
                    }
                    floor.write_out()
                })?
        };
        Ok((floor, writer))
    }

    /// Stops the writer thread, whose last act is to write what is left,
    /// and returns the bytes logged.
    pub fn close(&self, writer: WriterThread) -> Result<u64, String> {
        self.stop.store(true, Ordering::Release);
        writer.thread().unpark();
        writer
            .join()
            .map_err(|_| "the floor's writer thread panicked".to_string())??;
        Ok(self.tail.lock().pos)
    }

    /// Appends `record`'s frame and returns the file offset it will have.
    /// The frame is encoded and checksummed before the buffer's lock is
    /// taken, so the other thread waits only for the copy.
    fn append(&self, record: &Record<'_>) -> Result<u64, String> {
        FRAME.with(|frame| {
            let mut frame = frame.borrow_mut();
            frame.clear();
            frame.extend_from_slice(&[0; FRAME_HEADER]);
            frame.push(u8::from(!record.response.is_empty()));
            frame.push(record.identity.len() as u8);
            frame.extend_from_slice(&record.token.to_le_bytes());
            frame.extend_from_slice(&record.expires_at_ms.to_le_bytes());
            frame.extend_from_slice(record.fingerprint);
            frame.extend_from_slice(record.identity);
            frame.extend_from_slice(record.response);
            let payload = &frame[FRAME_HEADER..];
            let len = u32::try_from(payload.len()).map_err(|_| "a floor record is too long")?;
            let crc = crc32c::crc32c(payload);
            frame[..4].copy_from_slice(&len.to_le_bytes());
            frame[4..FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
            let (held, at) = {
                let mut tail = self.tail.lock();
                let start = tail.buf.len();
                tail.buf.extend_from_slice(&frame);
                let held = tail.buf.len();
                if start < WRITE_AT && held >= WRITE_AT {
                    if let Some(writer) = self.writer.get() {
                        writer.unpark();
                    }
                }
                (held, tail.pos + start as u64)
            };
            if held >= WRITE_MYSELF_AT {
                self.write_out()?;
            }
            Ok(at)
        })
    }

    /// Writes what the buffer holds.
    fn write_out(&self) -> Result<(), String> {
        let mut io = self.io.lock();
        let Io { file, spare } = &mut *io;
        let offset = {
            let mut tail = self.tail.lock();
            if tail.buf.is_empty() {
                return Ok(());
            }
            std::mem::swap(&mut tail.buf, spare);
            let offset = tail.pos;
            tail.pos += spare.len() as u64;
            offset
        };
        file.write_all_at(spare, offset)
            .map_err(|e| format!("the floor's log write failed: {e}"))?;
        spare.clear();
        Ok(())
    }
}

impl Floor for LogFloor {
    /// Inserts an in-flight entry and logs its record.
    fn reserve(
        &self,
        identity: &Identity,
        fingerprint: &[u8; 32],
        token: u64,
        expires_at_ms: u64,
    ) -> Result<Ticket, String> {
        self.map
            .reserve_logged(identity, fingerprint, token, expires_at_ms, || {
                self.append(&Record {
                    identity: identity.as_bytes(),
                    fingerprint,
                    token,
                    expires_at_ms,
                    response: &[],
                })
                .map(drop)
            })
    }

    /// Logs the completed record, keeps where it was written and lets the
    /// response go.
    fn complete(
        &self,
        identity: &Identity,
        ticket: &Ticket,
        response: Vec<u8>,
        expires_at_ms: u64,
    ) -> Result<(), String> {
        self.map
            .complete_with(identity, ticket, expires_at_ms, |token, fingerprint| {
                self.append(&Record {
                    identity: identity.as_bytes(),
                    fingerprint,
                    token,
                    expires_at_ms,
                    response: &response,
                })
            })
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}
