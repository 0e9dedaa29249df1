//! `exec` functions: run a command per job.
//!
//! The workload is written to the command's stdin (then stdin is closed), its
//! stdout is the result. Exit status 0 completes the job. A non-zero exit or
//! a death by signal fails it: when the command wrote to stderr, with stderr
//! as the failure message (WORK_WARNING then WORK_FAIL, or WORK_EXCEPTION
//! with the `exceptions` setting), else with a plain WORK_FAIL. The command runs in its own
//! process group; at the deadline the group gets SIGTERM, then SIGKILL one
//! second later, and the job fails. [`kill_all`] kills every running
//! command's group (used when the daemon stops at once).
//!
//! stdout is the result, capped at the function's `max_result_bytes`: the
//! first byte past it fails the job at once ("wrote more than N bytes to
//! stdout"), the command's process group is killed and what it wrote is
//! discarded, so neither memory nor time grows with what a command writes.
//!
//! The pipes are served with poll(2) on the worker's own thread (no helper
//! threads per job: thread creation cost as much as the fork itself). The
//! job ends when stdout and stderr are closed and the command has exited; a
//! background process that keeps them open holds the job until the deadline.

use super::{Handler, JobError};
use crate::config::ExecSpec;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Time between SIGTERM and SIGKILL for a command past its deadline.
pub const KILL_GRACE: Duration = Duration::from_secs(1);
/// Largest part of stderr kept for the failure message and log line.
pub const MAX_STDERR_BYTES: usize = 64 * 1024;

/// Process groups of running commands.
static RUNNING: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

fn track(pgid: i32, add: bool) {
    let mut g = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    let set = g.get_or_insert_with(HashSet::new);
    if add {
        set.insert(pgid);
    } else {
        set.remove(&pgid);
    }
}

/// Number of commands running now.
pub fn running_count() -> usize {
    let g = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    g.as_ref().map_or(0, HashSet::len)
}

/// Set by [`kill_all`]: the daemon is exiting at once, so no job may report
/// a result any more (its job is requeued by the job server when the
/// connection closes, not failed).
static ABANDONED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sends SIGKILL to the process group of every running command. Their jobs
/// report nothing: the handler threads wait for the process to exit, so
/// that gearmand requeues the jobs instead of seeing them fail.
pub fn kill_all() {
    ABANDONED.store(true, std::sync::atomic::Ordering::SeqCst);
    let g = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    for pgid in g.iter().flatten() {
        kill_group(*pgid, libc::SIGKILL);
    }
}

fn kill_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; it
        // touches no memory of ours.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Runs a configured command per job.
#[derive(Debug, Clone)]
pub struct ExecHandler {
    spec: ExecSpec,
}

impl ExecHandler {
    /// The handler for `spec`.
    pub fn new(spec: ExecSpec) -> ExecHandler {
        ExecHandler { spec }
    }
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Output collected from one pipe, keeping at most `limit` bytes.
struct Sink {
    data: Vec<u8>,
    limit: usize,
    overflow: bool,
}

impl Sink {
    fn new(limit: usize) -> Sink {
        Sink {
            data: Vec::new(),
            limit,
            overflow: false,
        }
    }

