//! The C UDF ABI of MariaDB 10.x / MySQL 8, written by hand.
//!
//! Layout taken from the *server* header (`include/mysql_com.h` in MariaDB,
//! `include/mysql/udf_registration_types.h` in MySQL 8), not from the client
//! library's `mariadb_com.h`, which lacks the `attributes` / `extension` fields
//! and declares `max_length` as `unsigned int`. `my_bool` / C++ `bool` is one
//! byte on every supported platform, so it is modelled as `c_char`.

use std::os::raw::{c_char, c_uint, c_ulong, c_void};

/// `enum Item_result`: the type of one argument (or of a result).
pub type ItemResult = i32;
/// A string (also any type the server converts to a string for us).
pub const STRING_RESULT: ItemResult = 0;
/// A `double`.
pub const REAL_RESULT: ItemResult = 1;
/// A `long long`.
pub const INT_RESULT: ItemResult = 2;
/// A row value `(a, b)`: never valid for our functions.
pub const ROW_RESULT: ItemResult = 3;
/// A decimal, passed as its text.
pub const DECIMAL_RESULT: ItemResult = 4;

/// Size of the `message` buffer given to `xxx_init` (`MYSQL_ERRMSG_SIZE`).
pub const ERRMSG_SIZE: usize = 512;

/// `UDF_ARGS` (`struct st_udf_args`).
#[repr(C)]
#[derive(Debug)]
pub struct UdfArgs {
    pub arg_count: c_uint,
    pub arg_type: *mut ItemResult,
    pub args: *mut *mut c_char,
    pub lengths: *mut c_ulong,
    pub maybe_null: *mut c_char,
    pub attributes: *mut *const c_char,
    pub attribute_lengths: *mut c_ulong,
    pub extension: *mut c_void,
}

/// `UDF_INIT` (`struct st_udf_init`).
#[repr(C)]
#[derive(Debug)]
pub struct UdfInit {
    pub maybe_null: c_char,
    pub decimals: c_uint,
    pub max_length: c_ulong,
    pub ptr: *mut c_char,
    pub const_item: c_char,
    pub extension: *mut c_void,
}

/// One argument value as seen at call time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg<'a> {
    /// SQL NULL.
    Null,
    /// A string (or a value the server converted to one): raw bytes.
    Bytes(&'a [u8]),
    /// An integer.
    Int(i64),
    /// A double.
    Real(f64),
}

impl Arg<'_> {
    /// The value as bytes: strings as they are, numbers as their decimal
    /// text, NULL as `None`.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Arg::Null => None,
            Arg::Bytes(b) => Some(b.to_vec()),
            Arg::Int(i) => Some(i.to_string().into_bytes()),
            Arg::Real(r) => Some(r.to_string().into_bytes()),
        }
    }
}

/// Reads argument `i` of a call.
///
/// # Safety
/// `args` must be the `UDF_ARGS` the server passed to the current call and
/// `i < arg_count`.
pub unsafe fn arg<'a>(args: &'a UdfArgs, i: usize) -> Arg<'a> {
    // SAFETY: the caller guarantees `args` comes from the server and i is in range;
    // the server keeps the pointed-to values alive for the duration of the call.
    unsafe {
        let p = *args.args.add(i);
        if p.is_null() {
            return Arg::Null;
        }
        match *args.arg_type.add(i) {
            INT_RESULT => Arg::Int(std::ptr::read_unaligned(p as *const i64)),
            REAL_RESULT => Arg::Real(std::ptr::read_unaligned(p as *const f64)),
            _ => {
                let len = *args.lengths.add(i) as usize;
                Arg::Bytes(std::slice::from_raw_parts(p as *const u8, len))
            }
        }
    }
}

/// Reads all arguments of a call.
///
/// # Safety
/// As for [`arg`].
pub unsafe fn all_args<'a>(args: &'a UdfArgs) -> Vec<Arg<'a>> {
    (0..args.arg_count as usize)
        // SAFETY: i < arg_count, args from the server (caller's guarantee).
        .map(|i| unsafe { arg(args, i) })
        .collect()
}

/// The declared types of the arguments (at `_init` time).
///
/// # Safety
/// `args` must be the `UDF_ARGS` the server passed to `_init`.
pub unsafe fn arg_types(args: &UdfArgs) -> Vec<ItemResult> {
    (0..args.arg_count as usize)
        // SAFETY: i < arg_count.
        .map(|i| unsafe { *args.arg_type.add(i) })
        .collect()
}

/// Asks the server to convert argument `i` to type `t` before each call.
///
/// # Safety
/// As for [`arg_types`]; only valid inside `_init`.
pub unsafe fn set_arg_type(args: &mut UdfArgs, i: usize, t: ItemResult) {
    // SAFETY: i < arg_count (caller), and the server reads arg_type after _init.
    unsafe { *args.arg_type.add(i) = t }
}

/// Copies `msg` into the server's `_init` message buffer, NUL-terminated and
/// cut to fit.
///
/// # Safety
/// `message` must point to a writable buffer of [`ERRMSG_SIZE`] bytes.
pub unsafe fn write_message(message: *mut c_char, msg: &str) {
    if message.is_null() {
        return;
    }
    let bytes = msg.as_bytes();
    let mut n = bytes.len().min(ERRMSG_SIZE - 1);
    // Do not cut inside a UTF-8 sequence.
    while n > 0 && !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the buffer holds ERRMSG_SIZE bytes (caller's guarantee) and n < ERRMSG_SIZE.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), message as *mut u8, n);
        *message.add(n) = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layout_matches_the_server_header_on_lp64() {
        assert_eq!(offset_of!(UdfArgs, arg_type), 8);
        assert_eq!(offset_of!(UdfArgs, args), 16);
        assert_eq!(offset_of!(UdfArgs, lengths), 24);
        assert_eq!(offset_of!(UdfArgs, maybe_null), 32);
        assert_eq!(offset_of!(UdfArgs, attributes), 40);
        assert_eq!(offset_of!(UdfArgs, attribute_lengths), 48);
        assert_eq!(offset_of!(UdfArgs, extension), 56);
        assert_eq!(size_of::<UdfArgs>(), 64);
        assert_eq!(offset_of!(UdfInit, decimals), 4);
        assert_eq!(offset_of!(UdfInit, max_length), 8);
        assert_eq!(offset_of!(UdfInit, ptr), 16);
        assert_eq!(offset_of!(UdfInit, const_item), 24);
        assert_eq!(offset_of!(UdfInit, extension), 32);
        assert_eq!(size_of::<UdfInit>(), 40);
    }

    #[test]
    fn message_is_cut_and_terminated() {
        let mut buf = [1 as c_char; ERRMSG_SIZE];
        let long = "é".repeat(400);
        unsafe { write_message(buf.as_mut_ptr(), &long) };
        let end = buf.iter().position(|&c| c == 0).unwrap();
        assert!(end < ERRMSG_SIZE);
        let s: Vec<u8> = buf[..end].iter().map(|&c| c as u8).collect();
        assert!(std::str::from_utf8(&s).is_ok());
    }

    #[test]
    fn numbers_become_decimal_text() {
        assert_eq!(Arg::Int(-42).to_bytes().unwrap(), b"-42");
        assert_eq!(Arg::Real(1.5).to_bytes().unwrap(), b"1.5");
        assert_eq!(Arg::Null.to_bytes(), None);
    }
}
