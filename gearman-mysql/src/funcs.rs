//! What each SQL function does, in safe Rust. The C entry points in
//! `ffi.rs` only translate pointers to and from these types.

use crate::abi::{
    Arg, ItemResult, DECIMAL_RESULT, INT_RESULT, REAL_RESULT, ROW_RESULT, STRING_RESULT,
};
use crate::config::SUM_RESULT_MAX;
use crate::runtime::{
    generate_unique, last_error, note_deferred, runtime, set_last_error, Runtime,
};
use crate::session::{note_submitter, take_submitter};
use gearman_core::{Job, Priority, ServerList};
use std::time::Instant;

/// Longest unique key gearmand accepts (it silently cuts longer ones; we refuse).
pub const MAX_UNIQUE: usize = 63;

/// Which SQL function a call-site is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `gman_do`, `gman_do_high`, `gman_do_low`.
    Do(Priority),
    /// `gman_do_background`, `gman_do_high_background`, `gman_do_low_background`.
    Background(Priority),
    /// `gman_do_epoch(function, workload, unix_seconds [, unique])`.
    Epoch,
    /// `gman_sum(function, workload)` (aggregate).
    Sum,
    /// `gman_servers_set(servers [, function])`.
    ServersSet,
    /// `gman_job_status(handle_or_unique)`: a handle is asked of every
    /// server, a unique key of the default list, then each function's own
    /// list.
    JobStatus,
    /// `gman_server_status()`.
    ServerStatus,
    /// `gman_last_error()`.
    LastError,
}

impl Kind {
    /// The usage text shown in argument errors.
    pub fn usage(self, name: &str) -> String {
        let a = match self {
            Kind::Do(_) | Kind::Background(_) => "(function, workload [, unique])",
            Kind::Epoch => "(function, workload, unix_seconds [, unique])",
            Kind::Sum => "(function, workload)",
            Kind::ServersSet => "(servers [, function])",
            Kind::JobStatus => "(handle_or_unique)",
            Kind::ServerStatus | Kind::LastError => "()",
        };
        format!("{name}{a}")
    }

    fn arg_range(self) -> (usize, usize) {
        match self {
            Kind::Do(_) | Kind::Background(_) => (2, 3),
            Kind::Epoch => (3, 4),
            Kind::Sum => (2, 2),
            Kind::ServersSet => (1, 2),
            Kind::JobStatus => (1, 1),
            Kind::ServerStatus | Kind::LastError => (0, 0),
        }
    }
}

/// Checks the argument count and types of a call-site (`_init`) and returns
/// the types the server must convert each argument to.
pub fn check_args(name: &str, kind: Kind, types: &[ItemResult]) -> Result<Vec<ItemResult>, String> {
    let (min, max) = kind.arg_range();
    let usage = kind.usage(name);
    if types.len() < min || types.len() > max {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} or {max}")
        };
        return Err(format!(
            "{usage} takes {want} argument{}, got {}",
            if max == 1 { "" } else { "s" },
            types.len()
        ));
    }
    let mut out = Vec::with_capacity(types.len());
    for (i, &t) in types.iter().enumerate() {
        if t == ROW_RESULT {
            return Err(format!(
                "{usage}: argument {} is a row value, not a scalar",
                i + 1
            ));
        }
        if kind == Kind::Epoch && i == 2 {
            // Integers stay integers; decimals and doubles are rounded by the
            // server; strings are parsed strictly at call time.
            out.push(match t {
                INT_RESULT | REAL_RESULT | DECIMAL_RESULT => INT_RESULT,
                _ => STRING_RESULT,
            });
        } else {
            // Everything else is text: numbers and dates become the text the
            // server would display for them.
            out.push(STRING_RESULT);
        }
    }
    Ok(out)
}

/// Per call-site state, owned by the server through `UDF_INIT.ptr`.
#[derive(Debug)]
pub struct Call {
    /// The SQL function name.
    pub name: &'static str,
    /// Which function.
    pub kind: Kind,
    /// Rows processed.
    pub calls: u64,
    /// Rows that failed.
    pub failures: u64,
    /// The last failure of this call-site.
    pub last_failure: Option<String>,
    /// The result buffer returned to the server (valid until the next row).
    pub result: Vec<u8>,
    /// gman_sum: jobs of the current group.
    pub sum_jobs: Vec<Job>,
    /// gman_sum: first error of the current group.
    pub sum_error: Option<String>,
    /// Pipelined background jobs written by this call-site (their
    /// confirmations are collected later).
    pub pipelined: u64,
}

