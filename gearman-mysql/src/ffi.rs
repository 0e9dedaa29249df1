//! Glue between the C calling convention and [`crate::funcs`]. Every entry
//! point runs inside `catch_unwind`: a panic becomes an error result (init
//! message, or NULL for that row), never an unwind into mariadbd.
//!
//! A failing row returns NULL with the error flag left clear: MariaDB and
//! MySQL stop calling a UDF for the rest of the statement (and every later
//! group of an aggregate) once it sets the flag, so one bad row would turn
//! every later row NULL without sending its job. The failure is reported by
//! `gman_last_error()` and the statement's error-log line instead.

use crate::abi::{self, UdfArgs, UdfInit};
use crate::funcs::{check_args, servers_set_locked, Call, Kind};
use crate::runtime::{
    clear_last_error, flush_deferred_failures, log_error, runtime, set_last_error,
};
use std::os::raw::{c_char, c_ulong};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Result strings may be this long unless the configuration says otherwise
/// (`max_result_bytes`); the server picks the column type from it (16 MiB:
/// MEDIUMBLOB-sized, the default `max_allowed_packet`).
const RESULT_MAX_LENGTH: c_ulong = crate::config::DEFAULT_MAX_RESULT as c_ulong;

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// `xxx_init`.
///
/// # Safety
/// Pointers as passed by the server to `xxx_init`.
pub unsafe fn init(
    name: &'static str,
    kind: Kind,
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    message: *mut c_char,
) -> c_char {
    let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        // A statement that calls a gman_* function starts with a clean
        // slate for its connection (see `crate::session`).
        if kind != Kind::LastError {
            clear_last_error();
        }
        if initid.is_null() || args.is_null() {
            return Err(format!("{name}: called without UDF_INIT/UDF_ARGS"));
        }
        // SAFETY: non-null pointers from the server, valid during _init.
        let (initid, args) = unsafe { (&mut *initid, &mut *args) };
        // SAFETY: `args` is the server's UDF_ARGS for this _init.
        let types = unsafe { abi::arg_types(args) };
        let wanted = check_args(name, kind, &types)?;
        if kind == Kind::ServersSet {
            if let Ok(rt) = runtime() {
                if !rt.config.allow_servers_set {
                    return Err(servers_set_locked(rt));
                }
            }
        }
        for (i, t) in wanted.into_iter().enumerate() {
            // SAFETY: i < arg_count, inside _init.
            unsafe { abi::set_arg_type(args, i, t) };
        }
        initid.maybe_null = 1;
        initid.const_item = 0;
        initid.decimals = 0;
        if kind != Kind::Sum {
            initid.max_length = runtime()
                .map(|rt| rt.config.max_result_bytes as c_ulong)
                .unwrap_or(RESULT_MAX_LENGTH);
        } else {
            initid.max_length = 21;
        }
        initid.ptr = Box::into_raw(Box::new(Call::new(name, kind))) as *mut c_char;
        Ok(())
    }));
    let msg = match r {
        Ok(Ok(())) => return 0,
        Ok(Err(m)) => m,
        Err(p) => {
            let m = format!("{name}: internal error: {}", panic_text(&*p));
            log_error(&m);
            m
        }
    };
    set_last_error(&msg);
    // SAFETY: the server's message buffer holds ERRMSG_SIZE bytes.
    unsafe { abi::write_message(message, &msg) };
    1
}

/// `xxx_deinit`: writes the statement's one error-log line (and one for the
/// pipelined background jobs this thread found refused or lost), frees the
/// state.
///
/// # Safety
/// `initid` as passed by the server to `xxx_deinit`.
pub unsafe fn deinit(initid: *mut UdfInit) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if initid.is_null() {
            return;
        }
        // SAFETY: non-null, from the server.
        let initid = unsafe { &mut *initid };
        if initid.ptr.is_null() {
            return;
        }
        // SAFETY: ptr was made by Box::into_raw in init and is freed only here.
        let call = unsafe { Box::from_raw(initid.ptr as *mut Call) };
        initid.ptr = std::ptr::null_mut();
        if let Some(line) = call.summary() {
            log_error(&line);
        }
        // Pipelined background jobs: read the confirmations that have
        // arrived meanwhile (without waiting), then write one line for the
        // failures this thread collected during the statement.
        if call.pipelined > 0 {
            if let Ok(rt) = runtime() {
                rt.collect_idle();
            }
        }
        flush_deferred_failures();
    }));
}

