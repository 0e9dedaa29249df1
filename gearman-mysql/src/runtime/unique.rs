//! Unique keys for pipelined jobs given none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// A new unique key for a pipelined job given none: 36 characters in the
/// shape of a version-4 UUID. 74 bits are random per process, the last 48
/// bits are a bijective scramble of a per-process counter, so keys never
/// repeat within one process (gearmand would coalesce two jobs with the
/// same key) and practically never across processes.
pub fn generate_unique() -> String {
    static SEED: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (a, b) = *SEED.get_or_init(random_seed);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    const MASK48: u64 = (1 << 48) - 1;
    // Odd multiplier and xor: a bijection on 48 bits.
    let node = (n.wrapping_mul(0x9E37_79B9_7F4B) ^ b) & MASK48;
    let time_low = (a >> 32) as u32;
    let time_mid = (a >> 16) as u16;
    let version = 0x4000 | ((a as u16) & 0x0FFF);
    let variant = 0x8000 | (((b >> 48) as u16) & 0x3FFF);
    format!("{time_low:08x}-{time_mid:04x}-{version:04x}-{variant:04x}-{node:012x}")
}

fn random_seed() -> (u64, u64) {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Read;
    let mut buf = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if from_os {
        let a = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(buf[8..].try_into().expect("8 bytes"));
        return (a, b);
    }
    // Fallback: std's per-process random hash keys, time and pid.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    (a, h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_unique_keys_are_uuid_shaped_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let k = generate_unique();
            assert_eq!(k.len(), 36, "{k}");
            assert_eq!(k.as_bytes()[14], b'4', "{k}");
            assert_eq!(k.matches('-').count(), 4, "{k}");
            assert!(seen.insert(k));
        }
    }
}