impl Call {
    /// New state for one call-site.
    pub fn new(name: &'static str, kind: Kind) -> Call {
        Call {
            name,
            kind,
            calls: 0,
            failures: 0,
            last_failure: None,
            result: Vec::new(),
            sum_jobs: Vec::new(),
            sum_error: None,
            pipelined: 0,
        }
    }

    /// Records a failure: kept for `gman_last_error()` and the statement's log line.
    pub fn fail(&mut self, msg: String) {
        self.failures += 1;
        set_last_error(&msg);
        self.last_failure = Some(msg);
    }

    /// The one error-log line for this call-site, if any row failed.
    pub fn summary(&self) -> Option<String> {
        let last = self.last_failure.as_ref()?;
        if self.calls <= 1 && self.failures <= 1 {
            return Some(last.clone());
        }
        let prefix = format!("{}: ", self.name);
        let text = last.strip_prefix(&prefix).unwrap_or(last);
        Some(format!(
            "{}: {} of {} calls failed in this statement; last error: {text}",
            self.name, self.failures, self.calls
        ))
    }

    /// One row of a string function. `Ok(None)` is SQL NULL without error.
    pub fn call_string(&mut self, args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        self.calls += 1;
        if self.kind == Kind::LastError {
            return Ok(last_error().map(String::into_bytes));
        }
        let rt = runtime().map_err(|e| format!("{}: {e}", self.name))?;
        let r = match self.kind {
            Kind::Do(p) => self.do_foreground(rt, args, p).map(Some),
            Kind::Background(p) => self.do_background(rt, args, p, None).map(Some),
            Kind::Epoch => self.do_epoch(rt, args).map(Some),
            Kind::ServersSet => self.servers_set(rt, args),
            Kind::JobStatus => self.job_status(rt, args).map(Some),
            Kind::ServerStatus => self.server_status(rt).map(Some),
            Kind::Sum | Kind::LastError => Err("not a string function".into()),
        };
        r.map_err(|e| format!("{}: {e}", self.name))
    }