/// # Safety
/// `initid` from the server; returns the state made by `init`.
unsafe fn state<'a>(initid: *mut UdfInit) -> Option<&'a mut Call> {
    if initid.is_null() {
        return None;
    }
    // SAFETY: non-null UDF_INIT from the server; ptr is our Box<Call> or null.
    unsafe {
        let p = (*initid).ptr as *mut Call;
        p.as_mut()
    }
}

/// # Safety
/// Valid one-byte flag pointer or null.
unsafe fn set_flag(p: *mut c_char, v: c_char) {
    if !p.is_null() {
        // SAFETY: non-null flag pointer from the server.
        unsafe { *p = v };
    }
}

/// The string function `xxx()`.
///
/// # Safety
/// Pointers as passed by the server to a string UDF.
pub unsafe fn call_string(
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    result: *mut c_char,
    length: *mut c_ulong,
    is_null: *mut c_char,
    error: *mut c_char,
) -> *mut c_char {
    let r = catch_unwind(AssertUnwindSafe(|| -> Option<*mut c_char> {
        // SAFETY: from the server.
        let call = unsafe { state(initid) }?;
        #[cfg(test)]
        if PANIC_NEXT.with(|p| p.replace(false)) {
            panic!("injected test panic");
        }
        if args.is_null() {
            call.fail(format!("{}: called without arguments", call.name));
            return None;
        }
        // SAFETY: args from the server, valid during this call.
        let argv = unsafe { abi::all_args(&*args) };
        match call.call_string(&argv) {
            Ok(Some(bytes)) => {
                call.result = bytes;
                // SAFETY: length is the server's out-parameter.
                unsafe {
                    if !length.is_null() {
                        *length = call.result.len() as c_ulong;
                    }
                    set_flag(is_null, 0);
                    set_flag(error, 0);
                }
                if call.result.is_empty() {
                    // A valid non-null pointer for an empty string.
                    return Some(result);
                }
                Some(call.result.as_mut_ptr() as *mut c_char)
            }
            Ok(None) => {
                // SAFETY: the server's flag pointers.
                unsafe {
                    set_flag(is_null, 1);
                    set_flag(error, 0);
                }
                Some(std::ptr::null_mut())
            }
            Err(msg) => {
                call.fail(msg);
                None
            }
        }
    }));
    if let Err(p) = &r {
        panicked(initid, &**p);
    }
    match r {
        Ok(Some(p)) => p,
        // A failed row (or a panic): NULL for this row only, never the
        // error flag (see the module docs).
        Ok(None) | Err(_) => {
            // SAFETY: the server's flag pointers.
            unsafe {
                set_flag(is_null, 1);
                set_flag(error, 0);
            }
            std::ptr::null_mut()
        }
    }
}

fn panicked(initid: *mut UdfInit, p: &(dyn std::any::Any + Send)) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: from the server.
        let name = unsafe { state(initid) }.map(|c| c.name).unwrap_or("gman");
        let msg = format!("{name}: internal error: {}", panic_text(p));
        set_last_error(&msg);
        log_error(&msg);
    }));
}

/// `gman_sum_clear`.
///
/// # Safety
/// Pointers as passed by the server.
pub unsafe fn sum_clear(initid: *mut UdfInit, is_null: *mut c_char, error: *mut c_char) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: from the server.
        if let Some(c) = unsafe { state(initid) } {
            c.sum_clear();
        }
    }));
    if let Err(p) = r {
        panicked(initid, &*p);
    }
    // SAFETY: the server's flag pointers.
    unsafe {
        set_flag(is_null, 0);
        set_flag(error, 0);
    }
}

