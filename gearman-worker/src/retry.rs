//! Retries with back-off for failed jobs (per function: `retries`,
//! `retry_backoff_ms`, `retry_backoff_max_ms`).
//!
//! gearmand never runs a failed background job again. For a function with
//! `retries = N > 0`, a failed attempt (non-zero exit, timeout, SQL error,
//! panic) that is not the (N+1)th is **resubmitted to the job server as a
//! scheduled background job** (SUBMIT_JOB_EPOCH) due after the back-off, and
//! only then is the failure reported for the current attempt. The pending
//! retry so lives in the job server, not in this process: a worker killed
//! (even with SIGKILL) after scheduling loses nothing; any worker of the
//! function runs it when it is due.
//!
//! The retry job's workload is an envelope ([`Envelope`]): a magic prefix,
//! the attempt number, the time of the first failure, the original unique
//! key, then the original workload byte for byte. A worker unwraps it before
//! the handler runs, so handlers see the original workload; `exec` commands
//! get the attempt number in `GEARMAN_ATTEMPT` (1 for a first attempt).
//! The retry's unique key is `retry-<attempt>-<16 hex digits>` (a hash of
//! the job handle, the original unique key and the time): it must differ
//! from the running job's key, which gearmand would otherwise coalesce with.
//!
//! Back-off before attempt `k + 1` (after `k` failures): `min(backoff_max,
//! backoff * 2^(k-1))`, of which a random half is taken off (jitter: the
//! delay is uniform in `[d/2, d]`). gearmand's scheduled jobs have whole
//! seconds, so the delay is rounded up to the next second, and gearmand
//! 1.1.20 wakes no sleeping worker for them: an idle worker asks again every
//! 5 s, so a retry runs up to 5 s after it is due.
//!
//! When the retry cannot be scheduled (job server down, or one without
//! scheduled jobs: Perl's Gearman::Server answers ERROR, Python's gear drops
//! the packet and the submission times out), the failure is logged at error
//! level with the reason and the job is not retried (counted `failed`; it
//! goes to the dead-letter table if the function has one).
//!
//! After the last attempt a function with `dead_letter` writes the job to
//! its dead-letter table ([`crate::deadletter`]).
//!
//! Foreground callers: the protocol does not say whether a job is
//! foreground or background, so a foreground call of a function with
//! retries gets the **first failure at once** (as without retries), and the
//! job is still retried in the background; the caller does not see the later
//! attempts.

use gearman_core::{Client, Job, ServerList};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default first back-off: 1 s.
pub const DEFAULT_BACKOFF_MS: u64 = 1_000;
/// Default longest back-off: 5 minutes.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 300_000;
/// Most retries accepted per function.
pub const MAX_RETRIES: u32 = 100;
/// The environment variable that tells an `exec` command its attempt.
pub const ATTEMPT_ENV: &str = "GEARMAN_ATTEMPT";
/// First bytes of a retry envelope.
pub const MAGIC: &[u8] = b"\0gearman-worker-retry/1\0";

/// A function's retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first (0: never retried).
    pub retries: u32,
    /// Back-off before the first retry.
    pub backoff: Duration,
    /// Longest back-off.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            retries: 0,
            backoff: Duration::from_millis(DEFAULT_BACKOFF_MS),
            backoff_max: Duration::from_millis(DEFAULT_BACKOFF_MAX_MS),
        }
    }
}

impl RetryPolicy {
    /// The back-off before the attempt after `failed_attempt` (from 1),
    /// before jitter.
    pub fn base_delay(&self, failed_attempt: u32) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(30);
        self.backoff
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max)
    }

    /// The back-off with jitter: uniform in `[d/2, d]`.
    pub fn delay(&self, failed_attempt: u32) -> Duration {
        let d = self.base_delay(failed_attempt);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// A retried job as carried in its workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The attempt this job is (2 for the first retry).
    pub attempt: u32,
    /// Unix time of the first failure.
    pub first_failure: i64,
    /// The original job's unique key.
    pub unique: Vec<u8>,
    /// The original workload.
    pub workload: Vec<u8>,
}

