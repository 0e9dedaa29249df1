//! The C entry points: generated per function by [`export_udf!`] and
//! [`export_aggregate!`] from the traits in [`crate::udf`], they only
//! translate pointers to and from safe Rust. Every entry point runs inside
//! `catch_unwind`: a panic becomes an error result (init message, or NULL
//! for that row), never an unwind into mariadbd.
//!
//! A failing row returns NULL with the error flag left clear: MariaDB and
//! MySQL stop calling a UDF for the rest of the statement (and every later
//! group of an aggregate) once it sets the flag, so one bad row would turn
//! every later row NULL without sending its job. The failure is reported by
//! `gman_last_error()` and the statement's error-log line instead.

use super::{Aggregate, Site, Udf};
use crate::abi::{self, ItemResult, UdfArgs, UdfInit};
use crate::runtime::{
    clear_last_error, flush_deferred_failures, log_error, runtime, set_last_error,
};
use std::os::raw::{c_char, c_ulong};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Exports each string function `$name` (`$name_init`, `$name`,
/// `$name_deinit`) whose behaviour is the [`Udf`] value `$make` of type `$ty`
/// (made anew for each call-site).
#[macro_export]
macro_rules! export_udf {
    ($($name:ident, $init:ident, $deinit:ident: $ty:ty = $make:expr;)*) => {$(
        #[doc = concat!("`", stringify!($init), "`: checks the arguments of `", stringify!($name), "`.")]
        ///
        /// # Safety
        /// Called by the server with its `UDF_INIT`, `UDF_ARGS` and message buffer.
        #[no_mangle]
        pub unsafe extern "C" fn $init(
            initid: *mut $crate::abi::UdfInit,
            args: *mut $crate::abi::UdfArgs,
            message: *mut ::std::os::raw::c_char,
        ) -> ::std::os::raw::c_char {
            // SAFETY: server pointers forwarded unchanged.
            unsafe {
                $crate::udf::export::init::<$ty>(stringify!($name), || $make, initid, args, message)
            }
        }

        #[doc = concat!("`", stringify!($deinit), "`: frees the state of `", stringify!($name), "`.")]
        ///
        /// # Safety
        /// Called by the server with the `UDF_INIT` given to `_init`.
        #[no_mangle]
        pub unsafe extern "C" fn $deinit(initid: *mut $crate::abi::UdfInit) {
            // SAFETY: server pointer forwarded unchanged.
            unsafe { $crate::udf::export::deinit::<$ty>(initid) }
        }

        #[doc = concat!("The SQL function `", stringify!($name), "` (one row).")]
        ///
        /// # Safety
        /// Called by the server with the pointers of a string UDF call.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            initid: *mut $crate::abi::UdfInit,
            args: *mut $crate::abi::UdfArgs,
            result: *mut ::std::os::raw::c_char,
            length: *mut ::std::os::raw::c_ulong,
            is_null: *mut ::std::os::raw::c_char,
            error: *mut ::std::os::raw::c_char,
        ) -> *mut ::std::os::raw::c_char {
            // SAFETY: server pointers forwarded unchanged.
            unsafe {
                $crate::udf::export::call_string::<$ty>(initid, args, result, length, is_null, error)
            }
        }
    )*};
}