/// `gman_sum_add`.
///
/// # Safety
/// Pointers as passed by the server.
pub unsafe fn sum_add(
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    _is_null: *mut c_char,
    _error: *mut c_char,
) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: from the server.
        if let (Some(c), false) = (unsafe { state(initid) }, args.is_null()) {
            // SAFETY: args valid during this call.
            let argv = unsafe { abi::all_args(&*args) };
            c.sum_add(&argv);
        }
    }));
    if let Err(p) = r {
        panicked(initid, &*p);
        // SAFETY: from the server.
        if let Some(c) = unsafe { state(initid) } {
            c.sum_error = Some("internal error while adding a row".into());
        }
    }
}

/// `gman_sum_reset` (older servers): clear, then add this row.
///
/// # Safety
/// Pointers as passed by the server.
pub unsafe fn sum_reset(
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    is_null: *mut c_char,
    error: *mut c_char,
) {
    // SAFETY: forwarded server pointers.
    unsafe {
        sum_clear(initid, is_null, error);
        sum_add(initid, args, is_null, error);
    }
}

/// `gman_sum()`: the group's value.
///
/// # Safety
/// Pointers as passed by the server.
pub unsafe fn sum_value(
    initid: *mut UdfInit,
    _args: *mut UdfArgs,
    is_null: *mut c_char,
    error: *mut c_char,
) -> i64 {
    let r = catch_unwind(AssertUnwindSafe(|| -> Result<Option<i64>, ()> {
        // SAFETY: from the server.
        let c = unsafe { state(initid) }.ok_or(())?;
        c.sum_result().map_err(|e| c.fail(e))
    }));
    let (value, null, err) = match r {
        Ok(Ok(Some(v))) => (v, 0, 0),
        Ok(Ok(None)) => (0, 1, 0),
        // This group only: NULL without the error flag, so later groups
        // are still computed (see the module docs).
        Ok(Err(())) => (0, 1, 0),
        Err(p) => {
            panicked(initid, &*p);
            (0, 1, 0)
        }
    };
    // SAFETY: the server's flag pointers.
    unsafe {
        set_flag(is_null, null);
        set_flag(error, err);
    }
    value
}

