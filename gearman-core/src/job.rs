//! Jobs, priorities, handles, status and events: the client's vocabulary.

use crate::error::{Error, Result};
use crate::proto::PacketType;
use crate::servers::ServerAddr;
use std::fmt;

/// Longest unique key we send. gearmand accepts 64 bytes but mishandles
/// them (protocol.md 4.1): 63 is the real limit.
pub const MAX_UNIQUE: usize = 63;

/// Longest function name we send (libgearman's limit; protocol.md 9).
pub const MAX_FUNCTION: usize = 512;

/// Job priority. In gearmand 1.1.20 priority orders jobs within one
/// function's queue only (protocol.md 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    /// Served before normal and low jobs of the same function.
    High,
    /// The default.
    #[default]
    Normal,
    /// Served after high and normal jobs of the same function.
    Low,
}

impl Priority {
    /// Parses `high`, `normal` or `low` (any case).
    pub fn parse(s: &str) -> Result<Priority> {
        match s.to_ascii_lowercase().as_str() {
            "high" => Ok(Priority::High),
            "normal" | "" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            _ => Err(Error::invalid_argument(format!(
                "priority must be high, normal or low, not {s:?}"
            ))),
        }
    }

    /// `high`, `normal` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub(crate) fn submit_type(self, background: bool) -> PacketType {
        match (self, background) {
            (Priority::High, false) => PacketType::SubmitJobHigh,
            (Priority::Normal, false) => PacketType::SubmitJob,
            (Priority::Low, false) => PacketType::SubmitJobLow,
            (Priority::High, true) => PacketType::SubmitJobHighBg,
            (Priority::Normal, true) => PacketType::SubmitJobBg,
            (Priority::Low, true) => PacketType::SubmitJobLowBg,
        }
    }
}