/// Exports the aggregate function `$name` (`_init`, `_deinit`, `_clear`,
/// `_add`, `_reset` and the value function) whose behaviour is the
/// [`Aggregate`] value `$make` of type `$ty`.
#[macro_export]
macro_rules! export_aggregate {
    ($($name:ident, $init:ident, $deinit:ident, $clear:ident, $add:ident, $reset:ident:
     $ty:ty = $make:expr;)*) => {$(
        #[doc = concat!("`", stringify!($init), "`: checks the arguments of the aggregate `", stringify!($name), "`.")]
        ///
        /// # Safety
        /// Called by the server with its `UDF_INIT`, `UDF_ARGS` and message buffer.
        #[no_mangle]
        pub unsafe extern "C" fn $init(
            initid: *mut $crate::abi::UdfInit,
            args: *mut $crate::abi::UdfArgs,
            message: *mut ::std::os::raw::c_char,
        ) -> ::std::os::raw::c_char {
            // SAFETY: server pointers forwarded unchanged.
            unsafe {
                $crate::udf::export::aggregate_init::<$ty>(
                    stringify!($name),
                    || $make,
                    initid,
                    args,
                    message,
                )
            }
        }

        #[doc = concat!("`", stringify!($deinit), "`.")]
        ///
        /// # Safety
        /// Called by the server with the `UDF_INIT` given to `_init`.
        #[no_mangle]
        pub unsafe extern "C" fn $deinit(initid: *mut $crate::abi::UdfInit) {
            // SAFETY: server pointer forwarded unchanged.
            unsafe { $crate::udf::export::deinit::<$ty>(initid) }
        }

        #[doc = concat!("`", stringify!($clear), "`: starts a group.")]
        ///
        /// # Safety
        /// Called by the server.
        #[no_mangle]
        pub unsafe extern "C" fn $clear(
            initid: *mut $crate::abi::UdfInit,
            is_null: *mut ::std::os::raw::c_char,
            error: *mut ::std::os::raw::c_char,
        ) {
            // SAFETY: server pointers forwarded unchanged.
            unsafe { $crate::udf::export::aggregate_clear::<$ty>(initid, is_null, error) }
        }

        #[doc = concat!("`", stringify!($add), "`: one row of the group.")]
        ///
        /// # Safety
        /// Called by the server.
        #[no_mangle]
        pub unsafe extern "C" fn $add(
            initid: *mut $crate::abi::UdfInit,
            args: *mut $crate::abi::UdfArgs,
            is_null: *mut ::std::os::raw::c_char,
            error: *mut ::std::os::raw::c_char,
        ) {
            // SAFETY: server pointers forwarded unchanged.
            unsafe { $crate::udf::export::aggregate_add::<$ty>(initid, args, is_null, error) }
        }

        #[doc = concat!("`", stringify!($reset), "` (servers before 4.1 semantics): clear + add.")]
        ///
        /// # Safety
        /// Called by the server.
        #[no_mangle]
        pub unsafe extern "C" fn $reset(
            initid: *mut $crate::abi::UdfInit,
            args: *mut $crate::abi::UdfArgs,
            is_null: *mut ::std::os::raw::c_char,
            error: *mut ::std::os::raw::c_char,
        ) {
            // SAFETY: server pointers forwarded unchanged.
            unsafe { $crate::udf::export::aggregate_reset::<$ty>(initid, args, is_null, error) }
        }

        #[doc = concat!("`", stringify!($name), "`: the group's value.")]
        ///
        /// # Safety
        /// Called by the server.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            initid: *mut $crate::abi::UdfInit,
            args: *mut $crate::abi::UdfArgs,
            is_null: *mut ::std::os::raw::c_char,
            error: *mut ::std::os::raw::c_char,
        ) -> i64 {
            // SAFETY: server pointers forwarded unchanged.
            unsafe { $crate::udf::export::aggregate_value::<$ty>(initid, args, is_null, error) }
        }
    )*};
}

/// Result strings may be this long unless the configuration says otherwise
/// (`max_result_bytes`); the server picks the column type from it (16 MiB:
/// MEDIUMBLOB-sized, the default `max_allowed_packet`).
const RESULT_MAX_LENGTH: c_ulong = crate::config::DEFAULT_MAX_RESULT as c_ulong;

