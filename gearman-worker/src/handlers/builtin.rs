//! Built-in handlers for tests and examples: `echo`, `reverse`, `length`.

use super::{Handler, JobError};
use crate::config::Builtin;

/// A built-in handler.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinHandler {
    kind: Builtin,
}

impl BuiltinHandler {
    /// The handler for `kind`.
    pub fn new(kind: Builtin) -> BuiltinHandler {
        BuiltinHandler { kind }
    }
}

/// Reverses `workload` by character when it is UTF-8 (like `rev`), else by byte.
pub fn reverse(workload: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(workload) {
        Ok(s) => s.chars().rev().collect::<String>().into_bytes(),
        Err(_) => workload.iter().rev().copied().collect(),
    }
}

impl Handler for BuiltinHandler {
    fn call(&self, workload: &[u8]) -> Result<Vec<u8>, JobError> {
        Ok(match self.kind {
            Builtin::Echo => workload.to_vec(),
            Builtin::Reverse => reverse(workload),
            Builtin::Length => workload.len().to_string().into_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_returns_the_workload_byte_for_byte() {
        let h = BuiltinHandler::new(Builtin::Echo);
        assert_eq!(h.call(b"a\0b\xff").unwrap(), b"a\0b\xff");
        assert_eq!(h.call(b"").unwrap(), b"");
    }

    #[test]
    fn reverse_by_char_or_byte() {
        let h = BuiltinHandler::new(Builtin::Reverse);
        assert_eq!(h.call(b"test").unwrap(), b"tset");
        assert_eq!(h.call("héllo".as_bytes()).unwrap(), "olléh".as_bytes());
        assert_eq!(h.call(b"\x01\xff\x02").unwrap(), b"\x02\xff\x01");
    }

    #[test]
    fn length_is_decimal_bytes() {
        let h = BuiltinHandler::new(Builtin::Length);
        assert_eq!(h.call(b"").unwrap(), b"0");
        assert_eq!(h.call("héllo".as_bytes()).unwrap(), b"6");
    }
}
