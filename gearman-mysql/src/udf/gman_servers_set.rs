//! `gman_servers_set(servers [, function])`: changes the routing table
//! (process-wide), when the configuration file allows it.

use super::{Signature, Site, Udf};
use crate::abi::{Arg, ItemResult};
use crate::runtime::{runtime, Runtime};
use gearman_core::ServerList;

/// Sets the default list, or one function's.
#[derive(Debug, Clone, Copy)]
pub struct ServersSet;

impl Udf for ServersSet {
    fn signature(&self) -> Signature {
        Signature {
            usage: "(servers [, function])",
            min: 1,
            max: 2,
        }
    }

    /// Refused at `_init` (the statement fails) unless `allow_servers_set`.
    fn init(&mut self, name: &str, types: &[ItemResult]) -> Result<Vec<ItemResult>, String> {
        let wanted = self.signature().check(name, types)?;
        if let Ok(rt) = runtime() {
            if !rt.config.allow_servers_set {
                return Err(locked(rt));
            }
        }
        Ok(wanted)
    }

    /// Returns its first argument as given (as gearman-mysql-udf did:
    /// `'127.0.0.1'`, not `'127.0.0.1:4730'`); NULL when that argument is
    /// NULL (the form that clears a function's own list).
    fn process(&mut self, _site: &mut Site, args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        let rt = runtime()?;
        if !rt.config.allow_servers_set {
            return Err(locked(rt));
        }
        let function = args.get(1).and_then(Arg::to_bytes);
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
        // The routing table checks the function name.
        rt.set_servers(function.as_deref(), list)
            .map_err(|e| e.message().to_string())?;
        Ok(given)
    }
}

/// The error text when the configuration forbids `gman_servers_set`.
fn locked(rt: &Runtime) -> String {
    format!(
        "gman_servers_set is disabled: allow_servers_set = false in {} \
         (false unless the server's administrator sets it to true there)",
        rt.config_path.display()
    )
}