/// The state behind `UDF_INIT.ptr`: the call-site and the function's own.
#[derive(Debug)]
struct Slot<U> {
    site: Site,
    udf: U,
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// What differs between the `_init` of a string and of an aggregate function.
#[derive(Debug, Clone, Copy)]
struct InitSpec {
    /// See [`Udf::clears_last_error`].
    clears_last_error: bool,
    /// The result length declared to the server.
    max_length: fn() -> c_ulong,
}

fn string_max_length() -> c_ulong {
    runtime()
        .map(|rt| rt.config.max_result_bytes as c_ulong)
        .unwrap_or(RESULT_MAX_LENGTH)
}

/// The shared body of every `xxx_init`: `check` validates the argument
/// types and returns the wanted ones.
///
/// # Safety
/// Pointers as passed by the server to `xxx_init`.
unsafe fn init_with<U>(
    name: &'static str,
    udf: U,
    spec: InitSpec,
    check: impl FnOnce(&mut U, &[ItemResult]) -> Result<Vec<ItemResult>, String>,
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    message: *mut c_char,
) -> c_char {
    let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        // A statement that calls a gman_* function starts with a clean
        // slate for its connection (see `crate::runtime::session`).
        if spec.clears_last_error {
            clear_last_error();
        }
        if initid.is_null() || args.is_null() {
            return Err(format!("{name}: called without UDF_INIT/UDF_ARGS"));
        }
        // SAFETY: non-null pointers from the server, valid during _init.
        let (initid, args) = unsafe { (&mut *initid, &mut *args) };
        // SAFETY: `args` is the server's UDF_ARGS for this _init.
        let types = unsafe { abi::arg_types(args) };
        let mut udf = udf;
        let wanted = check(&mut udf, &types)?;
        for (i, t) in wanted.into_iter().enumerate() {
            // SAFETY: i < arg_count, inside _init.
            unsafe { abi::set_arg_type(args, i, t) };
        }
        initid.maybe_null = 1;
        initid.const_item = 0;
        initid.decimals = 0;
        initid.max_length = (spec.max_length)();
        let slot = Slot {
            site: Site::new(name),
            udf,
        };
        initid.ptr = Box::into_raw(Box::new(slot)) as *mut c_char;
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

/// `xxx_init` of a string function.
///
/// # Safety
/// Pointers as passed by the server to `xxx_init`.
pub unsafe fn init<U: Udf>(
    name: &'static str,
    make: impl FnOnce() -> U,
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    message: *mut c_char,
) -> c_char {
    let Ok(udf) = catch_unwind(AssertUnwindSafe(make)) else {
        // SAFETY: the server's message buffer.
        unsafe { abi::write_message(message, &format!("{name}: internal error")) };
        return 1;
    };
    let spec = InitSpec {
        clears_last_error: udf.clears_last_error(),
        max_length: string_max_length,
    };
    // SAFETY: server pointers forwarded unchanged.
    unsafe {
        init_with(
            name,
            udf,
            spec,
            |u, t| u.init(name, t),
            initid,
            args,
            message,
        )
    }
}

/// `xxx_init` of an aggregate function.
///
/// # Safety
/// Pointers as passed by the server to `xxx_init`.
pub unsafe fn aggregate_init<A: Aggregate>(
    name: &'static str,
    make: impl FnOnce() -> A,
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    message: *mut c_char,
) -> c_char {
    let Ok(agg) = catch_unwind(AssertUnwindSafe(make)) else {
        // SAFETY: the server's message buffer.
        unsafe { abi::write_message(message, &format!("{name}: internal error")) };
        return 1;
    };
    // SAFETY: server pointers forwarded unchanged.
    unsafe {
        init_with(
            name,
            agg,
            InitSpec {
                clears_last_error: true,
                max_length: || 21,
            },
            |a, t| a.init(name, t),
            initid,
            args,
            message,
        )
    }
}

/// `xxx_deinit`: writes the statement's one error-log line (and one for the
/// pipelined background jobs this thread found refused or lost), frees the
/// state.
///
/// # Safety
/// `initid` as passed by the server to `xxx_deinit`; `U` the type its
/// `_init` stored.
pub unsafe fn deinit<U>(initid: *mut UdfInit) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if initid.is_null() {
            return;
        }
        // SAFETY: non-null, from the server.
        let initid = unsafe { &mut *initid };
        if initid.ptr.is_null() {
            return;
        }
        // SAFETY: ptr was made by Box::into_raw of a Slot<U> in init and is
        // freed only here.
        let slot = unsafe { Box::from_raw(initid.ptr as *mut Slot<U>) };
        initid.ptr = std::ptr::null_mut();
        if let Some(line) = slot.site.summary() {
            log_error(&line);
        }
        // Pipelined background jobs: read the confirmations that have
        // arrived meanwhile (without waiting), then write one line for the
        // failures this thread collected during the statement.
        if slot.site.pipelined > 0 {
            if let Ok(rt) = runtime() {
                rt.collect_idle();
            }
        }
        flush_deferred_failures();
    }));
}