/// Checks a function name before it is sent (SUBMIT_JOB*, CAN_DO) or
/// configured: 1 to 512 bytes ([`MAX_FUNCTION`]), none of them a control
/// character or whitespace (bytes 0x00 to 0x20 and 0x7f). gearmand's text
/// admin protocol prints names one per line and separates fields by tabs
/// and spaces, so a name with a newline forges lines in every admin
/// client's `status` and `workers` answers (issue 10).
///
/// # Errors
/// [`crate::ErrorKind::InvalidArgument`], naming the function (escaped)
/// and the first offending byte and its position.
pub fn validate_function_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid_argument("function name is empty"));
    }
    if name.len() > MAX_FUNCTION {
        return Err(Error::invalid_argument(format!(
            "function name is {} bytes; at most {MAX_FUNCTION} are allowed",
            name.len()
        )));
    }
    if let Some(i) = name.iter().position(|&b| b <= 0x20 || b == 0x7f) {
        let what = match name[i] {
            0 => "a NUL byte".to_string(),
            b' ' => "a space".to_string(),
            b'\t' => "a tab".to_string(),
            b'\n' => "a newline".to_string(),
            b'\r' => "a carriage return".to_string(),
            b => format!("the control character 0x{b:02x}"),
        };
        return Err(Error::invalid_argument(format!(
            "function name {:?} contains {what} at byte {i}; control characters and whitespace are not allowed",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

/// A job to submit: function name, workload, and optional unique key,
/// priority and run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Function name: 1 to 512 bytes, no control character or whitespace
    /// (see [`validate_function_name`]).
    pub function: Vec<u8>,
    /// Workload: any bytes, any length the server accepts.
    pub workload: Vec<u8>,
    /// Unique key for coalescing: at most 63 bytes, no NUL. `None` or empty
    /// means never coalesce; `-` means coalesce on the workload.
    pub unique: Option<Vec<u8>>,
    /// Priority (normal by default).
    pub priority: Priority,
    /// Run no earlier than this Unix time in seconds (SUBMIT_JOB_EPOCH;
    /// background jobs only, always normal priority).
    pub epoch: Option<i64>,
}

impl Job {
    /// A normal-priority job without unique key.
    pub fn new(function: impl Into<Vec<u8>>, workload: impl Into<Vec<u8>>) -> Job {
        Job {
            function: function.into(),
            workload: workload.into(),
            unique: None,
            priority: Priority::Normal,
            epoch: None,
        }
    }

    /// Sets the unique key.
    pub fn with_unique(mut self, unique: impl Into<Vec<u8>>) -> Job {
        self.unique = Some(unique.into());
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: Priority) -> Job {
        self.priority = priority;
        self
    }

    /// Schedules the job for a Unix time (seconds).
    pub fn with_epoch(mut self, epoch: i64) -> Job {
        self.epoch = Some(epoch);
        self
    }

    /// The one validator of a job made from a database call's arguments:
    /// `function` (must pass [`validate_function_name`]), `workload` (any
    /// bytes) and `unique` (`None` or empty means no key; at most 63 bytes
    /// and no NUL). Every error is [`crate::ErrorKind::InvalidArgument`]
    /// and its message starts with the argument it concerns (`function
    /// name ...`, `unique key ...`), the same text in every database.
    ///
    /// # Errors
    /// - `function name is empty`;
    /// - `function name is N bytes; at most 512 are allowed`;
    /// - `function name "..." contains a newline at byte I; control
    ///   characters and whitespace are not allowed` (or a space, a tab, ...);
    /// - `unique key is N bytes; at most 63 are allowed (gearmand
    ///   mishandles longer keys)`;
    /// - `unique key contains a NUL byte`.
    pub fn from_args(
        function: &[u8],
        workload: impl Into<Vec<u8>>,
        unique: Option<&[u8]>,
    ) -> Result<Job> {
        let mut job = Job::new(function, workload);
        if let Some(u) = unique.filter(|u| !u.is_empty()) {
            job.unique = Some(u.to_vec());
        }
        job.validate()?;
        Ok(job)
    }

    /// Checks what the server would mishandle, before anything is sent:
    /// a function name refused by [`validate_function_name`], NUL bytes in
    /// the unique key, a unique key over 63 bytes.
    pub fn validate(&self) -> Result<()> {
        validate_function_name(&self.function)?;
        if let Some(u) = &self.unique {
            if u.len() > MAX_UNIQUE {
                return Err(Error::invalid_argument(format!(
                    "unique key is {} bytes; at most {MAX_UNIQUE} are allowed (gearmand mishandles longer keys)",
                    u.len()
                )));
            }
            if u.contains(&0) {
                return Err(Error::invalid_argument("unique key contains a NUL byte"));
            }
        }
        Ok(())
    }

    /// The unique key, empty if none.
    pub fn unique_bytes(&self) -> &[u8] {
        self.unique.as_deref().unwrap_or(&[])
    }

    /// Bytes of the function name, unique key and workload: what a
    /// [`crate::Dispatcher`]'s queue counts against its byte limit.
    pub fn byte_len(&self) -> usize {
        self.function.len() + self.workload.len() + self.unique_bytes().len()
    }

    /// The function name as (lossy) text, for messages.
    pub fn function_name(&self) -> String {
        String::from_utf8_lossy(&self.function).into_owned()
    }
}

/// A new unique key: a random (version 4) UUID in its 36-character
/// hyphenated form, as libgearman makes when a caller gives none.
///
/// The 122 random bits come from a per-thread generator seeded with 128
/// bits of the operating system's randomness (`getrandom`, through the
/// `uuid` crate) the first time a thread of a process asks, and again after
/// a `fork` (the process id is checked): each key is SipHash of the seed and
/// a counter, so keys of one thread never repeat and keys of different
/// threads or processes collide with probability about 2^-122 per pair. One
/// system call per thread instead of one per key (a database trigger makes
/// a key per row).
pub fn new_unique_key() -> String {
    new_unique_key_in(std::process::id())
}

/// [`new_unique_key`] for a caller that knows its process id without a
/// system call (`getpid` is one per key otherwise): e.g. PostgreSQL's
/// `MyProcPid`, set in each backend after the fork. `pid` must be the
/// calling process's id: a parent's id in a forked child would make the
/// child repeat the parent's keys.
pub fn new_unique_key_in(pid: u32) -> String {
    use std::cell::Cell;
    use std::hash::{Hash, Hasher};
    thread_local! {
        /// (process id, seed, counter).
        static GEN: Cell<Option<(u32, u128, u64)>> = const { Cell::new(None) };
    }
    let (seed, n) = GEN.with(|g| {
        let (seed, n) = match g.get() {
            Some((p, seed, n)) if p == pid => (seed, n + 1),
            _ => (uuid::Uuid::new_v4().as_u128(), 0),
        };
        g.set(Some((pid, seed, n)));
        (seed, n)
    });
    let half = |k: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (seed, n, k).hash(&mut h);
        h.finish()
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&half(0).to_le_bytes());
    bytes[8..].copy_from_slice(&half(1).to_le_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// A job handle and the server that issued it (handles mean nothing to
/// other servers; protocol.md 4.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobHandle {
    /// The server that created the job.
    pub server: ServerAddr,
    /// The handle, e.g. `H:host:42` (at most 63 bytes).
    pub handle: String,
}

impl fmt::Display for JobHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.handle)
    }
}

/// Status of a job by handle (STATUS_RES). A finished job looks exactly
/// like an unknown one: `known == false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobStatus {
    /// The server knows the job (queued or running).
    pub known: bool,
    /// A worker holds the job now.
    pub running: bool,
    /// Last WORK_STATUS numerator (0 if none).
    pub numerator: u64,
    /// Last WORK_STATUS denominator (0 if none).
    pub denominator: u64,
}