#[cfg(test)]
thread_local! {
    /// Test hook: the next `call_string` on this thread panics inside the guard.
    pub(crate) static PANIC_NEXT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{ERRMSG_SIZE, INT_RESULT, STRING_RESULT};
    use crate::runtime::last_error;
    use gearman_core::Priority;
    use std::ptr::null_mut;

    /// Owns the buffers behind a hand-built UDF_ARGS.
    struct FakeArgs {
        types: Vec<i32>,
        ptrs: Vec<*mut c_char>,
        lengths: Vec<c_ulong>,
        maybe_null: Vec<c_char>,
        _data: Vec<Vec<u8>>,
        args: UdfArgs,
    }

    fn fake(values: &[Option<&[u8]>]) -> Box<FakeArgs> {
        let mut data: Vec<Vec<u8>> = values.iter().map(|v| v.unwrap_or(b"").to_vec()).collect();
        let ptrs = data
            .iter_mut()
            .zip(values)
            .map(|(d, v)| {
                if v.is_some() {
                    d.as_mut_ptr() as *mut c_char
                } else {
                    null_mut()
                }
            })
            .collect();
        let mut f = Box::new(FakeArgs {
            types: vec![STRING_RESULT; values.len()],
            ptrs,
            lengths: values
                .iter()
                .map(|v| v.map_or(0, |b| b.len()) as c_ulong)
                .collect(),
            maybe_null: vec![1; values.len()],
            _data: data,
            args: UdfArgs {
                arg_count: values.len() as u32,
                arg_type: null_mut(),
                args: null_mut(),
                lengths: null_mut(),
                maybe_null: null_mut(),
                attributes: null_mut(),
                attribute_lengths: null_mut(),
                extension: null_mut(),
            },
        });
        f.args.arg_type = f.types.as_mut_ptr();
        f.args.args = f.ptrs.as_mut_ptr();
        f.args.lengths = f.lengths.as_mut_ptr();
        f.args.maybe_null = f.maybe_null.as_mut_ptr();
        f
    }

    fn new_init() -> UdfInit {
        UdfInit {
            maybe_null: 0,
            decimals: 0,
            max_length: 0,
            ptr: null_mut(),
            const_item: 0,
            extension: null_mut(),
        }
    }

    #[test]
    fn init_rejects_bad_counts_with_a_message() {
        let mut a = fake(&[Some(b"f")]);
        let mut i = new_init();
        let mut msg = [0 as c_char; ERRMSG_SIZE];
        let rc = unsafe {
            init(
                "gman_do",
                Kind::Do(Priority::Normal),
                &mut i,
                &mut a.args,
                msg.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 1);
        let text = unsafe { std::ffi::CStr::from_ptr(msg.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        assert!(
            text.contains("gman_do(function, workload [, unique])"),
            "{text}"
        );
        assert!(i.ptr.is_null());
    }

    #[test]
    fn init_call_deinit_round_trip_and_null_function() {
        let mut a = fake(&[None, Some(b"w")]);
        a.types[1] = INT_RESULT; // init must ask for text instead
        let mut i = new_init();
        let mut msg = [0 as c_char; ERRMSG_SIZE];
        let rc = unsafe {
            init(
                "gman_do",
                Kind::Do(Priority::Normal),
                &mut i,
                &mut a.args,
                msg.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(a.types, vec![STRING_RESULT, STRING_RESULT]);
        assert_eq!(i.maybe_null, 1);
        assert!(i.max_length >= 16 * 1024 * 1024);
        assert!(!i.ptr.is_null());
        let mut buf = [0 as c_char; 256];
        let (mut len, mut is_null, mut err) = (0 as c_ulong, 0 as c_char, 0 as c_char);
        let p = unsafe {
            call_string(
                &mut i,
                &mut a.args,
                buf.as_mut_ptr(),
                &mut len,
                &mut is_null,
                &mut err,
            )
        };
        assert!(p.is_null());
        assert_eq!((is_null, err), (1, 0));
        assert_eq!(
            last_error().as_deref(),
            Some("gman_do: function name is NULL")
        );
        unsafe { deinit(&mut i) };
        assert!(i.ptr.is_null());
        unsafe { deinit(&mut i) }; // twice is harmless
    }

    #[test]
    fn a_panic_becomes_null_for_that_row() {
        let mut a = fake(&[]);
        let mut i = new_init();
        let mut msg = [0 as c_char; ERRMSG_SIZE];
        let rc = unsafe {
            init(
                "gman_last_error",
                Kind::LastError,
                &mut i,
                &mut a.args,
                msg.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        PANIC_NEXT.with(|p| p.set(true));
        let mut buf = [0 as c_char; 256];
        let (mut len, mut is_null, mut err) = (0 as c_ulong, 0 as c_char, 0 as c_char);
        let p = unsafe {
            call_string(
                &mut i,
                &mut a.args,
                buf.as_mut_ptr(),
                &mut len,
                &mut is_null,
                &mut err,
            )
        };
        assert!(p.is_null());
        assert_eq!((is_null, err), (1, 0));
        let e = last_error().unwrap();
        assert!(
            e.contains("internal error") && e.contains("injected"),
            "{e}"
        );
        unsafe { deinit(&mut i) };
    }

    #[test]
    fn null_pointers_are_refused_not_dereferenced() {
        let mut msg = [0 as c_char; ERRMSG_SIZE];
        assert_eq!(
            unsafe {
                init(
                    "gman_do",
                    Kind::Do(Priority::Normal),
                    null_mut(),
                    null_mut(),
                    msg.as_mut_ptr(),
                )
            },
            1
        );
        unsafe { deinit(null_mut()) };
        let (mut is_null, mut err) = (0 as c_char, 0 as c_char);
        let p = unsafe {
            call_string(
                null_mut(),
                null_mut(),
                null_mut(),
                null_mut(),
                &mut is_null,
                &mut err,
            )
        };
        assert!(p.is_null());
        assert_eq!((is_null, err), (1, 0));
        assert_eq!(
            unsafe { sum_value(null_mut(), null_mut(), &mut is_null, &mut err) },
            0
        );
    }
}