/// # Safety
/// `initid` from the server; returns the state made by `init` for `U`.
unsafe fn state<'a, U>(initid: *mut UdfInit) -> Option<&'a mut Slot<U>> {
    if initid.is_null() {
        return None;
    }
    // SAFETY: non-null UDF_INIT from the server; ptr is our Box<Slot<U>> or null.
    unsafe {
        let p = (*initid).ptr as *mut Slot<U>;
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

/// The string function `xxx()`: one row.
///
/// # Safety
/// Pointers as passed by the server to a string UDF; `U` the type its
/// `_init` stored.
pub unsafe fn call_string<U: Udf>(
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    result: *mut c_char,
    length: *mut c_ulong,
    is_null: *mut c_char,
    error: *mut c_char,
) -> *mut c_char {
    let r = catch_unwind(AssertUnwindSafe(|| -> Option<*mut c_char> {
        // SAFETY: from the server.
        let Slot { site, udf } = unsafe { state::<U>(initid) }?;
        #[cfg(test)]
        if PANIC_NEXT.with(|p| p.replace(false)) {
            panic!("injected test panic");
        }
        if args.is_null() {
            site.fail(format!("{}: called without arguments", site.name));
            return None;
        }
        // SAFETY: args from the server, valid during this call.
        let argv = unsafe { abi::all_args(&*args) };
        site.calls += 1;
        match udf.process(site, &argv) {
            Ok(Some(bytes)) => {
                site.result = bytes;
                // SAFETY: length is the server's out-parameter.
                unsafe {
                    if !length.is_null() {
                        *length = site.result.len() as c_ulong;
                    }
                    set_flag(is_null, 0);
                    set_flag(error, 0);
                }
                if site.result.is_empty() {
                    // A valid non-null pointer for an empty string.
                    return Some(result);
                }
                Some(site.result.as_mut_ptr() as *mut c_char)
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
                site.fail(format!("{}: {msg}", site.name));
                None
            }
        }
    }));
    if let Err(p) = &r {
        panicked::<U>(initid, &**p);
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

fn panicked<U>(initid: *mut UdfInit, p: &(dyn std::any::Any + Send)) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: from the server.
        let name = unsafe { state::<U>(initid) }
            .map(|s| s.site.name)
            .unwrap_or("gman");
        let msg = format!("{name}: internal error: {}", panic_text(p));
        set_last_error(&msg);
        log_error(&msg);
    }));
}

/// `xxx_clear` of an aggregate.
///
/// # Safety
/// Pointers as passed by the server.
pub unsafe fn aggregate_clear<A: Aggregate>(
    initid: *mut UdfInit,
    is_null: *mut c_char,
    error: *mut c_char,
) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: from the server.
        if let Some(s) = unsafe { state::<A>(initid) } {
            s.udf.clear();
        }
    }));
    if let Err(p) = r {
        panicked::<A>(initid, &*p);
    }
    // SAFETY: the server's flag pointers.
    unsafe {
        set_flag(is_null, 0);
        set_flag(error, 0);
    }
}