    fn job(&self, args: &[Arg<'_>], unique_at: usize) -> Result<Job, String> {
        let function = match args.first().and_then(Arg::to_bytes) {
            None => return Err("function name is NULL".into()),
            Some(f) if f.is_empty() => return Err("function name is empty".into()),
            Some(f) => f,
        };
        if function.contains(&0) {
            return Err("function name contains a NUL byte".into());
        }
        let workload = args.get(1).and_then(Arg::to_bytes).unwrap_or_default();
        let mut job = Job::new(function, workload);
        if let Some(u) = args.get(unique_at).and_then(Arg::to_bytes) {
            if u.len() > MAX_UNIQUE {
                return Err(format!(
                    "unique key is {} bytes, the limit is {MAX_UNIQUE}",
                    u.len()
                ));
            }
            if u.contains(&0) {
                return Err("unique key contains a NUL byte".into());
            }
            if !u.is_empty() {
                job = job.with_unique(u);
            }
        }
        job.validate().map_err(|e| e.to_string())?;
        Ok(job)
    }

    fn do_foreground(
        &mut self,
        rt: &Runtime,
        args: &[Arg<'_>],
        p: Priority,
    ) -> Result<Vec<u8>, String> {
        let job = self.job(args, 2)?.with_priority(p);
        let servers = rt.servers_for(&job.function);
        // One bound for the whole call: connecting, failing over, waiting.
        let deadline = rt.options().foreground_timeout.map(|t| Instant::now() + t);
        rt.with_client_until(&servers, deadline, |c| c.run(&job))
            .map_err(|e| describe(&job, &e))
    }

    fn do_background(
        &mut self,
        rt: &Runtime,
        args: &[Arg<'_>],
        p: Priority,
        epoch: Option<i64>,
    ) -> Result<Vec<u8>, String> {
        let unique_at = if epoch.is_some() { 3 } else { 2 };
        let mut job = self.job(args, unique_at)?.with_priority(p);
        if let Some(t) = epoch {
            job = job.with_epoch(t);
        }
        let servers = rt.servers_for(&job.function);
        if rt.pipelined() {
            if job.unique.as_deref().is_none_or(<[u8]>::is_empty) {
                job = job.with_unique(generate_unique());
            }
            let key = job.unique_bytes().to_vec();
            // Noted before the write: its confirmation may be collected
            // (by any thread) as soon as it is written.
            let fname = String::from_utf8_lossy(&job.function).into_owned();
            note_submitter(fname.as_bytes(), &key);
            rt.with_client(&servers, |c| submit_pipelined(c, &job))
                .map_err(|e| {
                    take_submitter(fname.as_bytes(), &key);
                    describe(&job, &e)
                })?;
            self.pipelined += 1;
            return Ok(key);
        }
        rt.with_client(&servers, |c| c.submit_background(&job))
            .map(|h| h.handle.into_bytes())
            .map_err(|e| describe(&job, &e))
    }

    fn do_epoch(&mut self, rt: &Runtime, args: &[Arg<'_>]) -> Result<Vec<u8>, String> {
        let t = match args.get(2) {
            Some(Arg::Int(i)) => *i,
            Some(Arg::Real(r)) if r.fract() == 0.0 && r.abs() < 9.0e15 => *r as i64,
            Some(Arg::Bytes(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    format!(
                        "unix_seconds '{}' is not an integer",
                        String::from_utf8_lossy(b)
                    )
                })?,
            _ => return Err("unix_seconds is NULL".into()),
        };
        if t < 0 {
            return Err(format!("unix_seconds {t} is negative"));
        }
        self.do_background(rt, args, Priority::Normal, Some(t))
    }

    /// Returns its first argument as given (as gearman-mysql-udf did:
    /// `'127.0.0.1'`, not `'127.0.0.1:4730'`); NULL when that argument is
    /// NULL (the form that clears a function's own list).
    fn servers_set(&mut self, rt: &Runtime, args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        if !rt.config.allow_servers_set {
            return Err(servers_set_locked(rt));
        }
        let function = args.get(1).and_then(Arg::to_bytes);
        if let Some(f) = &function {
            gearman_core::validate_function_name(f).map_err(|e| e.message().to_string())?;
        }
        let given = args.first().and_then(Arg::to_bytes);
        let list = match &given {
            Some(s) if !s.is_empty() => {
                let s =
                    std::str::from_utf8(s).map_err(|_| "servers is not valid UTF-8".to_string())?;
                Some(ServerList::parse(s).map_err(|e| format!("servers '{s}': {e}"))?)
            }
            _ if function.is_some() => None,
            _ => return Err("servers is NULL or empty".into()),
        };
        rt.set_servers(function.as_deref(), list);
        Ok(given)
    }

    fn job_status(&mut self, rt: &Runtime, args: &[Arg<'_>]) -> Result<Vec<u8>, String> {
        let key = match args.first().and_then(Arg::to_bytes) {
            Some(k) if !k.is_empty() => k,
            _ => return Err("handle is NULL or empty".into()),
        };
        // One bound for the whole walk over servers and lists.
        let deadline = Some(Instant::now() + rt.options().io_timeout);
        let json = if key.starts_with(b"H:") {
            let handle =
                String::from_utf8(key).map_err(|_| "handle is not valid UTF-8".to_string())?;
            let s = gearman_core::first_known(rt.all_servers(), |addr| {
                let list = ServerList::single(addr.clone());
                let jh = gearman_core::JobHandle {
                    server: addr,
                    handle: handle.clone(),
                };
                rt.with_client_until(&list, deadline, |c| c.status(&jh))
            })
            .map_err(|e| e.to_string())?;
            serde_json::json!({
                "known": s.known, "running": s.running,
                "numerator": s.numerator, "denominator": s.denominator,
            })
        } else {
            if key.len() > MAX_UNIQUE {
                return Err(format!(
                    "unique key is {} bytes, the limit is {MAX_UNIQUE}",
                    key.len()
                ));
            }
            // The key routes within the list of the function it was sent
            // for, which the key does not tell: ask each distinct list,
            // default first, until one knows it.
            let s = gearman_core::first_known(rt.all_lists(), |list| {
                rt.with_client_until(&list, deadline, |c| c.status_by_unique(&key))
            })
            .map_err(|e| e.to_string())?;
            serde_json::json!({
                "known": s.known, "running": s.running,
                "numerator": s.numerator, "denominator": s.denominator,
                "waiting": s.waiting,
            })
        };
        Ok(json.to_string().into_bytes())
    }

    /// Every server of the routing table, all within `io_timeout_ms` from
    /// the start of the call (each connect within `connect_timeout_ms`); a
    /// server not reached in time is an entry with its error.
    fn server_status(&mut self, rt: &Runtime) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + rt.options().io_timeout;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let servers = rt.all_servers();
        let answers = gearman_core::admin::status_all_with(
            servers.clone(),
            rt.options().connect_timeout,
            deadline,
            rt.options().tls.as_ref(),
        );
        for (addr, r) in answers {
            match r {
                Ok(list) => {
                    for f in list {
                        out.push(serde_json::json!({
                            "server": addr.to_string(),
                            "function": &f.function,
                            "total": f.total,
                            "queued": f.queued(),
                            "running": f.running,
                            "workers": f.workers,
                        }));
                    }
                }
                Err(e) => {
                    errors.push(format!("{addr}: {e}"));
                    out.push(serde_json::json!({
                        "server": addr.to_string(), "error": e.to_string(),
                    }));
                }
            }
        }
        if !servers.is_empty() && errors.len() == servers.len() {
            return Err(errors.join("; "));
        }
        if !errors.is_empty() {
            // Partial answer: still returned, but not silently.
            self.fail(format!("{}: {}", self.name, errors.join("; ")));
        }
        Ok(serde_json::Value::Array(out).to_string().into_bytes())
    }

    /// gman_sum: start a new group.
    pub fn sum_clear(&mut self) {
        self.sum_jobs.clear();
        self.sum_error = None;
    }

    /// gman_sum: one row of the group.
    pub fn sum_add(&mut self, args: &[Arg<'_>]) {
        if self.sum_error.is_some() {
            return;
        }
        let limit = runtime()
            .map(|rt| rt.config.max_sum_rows)
            .unwrap_or(crate::config::DEFAULT_MAX_SUM_ROWS);
        if self.sum_jobs.len() >= limit {
            self.sum_error = Some(format!(
                "more than {limit} rows in one group (max_sum_rows in the configuration file)"
            ));
            return;
        }
        match self.job(args, usize::MAX) {
            Ok(j) => self.sum_jobs.push(j),
            Err(e) => self.sum_error = Some(e),
        }
    }

    /// gman_sum: the group's result. `Ok(None)` for an empty group (SQL NULL,
    /// like `SUM()` over no rows).
    pub fn sum_result(&mut self) -> Result<Option<i64>, String> {
        self.calls += 1;
        let r = self.sum_inner();
        self.sum_jobs.clear();
        r.map_err(|e| format!("{}: {e}", self.name))
    }

    fn sum_inner(&mut self) -> Result<Option<i64>, String> {
        if let Some(e) = self.sum_error.take() {
            return Err(e);
        }
        if self.sum_jobs.is_empty() {
            return Ok(None);
        }
        let rt = runtime()?;
        // One bound for the whole group, over every server list it uses.
        let deadline = rt.options().foreground_timeout.map(|t| Instant::now() + t);
        // All rows of one group share one client: the jobs are grouped by
        // server list so that per-function routing still holds.
        let mut by_list: Vec<(ServerList, Vec<usize>)> = Vec::new();
        for (i, j) in self.sum_jobs.iter().enumerate() {
            let l = rt.servers_for(&j.function);
            match by_list.iter_mut().find(|(x, _)| *x == l) {
                Some((_, v)) => v.push(i),
                None => by_list.push((l, vec![i])),
            }
        }
        let mut total: i64 = 0;
        for (list, idx) in by_list {
            let jobs: Vec<Job> = idx.iter().map(|&i| self.sum_jobs[i].clone()).collect();
            // Each row's result is an integer: a small cap per job bounds
            // the whole group (rows x SUM_RESULT_MAX).
            let results = rt
                .with_client_until(&list, deadline, |c| {
                    let cap = c.options().max_result;
                    c.options_mut().max_result = cap.min(SUM_RESULT_MAX);
                    let r = c.run_all(&jobs);
                    c.options_mut().max_result = cap;
                    Ok(r)
                })
                .map_err(|e| e.to_string())?;
            for (job, r) in jobs.iter().zip(results) {
                let bytes = r.map_err(|e| describe(job, &e))?;
                let text = String::from_utf8_lossy(&bytes);
                let n: i64 = text.trim().parse().map_err(|_| {
                    format!(
                        "function '{}' returned '{}', not an integer",
                        String::from_utf8_lossy(&job.function),
                        text.chars().take(40).collect::<String>()
                    )
                })?;
                total = total
                    .checked_add(n)
                    .ok_or_else(|| "sum overflows a signed 64-bit integer".to_string())?;
            }
        }
        Ok(Some(total))
    }
}

/// Writes one background job without waiting for its JOB_CREATED. A
/// connection found broken while writing (e.g. a pooled connection that
/// gearmand closed) is reopened and the job written once more, as
/// `submit_background` does in round-trip mode (at least once). The error of
/// a job that could not be written is this call's error only: it is removed
/// from the client's report of failed deferred jobs, which otherwise holds
/// the earlier jobs that the broken connection still owed a confirmation.
fn submit_pipelined(c: &mut gearman_core::Client, job: &Job) -> gearman_core::Result<()> {
    let mine = |f: &gearman_core::DeferredFailure| {
        f.unique == job.unique_bytes() && f.function.as_bytes() == job.function
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let Err(e) = c.submit_background_deferred(std::slice::from_ref(job)) else {
            // The first job of its kind on a connection is confirmed within
            // the call (the core awaits it): a refusal or a missing answer
            // (a server that ignores the packet type) is this row's error,
            // not a later report.
            let mut report = c.take_deferred_report();
            let failed = report.failed.iter().rposition(mine);
            let own = failed.map(|i| report.failed.remove(i));
            note_deferred(report);
            return match own {
                Some(f) => Err(f.error),
                None => Ok(()),
            };
        };
        let mut report = c.collect_deferred(false);
        if let Some(i) = report.failed.iter().rposition(mine) {
            report.failed.remove(i);
        }
        note_deferred(report);
        if tries >= 2 || e.kind() != &gearman_core::ErrorKind::ConnectionLost {
            return Err(e);
        }
    }
}

/// The error text when the configuration forbids `gman_servers_set`.
pub fn servers_set_locked(rt: &Runtime) -> String {
    format!(
        "gman_servers_set is disabled: allow_servers_set = false in {} \
         (false unless the server's administrator sets it to true there)",
        rt.config_path.display()
    )
}

fn describe(job: &Job, e: &gearman_core::Error) -> String {
    format!("function '{}': {e}", String::from_utf8_lossy(&job.function))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_counts_are_checked_with_usage() {
        let e = check_args("gman_do", Kind::Do(Priority::Normal), &[STRING_RESULT]).unwrap_err();
        assert!(e.contains("gman_do(function, workload [, unique])"), "{e}");
        assert!(e.contains("2 or 3 arguments, got 1"), "{e}");
        assert!(check_args("gman_last_error", Kind::LastError, &[INT_RESULT]).is_err());
        assert!(check_args("gman_sum", Kind::Sum, &[STRING_RESULT; 3]).is_err());
    }

    #[test]
    fn everything_becomes_text_except_epoch_seconds() {
        let t = check_args(
            "gman_do",
            Kind::Do(Priority::High),
            &[INT_RESULT, REAL_RESULT, DECIMAL_RESULT],
        )
        .unwrap();
        assert_eq!(t, vec![STRING_RESULT; 3]);
        let t = check_args(
            "gman_do_epoch",
            Kind::Epoch,
            &[STRING_RESULT, STRING_RESULT, DECIMAL_RESULT],
        )
        .unwrap();
        assert_eq!(t[2], INT_RESULT);
        assert!(check_args(
            "gman_do",
            Kind::Do(Priority::Low),
            &[STRING_RESULT, ROW_RESULT]
        )
        .is_err());
    }

    #[test]
    fn job_arguments_are_validated() {
        let c = Call::new("gman_do", Kind::Do(Priority::Normal));
        assert!(c
            .job(&[Arg::Null, Arg::Null], 2)
            .unwrap_err()
            .contains("NULL"));
        assert!(c
            .job(&[Arg::Bytes(b""), Arg::Null], 2)
            .unwrap_err()
            .contains("empty"));
        let j = c.job(&[Arg::Bytes(b"f"), Arg::Null], 2).unwrap();
        assert!(j.workload.is_empty());
        let long = [b'u'; 64];
        let e = c
            .job(&[Arg::Bytes(b"f"), Arg::Null, Arg::Bytes(&long)], 2)
            .unwrap_err();
        assert!(e.contains("64 bytes"), "{e}");
        let j = c
            .job(
                &[Arg::Bytes(b"f"), Arg::Bytes(b"\0x\0"), Arg::Bytes(b"")],
                2,
            )
            .unwrap();
        assert_eq!(j.workload, b"\0x\0");
        assert_eq!(j.unique, None);
    }
}
