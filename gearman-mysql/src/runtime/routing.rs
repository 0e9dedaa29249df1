//! The routing table: the default server list and the functions' own lists.

use gearman_core::{ServerAddr, ServerList};
use std::collections::HashMap;

/// Which server list each function's jobs go to.
#[derive(Debug, Clone)]
pub struct Routing {
    /// The list of every function without its own.
    pub default: ServerList,
    /// The functions' own lists.
    pub per_function: HashMap<Vec<u8>, ServerList>,
}

impl Routing {
    /// The server list a job for `function` goes to.
    pub fn servers_for(&self, function: &[u8]) -> ServerList {
        self.per_function
            .get(function)
            .unwrap_or(&self.default)
            .clone()
    }

    /// Sets the default list (`function` None) or one function's list;
    /// `list` None removes a function's own list.
    pub fn set(&mut self, function: Option<&[u8]>, list: Option<ServerList>) {
        match (function, list) {
            (None, Some(l)) => self.default = l,
            (Some(f), Some(l)) => {
                self.per_function.insert(f.to_vec(), l);
            }
            (Some(f), None) => {
                self.per_function.remove(f);
            }
            (None, None) => {}
        }
    }

    /// The default list, then the functions' own lists in function-name order.
    fn lists(&self) -> Vec<&ServerList> {
        let mut fl: Vec<(&Vec<u8>, &ServerList)> = self.per_function.iter().collect();
        fl.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = vec![&self.default];
        out.extend(fl.into_iter().map(|(_, l)| l));
        out
    }

    /// Every distinct server list: the default list first, then the
    /// functions' own lists in function-name order.
    pub fn all_lists(&self) -> Vec<ServerList> {
        let mut out: Vec<ServerList> = Vec::new();
        for l in self.lists() {
            if !out.contains(l) {
                out.push(l.clone());
            }
        }
        out
    }

    /// Every distinct server, default list first.
    pub fn all_servers(&self) -> Vec<ServerAddr> {
        let mut out: Vec<ServerAddr> = Vec::new();
        for l in self.lists() {
            for a in l.iter() {
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
        }
        out
    }
}