/// `xxx_add` of an aggregate.
///
/// # Safety
/// Pointers as passed by the server.
pub unsafe fn aggregate_add<A: Aggregate>(
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    _is_null: *mut c_char,
    _error: *mut c_char,
) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: from the server.
        if let (Some(s), false) = (unsafe { state::<A>(initid) }, args.is_null()) {
            // SAFETY: args valid during this call.
            let argv = unsafe { abi::all_args(&*args) };
            s.udf.add(&argv);
        }
    }));
    if let Err(p) = r {
        panicked::<A>(initid, &*p);
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: from the server.
            if let Some(s) = unsafe { state::<A>(initid) } {
                s.udf.add_failed("internal error while adding a row".into());
            }
        }));
    }
}

/// `xxx_reset` of an aggregate (older servers): clear, then add this row.
///
/// # Safety
/// Pointers as passed by the server.
pub unsafe fn aggregate_reset<A: Aggregate>(
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    is_null: *mut c_char,
    error: *mut c_char,
) {
    // SAFETY: forwarded server pointers.
    unsafe {
        aggregate_clear::<A>(initid, is_null, error);
        aggregate_add::<A>(initid, args, is_null, error);
    }
}

/// `xxx()` of an aggregate: the group's value.
///
/// # Safety
/// Pointers as passed by the server.
pub unsafe fn aggregate_value<A: Aggregate>(
    initid: *mut UdfInit,
    _args: *mut UdfArgs,
    is_null: *mut c_char,
    error: *mut c_char,
) -> i64 {
    let r = catch_unwind(AssertUnwindSafe(|| -> Result<Option<i64>, ()> {
        // SAFETY: from the server.
        let Slot { site, udf } = unsafe { state::<A>(initid) }.ok_or(())?;
        site.calls += 1;
        udf.result(site)
            .map_err(|e| site.fail(format!("{}: {e}", site.name)))
    }));
    let (value, null) = match r {
        Ok(Ok(Some(v))) => (v, 0),
        Ok(Ok(None)) => (0, 1),
        // This group only: NULL without the error flag, so later groups
        // are still computed (see the module docs).
        Ok(Err(())) => (0, 1),
        Err(p) => {
            panicked::<A>(initid, &*p);
            (0, 1)
        }
    };
    // SAFETY: the server's flag pointers.
    unsafe {
        set_flag(is_null, null);
        set_flag(error, 0);
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
    use crate::udf::gman_do::Do;
    use crate::udf::gman_last_error::LastError;
    use crate::udf::gman_sum::Sum;
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
                || Do(Priority::Normal),
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
                || Do(Priority::Normal),
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
            call_string::<Do>(
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
        unsafe { deinit::<Do>(&mut i) };
        assert!(i.ptr.is_null());
        unsafe { deinit::<Do>(&mut i) }; // twice is harmless
    }

    #[test]
    fn a_panic_becomes_null_for_that_row() {
        let mut a = fake(&[]);
        let mut i = new_init();
        let mut msg = [0 as c_char; ERRMSG_SIZE];
        let rc = unsafe {
            init(
                "gman_last_error",
                || LastError,
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
            call_string::<LastError>(
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
        unsafe { deinit::<LastError>(&mut i) };
    }

    #[test]
    fn null_pointers_are_refused_not_dereferenced() {
        let mut msg = [0 as c_char; ERRMSG_SIZE];
        assert_eq!(
            unsafe {
                init(
                    "gman_do",
                    || Do(Priority::Normal),
                    null_mut(),
                    null_mut(),
                    msg.as_mut_ptr(),
                )
            },
            1
        );
        unsafe { deinit::<Do>(null_mut()) };
        let (mut is_null, mut err) = (0 as c_char, 0 as c_char);
        let p = unsafe {
            call_string::<Do>(
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
            unsafe { aggregate_value::<Sum>(null_mut(), null_mut(), &mut is_null, &mut err) },
            0
        );
    }
}
