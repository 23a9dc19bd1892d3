//! Helpers shared by the benches: keys, the bench's own directory on the
//! same disk as `target/`, and what the machine is (CPU, filesystem, RSS).

#![allow(dead_code)] // each bench uses its own subset

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Length of every benchmark key, in bytes (visible ASCII, so the same bytes
/// are a valid idemlog key, a sled key and a Redis key).
pub const KEY_LEN: usize = 32;

/// Length of every stored response.
pub const RESPONSE_LEN: usize = 300;

/// The scope every idemlog benchmark key lives in.
pub const SCOPE: &str = "tenant-bench";

/// Framed size of the durable log's reserve record for the benches'
/// requests (docs/FORMAT.md): frame header and trailer (12 B), fixed record
/// fields (88 B), the scope and the key.
pub const RESERVE_FRAME_LEN: usize = 12 + 88 + SCOPE.len() + KEY_LEN;

/// Framed size of the complete record: the reserve record's fields plus the
/// response.
pub const fn complete_frame_len(response_len: usize) -> usize {
    RESERVE_FRAME_LEN + response_len
}

/// A 300-byte response, as a handler would produce it.
pub fn response() -> Vec<u8> {
    (0..RESPONSE_LEN).map(|i| b'a' + (i % 26) as u8).collect()
}

/// SplitMix64: a tiny, fast generator; benchmark keys need to be distinct and
/// spread, not secret.
#[derive(Debug, Clone)]
pub struct KeyGen(u64);

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl KeyGen {
    pub fn new(seed: u64) -> Self {
        KeyGen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 32 random characters from a 64-letter alphabet (192 random bits):
    /// distinct for any run length a benchmark can reach.
    pub fn next_key(&mut self) -> [u8; KEY_LEN] {
        let mut key = [0u8; KEY_LEN];
        for chunk in key.chunks_mut(8) {
            let mut bits = self.next_u64();
            for b in chunk {
                *b = ALPHABET[(bits & 63) as usize];
                bits >>= 6;
            }
        }
        key
    }

    /// A uniform index below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// The key as the `&str` idemlog takes (the alphabet is ASCII).
pub fn key_str(key: &[u8; KEY_LEN]) -> &str {
    std::str::from_utf8(key).expect("benchmark keys are ASCII")
}

/// `target/` of this build, found from the running executable
/// (`target/release/deps/<bench>`), so scratch files land on the same disk
/// as the build and never on a tmpfs `/tmp`.
pub fn target_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.ancestors().nth(3) {
            if target.join("release").is_dir() || target.join("debug").is_dir() {
                return target.to_path_buf();
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// `target/idemlog-bench`, created.
pub fn bench_root() -> io::Result<PathBuf> {
    let dir = target_dir().join("idemlog-bench");
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A fresh scratch directory under [`bench_root`], removed on drop.
pub fn scratch_dir(prefix: &str) -> io::Result<tempfile::TempDir> {
    let parent = bench_root()?.join("scratch");
    fs::create_dir_all(&parent)?;
    tempfile::Builder::new().prefix(prefix).tempdir_in(parent)
}

/// The filesystem holding `path`: `(type, device, mount point)` from the
/// longest matching mount in /proc/mounts.
pub fn filesystem_of(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = fs::read_to_string("/proc/mounts") else {
        return "unknown (no /proc/mounts)".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (dev, mount, fstype) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mount).then(|| {
                (
                    mount.len(),
                    format!("{fstype} on {dev} (mounted at {mount})"),
                )
            })
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, desc)| desc)
}

/// Resident set size of this process in bytes (VmRSS from
/// /proc/self/status, which is page-size independent), if readable.
pub fn rss_bytes() -> Option<u64> {
    proc_kib_field("/proc/self/status", "VmRSS:")
}

/// Memory the kernel estimates it can give new allocations without
/// swapping (MemAvailable from /proc/meminfo), if readable.
pub fn available_memory_bytes() -> Option<u64> {
    proc_kib_field("/proc/meminfo", "MemAvailable:")
}

/// The bytes of a `NAME: N kB` line of a /proc file, if readable.
pub fn proc_kib_field(file: &str, name: &str) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes allocated on disk under `dir` (st_blocks × 512, recursively): what
/// the data really occupies, preallocation included.
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += disk_bytes(&entry.path());
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}

/// `"<n> cores, <cpu model>"` from the running machine.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

/// Formats an integer with thousands separators.
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// CPU time (user + system) the calling thread has used, from
/// /proc/thread-self/stat, in seconds. Resolution is one clock tick
/// (usually 10 ms), fine over runs of a second or more.
pub fn thread_cpu_secs() -> Option<f64> {
    cpu_secs_of("/proc/thread-self/stat")
}

/// CPU time (user + system) of the whole process so far, in seconds: for
/// rows whose work runs on threads the bench does not own (an async
/// runtime's workers, the store's writer thread).
pub fn process_cpu_secs() -> Option<f64> {
    cpu_secs_of("/proc/self/stat")
}

fn cpu_secs_of(stat_path: &str) -> Option<f64> {
    static TICKS_PER_SEC: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS_PER_SEC.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = fs::read_to_string(stat_path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / ticks)
}