impl Envelope {
    /// The wire form: `MAGIC attempt \0 first_failure \0 unique_len \0 unique workload`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MAGIC.len() + 40 + self.unique.len() + self.workload.len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(
            format!(
                "{}\0{}\0{}\0",
                self.attempt,
                self.first_failure,
                self.unique.len()
            )
            .as_bytes(),
        );
        v.extend_from_slice(&self.unique);
        v.extend_from_slice(&self.workload);
        v
    }

    /// `None` when `bytes` is not an envelope (a first attempt).
    ///
    /// # Errors
    /// It starts like one but is malformed (named).
    pub fn decode(bytes: &[u8]) -> Result<Option<Envelope>, String> {
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return Ok(None);
        };
        let mut fields = rest.splitn(4, |b| *b == 0);
        let mut num = |what: &str| -> Result<i64, String> {
            fields
                .next()
                .and_then(|f| std::str::from_utf8(f).ok())
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| format!("malformed retry envelope: bad {what}"))
        };
        let attempt = num("attempt")?;
        let first_failure = num("first failure time")?;
        let ulen = num("unique key length")?;
        let tail = fields.next().unwrap_or_default();
        let attempt = u32::try_from(attempt)
            .ok()
            .filter(|a| *a >= 2)
            .ok_or("malformed retry envelope: bad attempt")?;
        let ulen = usize::try_from(ulen)
            .ok()
            .filter(|l| *l <= tail.len())
            .ok_or("malformed retry envelope: bad unique key length")?;
        Ok(Some(Envelope {
            attempt,
            first_failure,
            unique: tail[..ulen].to_vec(),
            workload: tail[ulen..].to_vec(),
        }))
    }
}

thread_local! {
    static ATTEMPT: std::cell::Cell<u32> = const { std::cell::Cell::new(1) };
}

/// The attempt number of the job this thread runs (1 when not retried).
pub fn current_attempt() -> u32 {
    ATTEMPT.with(|a| a.get())
}

/// Sets [`current_attempt`] for the job about to run on this thread.
pub fn set_current_attempt(n: u32) {
    ATTEMPT.with(|a| a.set(n));
}

/// The unique key of the retry: `retry-<attempt>-<16 hex digits>`.
fn retry_unique(handle: &str, unique: &[u8], attempt: u32) -> String {
    // FNV-1a over the handle, the original key and the time: differs from
    // the running job's key and from other jobs' retries.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        ^ u128::from(seq) << 64;
    for b in handle
        .as_bytes()
        .iter()
        .chain(b"\0")
        .chain(unique)
        .chain(&nanos.to_le_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("retry-{attempt}-{h:016x}")
}

/// Schedules the attempt after `failed` as a background job due after the
/// policy's back-off; returns the delay. Bounded: a 2 s connect and a 5 s
/// submission per server.
///
/// # Errors
/// The job server did not confirm the job (down, refused, no scheduled jobs).
pub fn schedule(
    servers: &ServerList,
    function: &str,
    handle: &str,
    policy: &RetryPolicy,
    failed: &Envelope,
) -> Result<Duration, String> {
    let delay = policy.delay(failed.attempt);
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    let due = crate::logging::unix_now() + secs.max(1) as i64;
    let next = Envelope {
        attempt: failed.attempt + 1,
        first_failure: failed.first_failure,
        unique: failed.unique.clone(),
        workload: failed.workload.clone(),
    };
    let job = Job::new(function, next.encode())
        .with_unique(retry_unique(handle, &failed.unique, next.attempt))
        .with_epoch(due);
    let mut client = Client::new(servers.clone(), crate::tls::client_options());
    client
        .submit_background(&job)
        .map(|_| delay)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_binary_data_and_rejects_damage() {
        let e = Envelope {
            attempt: 3,
            first_failure: 1_795_942_026,
            unique: b"k\0\xff".to_vec(),
            workload: b"\0a\0b\xfe".to_vec(),
        };
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), Some(e.clone()));
        assert_eq!(Envelope::decode(b"plain workload").unwrap(), None);
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(b"x\x001\x000\x00");
        assert!(Envelope::decode(&bad).unwrap_err().contains("bad attempt"));
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(b"2\x001\x0099\x00short");
        assert!(Envelope::decode(&bad)
            .unwrap_err()
            .contains("unique key length"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let p = RetryPolicy {
            retries: 5,
            backoff: Duration::from_millis(1000),
            backoff_max: Duration::from_millis(5000),
        };
        let base: Vec<u64> = (1..=5)
            .map(|k| p.base_delay(k).as_millis() as u64)
            .collect();
        assert_eq!(base, [1000, 2000, 4000, 5000, 5000]);
        for k in 1..=5 {
            for _ in 0..100 {
                let d = p.delay(k);
                assert!(d <= p.base_delay(k) && d >= p.base_delay(k) / 2, "{d:?}");
            }
        }
        assert_eq!(
            RetryPolicy::default().base_delay(u32::MAX),
            Duration::from_millis(DEFAULT_BACKOFF_MAX_MS)
        );
    }

    #[test]
    fn retry_keys_fit_gearman_and_differ() {
        let a = retry_unique("H:x:1", &[b'u'; 63], 2);
        let b = retry_unique("H:x:1", &[b'u'; 63], 2);
        assert!(a.len() <= 63 && a.starts_with("retry-2-"), "{a}");
        assert_ne!(a, b);
    }
}
