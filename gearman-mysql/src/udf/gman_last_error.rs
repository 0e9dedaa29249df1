//! `gman_last_error()`: this connection's last error (see
//! [`crate::runtime::session`]).

use super::{Signature, Site, Udf};
use crate::abi::Arg;
use crate::runtime::last_error;

/// The last error of the calling connection.
#[derive(Debug, Clone, Copy)]
pub struct LastError;

impl Udf for LastError {
    fn signature(&self) -> Signature {
        Signature {
            usage: "()",
            min: 0,
            max: 0,
        }
    }

    /// Reading the last error must not clear it.
    fn clears_last_error(&self) -> bool {
        false
    }

    fn process(&mut self, _site: &mut Site, _args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        Ok(last_error().map(String::into_bytes))
    }
}