    /// Reads what is available; false at end of file or on error.
    fn drain(&mut self, r: &mut impl Read, buf: &mut [u8]) -> bool {
        loop {
            match r.read(buf) {
                Ok(0) => return false,
                Ok(n) => {
                    let room = self.limit.saturating_sub(self.data.len());
                    if n > room {
                        self.overflow = true;
                    }
                    self.data.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Waits for `child` to exit until `deadline`, polling with a short,
/// growing interval; `None` when the deadline passed first.
fn wait_until(child: &mut Child, deadline: Option<Instant>) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_micros(20);
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// Kills the group of a command past its deadline: SIGTERM, then SIGKILL
/// after [`KILL_GRACE`]; reaps the child.
fn kill_and_reap(child: &mut Child, pgid: i32) {
    kill_group(pgid, libc::SIGTERM);
    if let Ok(Some(_)) = wait_until(child, Some(Instant::now() + KILL_GRACE)) {
        // Stragglers of the group that ignored SIGTERM.
        kill_group(pgid, libc::SIGKILL);
        return;
    }
    kill_group(pgid, libc::SIGKILL);
    let _ = child.wait();
}

/// Why a command's run ended early.
enum Stopped {
    TimedOut,
    TooLarge,
    Io(std::io::Error),
}

/// The failure message for a result past `max_result_bytes`.
fn too_large(program: &str, limit: usize, killed: bool) -> String {
    format!(
        "`{program}` wrote more than {limit} bytes to stdout (the function's \
         max_result_bytes); the result was discarded{}",
        if killed {
            " and the command's process group killed"
        } else {
            ""
        }
    )
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

fn excerpt(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let s = s.trim();
    let mut out: String = s.chars().take(300).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out.replace('\n', "\\n")
}

impl Handler for ExecHandler {
    fn call(&self, workload: &[u8]) -> Result<Vec<u8>, JobError> {
        let spec = &self.spec;
        let program = &spec.argv[0];
        let mut cmd = Command::new(program);
        cmd.args(&spec.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if spec.clear_env {
            cmd.env_clear();
        }
        cmd.envs(&spec.env);
        cmd.env(
            crate::retry::ATTEMPT_ENV,
            crate::retry::current_attempt().to_string(),
        );
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| JobError::exception(format!("cannot start `{program}`: {e}")))?;
        let pgid = child.id() as i32;
        track(pgid, true);
        let limit = usize::try_from(spec.max_result_bytes).unwrap_or(usize::MAX);
        let deadline = spec.timeout.map(|t| start + t);
        let outcome = pump(&mut child, workload, limit, deadline);
        let status = match outcome {
            Ok(Pumped {
                out,
                err,
                end: PumpEnd::Closed,
            }) => match wait_until(&mut child, deadline) {
                Ok(Some(st)) => Ok((st, out, err)),
                Ok(None) => Err(Stopped::TimedOut),
                Err(e) => Err(Stopped::Io(e)),
            },
            Ok(Pumped {
                end: PumpEnd::TimedOut,
                ..
            }) => Err(Stopped::TimedOut),
            Ok(Pumped {
                end: PumpEnd::ResultTooLarge,
                ..
            }) => Err(Stopped::TooLarge),
            Err(e) => Err(Stopped::Io(e)),
        };
        let result = match status {
            Ok(v) => Ok(v),
            Err(Stopped::TooLarge) => {
                kill_and_reap(&mut child, pgid);
                Err(JobError::exception(too_large(program, limit, true)))
            }
            Err(Stopped::TimedOut) => {
                // Exited already, but its output pipes stayed open: a
                // process it started in the background still holds them.
                let exited = child.try_wait().ok().flatten();
                kill_and_reap(&mut child, pgid);
                let ms = spec.timeout.unwrap_or_default().as_millis();
                Err(JobError::exception(match exited {
                    Some(st) => format!(
                        "`{program}` exited ({}) but its stdout or stderr stayed open until \
                         the timeout of {ms} ms: a process it left running in the background \
                         holds them (redirect its output, e.g. `cmd >/dev/null 2>&1 &`); \
                         its process group was killed",
                        describe(st)
                    ),
                    None => format!("`{program}` timed out after {ms} ms and was killed"),
                }))
            }
            Err(Stopped::Io(e)) => {
                kill_and_reap(&mut child, pgid);
                Err(JobError::exception(format!("running `{program}`: {e}")))
            }
        };
        track(pgid, false);
        if ABANDONED.load(std::sync::atomic::Ordering::SeqCst) {
            // Killed because the daemon is exiting now: report nothing.
            loop {
                std::thread::park();
            }
        }
        let (status, (out, out_overflow), (mut err, err_overflow)) = result?;
        if err_overflow {
            err.extend_from_slice(
                format!("\n[stderr cut to its first {MAX_STDERR_BYTES} bytes]\n").as_bytes(),
            );
        }
        if !status.success() {
            let reason = if err.is_empty() {
                format!("`{program}` failed: {}", describe(status))
            } else {
                format!(
                    "`{program}` failed: {}: {}",
                    describe(status),
                    excerpt(&err)
                )
            };
            return Err(if err.is_empty() {
                JobError::Fail(reason)
            } else {
                JobError::Exception { reason, data: err }
            });
        }
        if out_overflow {
            return Err(JobError::exception(too_large(program, limit, false)));
        }
        Ok(out)
    }
}

/// Why [`pump`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpEnd {
    /// stdout and stderr are closed.
    Closed,
    /// The deadline passed first.
    TimedOut,
    /// stdout passed the limit (the bytes past it were discarded).
    ResultTooLarge,
}

/// What [`pump`] collected: (data, overflow) of stdout and stderr.
struct Pumped {
    out: (Vec<u8>, bool),
    err: (Vec<u8>, bool),
    end: PumpEnd,
}

/// Feeds `workload` to the child's stdin and collects stdout (up to `limit`
/// bytes) and stderr (up to [`MAX_STDERR_BYTES`]) with poll(2) on this
/// thread, until both output pipes close, `deadline` passes, or stdout
/// passes `limit` (then it stops at once: memory and time stay bounded
/// whatever the command writes).
fn pump(
    child: &mut Child,
    workload: &[u8],
    limit: usize,
    deadline: Option<Instant>,
) -> std::io::Result<Pumped> {
    let mut stdin = child.stdin.take().filter(|_| !workload.is_empty());
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(|p| p.as_raw_fd()),
        stdout.as_ref().map(|p| p.as_raw_fd()),
        stderr.as_ref().map(|p| p.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd)?;
    }
    let mut out = Sink::new(limit);
    let mut err = Sink::new(MAX_STDERR_BYTES);
    let mut written = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while stdout.is_some() || stderr.is_some() {
        let timeout_ms: i32 = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Pumped {
                        out: (out.data, out.overflow),
                        err: (err.data, err.overflow),
                        end: PumpEnd::TimedOut,
                    });
                }
                // Round up so a sub-millisecond rest does not spin.
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            }
        };
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        let mut which = Vec::with_capacity(3);
        if let Some(p) = &stdin {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            });
            which.push(0);
        }
        if let Some(p) = &stdout {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            which.push(1);
        }
        if let Some(p) = &stderr {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            which.push(2);
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs that
        // outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (pfd, w) in fds.iter().zip(which) {
            if pfd.revents == 0 {
                continue;
            }
            match w {
                0 => {
                    let mut close = pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0;
                    if let (false, Some(p)) = (close, stdin.as_mut()) {
                        match p.write(&workload[written..]) {
                            Ok(k) => {
                                written += k;
                                close = written >= workload.len();
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            // EPIPE: the command does not read its stdin.
                            Err(_) => close = true,
                        }
                    }
                    if close {
                        stdin = None;
                    }
                }
                1 => {
                    if let Some(p) = stdout.as_mut() {
                        if !out.drain(p, &mut buf) {
                            stdout = None;
                        }
                    }
                    if out.overflow {
                        // Past max_result_bytes: the result is lost anyway;
                        // stop now instead of reading (and discarding) for
                        // as long as the command writes.
                        return Ok(Pumped {
                            out: (out.data, true),
                            err: (err.data, err.overflow),
                            end: PumpEnd::ResultTooLarge,
                        });
                    }
                }
                _ => {
                    if let Some(p) = stderr.as_mut() {
                        if !err.drain(p, &mut buf) {
                            stderr = None;
                        }
                    }
                }
            }
        }
    }
    Ok(Pumped {
        out: (out.data, out.overflow),
        err: (err.data, err.overflow),
        end: PumpEnd::Closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn handler(argv: &[&str], timeout_ms: Option<u64>) -> ExecHandler {
        ExecHandler::new(ExecSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            clear_env: false,
            cwd: None,
            timeout: timeout_ms.map(Duration::from_millis),
            max_result_bytes: 1024 * 1024,
        })
    }

    #[test]
    fn stdin_to_stdout() {
        let h = handler(&["cat"], Some(5000));
        assert_eq!(h.call(b"hello\0world").unwrap(), b"hello\0world");
    }

    #[test]
    fn a_cleared_environment_without_path_still_finds_programs_in_bin() {
        // What config::program_exists assumes: execvp's default PATH.
        let h = ExecHandler::new(ExecSpec {
            clear_env: true,
            ..handler(&["cat"], Some(5000)).spec
        });
        assert_eq!(h.call(b"x").unwrap(), b"x");
    }

    #[test]
    fn large_workload_does_not_deadlock() {
        let h = handler(&["cat"], Some(10_000));
        let big = vec![b'x'; 3 * 1024 * 1024 / 4];
        assert_eq!(h.call(&big).unwrap().len(), big.len());
    }

    #[test]
    fn a_background_process_holding_stdout_is_named_at_the_timeout() {
        let h = handler(&["sh", "-c", "sleep 30 & echo hi"], Some(1000));
        let e = h.call(b"").unwrap_err();
        let r = e.reason();
        assert!(r.contains("exited (exit status 0)"), "{r}");
        assert!(r.contains("in the background"), "{r}");
    }

    #[test]
    fn stderr_past_the_limit_is_cut_with_a_marker() {
        let h = handler(
            &[
                "sh",
                "-c",
                "head -c 200000 /dev/zero | tr '\\0' e >&2; exit 1",
            ],
            Some(20_000),
        );
        let JobError::Exception { data, .. } = h.call(b"").unwrap_err() else {
            panic!("expected a failure with stderr")
        };
        let marker = format!("\n[stderr cut to its first {MAX_STDERR_BYTES} bytes]\n");
        assert!(data.ends_with(marker.as_bytes()));
        assert_eq!(data.len(), MAX_STDERR_BYTES + marker.len());
    }

    #[test]
    fn nonzero_exit_with_stderr_is_exception() {
        let h = handler(&["sh", "-c", "echo oops >&2; exit 3"], Some(5000));
        match h.call(b"").unwrap_err() {
            JobError::Exception { reason, data } => {
                assert_eq!(data, b"oops\n");
                assert!(reason.contains("exit status 3"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nonzero_exit_without_stderr_is_fail() {
        let h = handler(&["false"], Some(5000));
        assert!(matches!(h.call(b"").unwrap_err(), JobError::Fail(_)));
    }

    #[test]
    fn crash_by_signal_fails_the_job() {
        let h = handler(&["sh", "-c", "kill -SEGV $$"], Some(5000));
        let e = h.call(b"").unwrap_err();
        assert!(e.reason().contains("signal 11"), "{e:?}");
    }

    #[test]
    fn missing_program_fails_the_job() {
        let h = handler(&["/no/such/program"], Some(5000));
        let e = h.call(b"").unwrap_err();
        assert!(e.reason().contains("cannot start"), "{e:?}");
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        // 2 s: time for `sh` to write the pid file even on a loaded machine.
        let h = handler(&["sh", "-c", &script], Some(2000));
        let start = Instant::now();
        let e = h.call(b"").unwrap_err();
        assert!(e.reason().contains("timed out after 2000 ms"), "{e:?}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background `sleep` was in the command's group and is gone too
        // (possibly a zombie briefly until init reaps it).
        std::thread::sleep(Duration::from_millis(200));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "sleep still alive: {stat}"
        );
    }

    #[test]
    fn term_ignoring_child_is_killed() {
        let h = handler(&["sh", "-c", "trap '' TERM; sleep 30"], Some(200));
        let start = Instant::now();
        let e = h.call(b"").unwrap_err();
        assert!(e.reason().contains("timed out"), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn output_over_limit_fails() {
        let mut h = handler(&["head", "-c", "2000"], Some(5000));
        h.spec.max_result_bytes = 1000;
        let e = h.call(&[b'a'; 4000]).unwrap_err();
        assert!(e.reason().contains("more than 1000 bytes"), "{e:?}");
    }

    #[test]
    fn an_endless_writer_is_stopped_at_the_result_cap() {
        // `yes` never ends: before, the job ran until its timeout (for ever
        // with timeout_ms = 0) reading and discarding; now it fails at the
        // cap, long before its 60 s timeout, with the cap named.
        let mut h = handler(&["yes"], Some(60_000));
        h.spec.max_result_bytes = 4096;
        let e = h.call(b"").unwrap_err();
        let r = e.reason();
        assert!(r.contains("more than 4096 bytes to stdout"), "{r}");
        assert!(r.contains("max_result_bytes"), "{r}");
        assert!(r.contains("killed"), "{r}");
    }

    #[test]
    fn command_that_ignores_stdin_still_succeeds() {
        let h = handler(&["sh", "-c", "printf done"], Some(5000));
        assert_eq!(h.call(&vec![b'z'; 1024 * 1024]).unwrap(), b"done");
    }

    #[test]
    fn stderr_is_collected_alongside_stdout() {
        let h = handler(&["sh", "-c", "cat; echo note >&2"], Some(5000));
        assert_eq!(h.call(b"out").unwrap(), b"out");
    }

    #[test]
    fn env_and_cwd_are_applied() {
        let mut h = handler(&["sh", "-c", "printf '%s:' \"$GW_TEST\"; pwd"], Some(5000));
        h.spec.env.insert("GW_TEST".into(), "v1".into());
        h.spec.cwd = Some("/".into());
        assert_eq!(h.call(b"").unwrap(), b"v1:/\n");
    }
}