/// Status of a job by unique key (STATUS_RES_UNIQUE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UniqueStatus {
    /// The server knows a job with this unique key.
    pub known: bool,
    /// A worker holds it now.
    pub running: bool,
    /// Last WORK_STATUS numerator.
    pub numerator: u64,
    /// Last WORK_STATUS denominator.
    pub denominator: u64,
    /// Foreground clients waiting on the job, as gearmand counts them
    /// (1.1.20 counts them, although protocol.md says it always reports 0;
    /// pinned in tests/server_behaviour.rs, `p04_status_res_unique_...`).
    pub waiting: u64,
}

/// A status answer that says whether the server knows the job.
pub trait Known {
    /// The server knows the job (queued or running).
    fn known(&self) -> bool;
}

impl Known for JobStatus {
    fn known(&self) -> bool {
        self.known
    }
}

impl Known for UniqueStatus {
    fn known(&self) -> bool {
        self.known
    }
}

/// Asks `ask` of each place in turn (servers, or server lists) and returns
/// the first answer that knows the job; else the first answer; else the
/// first error; with no place at all, an unknown status. For a handle that
/// did not come from this client, or a unique key whose function's server
/// list is not known, where any of several servers may hold the job.
///
/// # Errors
/// Every place failed; the first error.
pub fn first_known<P, T: Known + Default>(
    places: impl IntoIterator<Item = P>,
    mut ask: impl FnMut(P) -> crate::Result<T>,
) -> crate::Result<T> {
    let mut first = None;
    let mut first_err = None;
    for p in places {
        match ask(p) {
            Ok(t) if t.known() => return Ok(t),
            Ok(t) => {
                first.get_or_insert(t);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match (first, first_err) {
        (Some(t), _) => Ok(t),
        (None, Some(e)) => Err(e),
        (None, None) => Ok(T::default()),
    }
}

/// What a foreground job reports before its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A WORK_DATA chunk (also appended to the result).
    Data(Vec<u8>),
    /// A WORK_WARNING message.
    Warning(Vec<u8>),
    /// A WORK_STATUS progress report.
    Status {
        /// Work done.
        numerator: u64,
        /// Work in all.
        denominator: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ErrorKind};

    fn st(known: bool, numerator: u64) -> JobStatus {
        JobStatus {
            known,
            numerator,
            ..JobStatus::default()
        }
    }

    /// Issue 10 item 10: control characters and whitespace are refused by
    /// the one validator, which `Job::validate` uses.
    #[test]
    fn function_names_without_control_characters_or_whitespace() {
        for bad in [
            &b""[..],
            b"nl\n.\nx",
            b"a b",
            b"tab\there",
            b"cr\r",
            b"nul\0",
            b"\x01",
            b"del\x7f",
            b" lead",
            b"trail ",
        ] {
            let e = validate_function_name(bad).unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::InvalidArgument, "{bad:?}");
            let e = Job::new(bad, "x").validate().unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::InvalidArgument, "{bad:?}");
        }
        let e = validate_function_name(b"nl\n.\nx").unwrap_err().to_string();
        assert!(e.contains("\"nl\\n.\\nx\"") && e.contains("newline"), "{e}");
        assert!(validate_function_name(&[b'a'; MAX_FUNCTION + 1]).is_err());
        for good in [
            &b"f"[..],
            b"send_tweet",
            b"a.b-c:d/e",
            "caf\u{e9}".as_bytes(),
            &[b'a'; MAX_FUNCTION],
        ] {
            validate_function_name(good).unwrap();
            Job::new(good, "x").validate().unwrap();
        }
    }

    #[test]
    fn first_known_prefers_a_known_answer_then_any_answer_then_an_error() {
        let down = || Error::new(ErrorKind::ConnectFailed, "down");
        let mut asked = Vec::new();
        let r = first_known([1, 2, 3], |i| {
            asked.push(i);
            match i {
                1 => Err(down()),
                2 => Ok(st(false, 2)),
                _ => Ok(st(true, 3)),
            }
        });
        assert_eq!((r.unwrap(), asked), (st(true, 3), vec![1, 2, 3]));
        // Stops at the first known answer.
        let mut asked = 0;
        let r = first_known([1, 2], |i| {
            asked += 1;
            Ok(st(true, i))
        });
        assert_eq!((r.unwrap(), asked), (st(true, 1), 1));
        // No known answer: the first answer, even after an error.
        let r = first_known([1, 2, 3], |i| {
            if i == 1 {
                Err(down())
            } else {
                Ok(st(false, i))
            }
        });
        assert_eq!(r.unwrap(), st(false, 2));
        // Only errors: the first one.
        let r: crate::Result<JobStatus> = first_known([1, 2], |i| {
            Err(Error::new(ErrorKind::ConnectFailed, format!("down {i}")))
        });
        assert!(r.unwrap_err().to_string().contains("down 1"));
        // Nowhere to ask: unknown.
        let r = first_known(Vec::<u8>::new(), |_| Ok(st(true, 9)));
        assert_eq!(r.unwrap(), JobStatus::default());
    }
}
