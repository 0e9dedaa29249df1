//! The routing table: which server list each job goes to.
//!
//! A [`Routing`] holds a default [`ServerList`] and per-function lists
//! (`gman_servers_set(servers, function)` in both databases). A job goes to
//! its function's list if it has one, else to the default list. A
//! [`Client`](crate::Client) routes every job through its table and keeps
//! one connection per server, shared by every list that names it.

use crate::error::Result;
use crate::job::{validate_function_name, Job};
use crate::servers::{ServerAddr, ServerList};
use std::collections::BTreeMap;

/// A default server list and per-function lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    default: ServerList,
    functions: BTreeMap<Vec<u8>, ServerList>,
}

impl Routing {
    /// A table with `default` and no per-function list.
    pub fn new(default: ServerList) -> Routing {
        Routing {
            default,
            functions: BTreeMap::new(),
        }
    }

    /// The default list.
    pub fn default_list(&self) -> &ServerList {
        &self.default
    }

    /// Replaces the default list.
    pub fn set_default(&mut self, list: ServerList) {
        self.default = list;
    }

    /// Sets (`Some`) or removes (`None`) the list of one function.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] for a function name refused by
    /// [`validate_function_name`]; the table is unchanged then.
    pub fn set_function(&mut self, function: &[u8], list: Option<ServerList>) -> Result<()> {
        validate_function_name(function)?;
        match list {
            Some(l) => {
                self.functions.insert(function.to_vec(), l);
            }
            None => {
                self.functions.remove(function);
            }
        }
        Ok(())
    }

    /// The function's own list, if it has one.
    pub fn function_list(&self, function: &[u8]) -> Option<&ServerList> {
        self.functions.get(function)
    }

    /// The list a job for `function` goes to: its own, else the default.
    pub fn lookup(&self, function: &[u8]) -> &ServerList {
        self.functions.get(function).unwrap_or(&self.default)
    }

    /// The per-function lists, by function name (bytes order).
    pub fn functions(&self) -> impl Iterator<Item = (&[u8], &ServerList)> {
        self.functions.iter().map(|(f, l)| (f.as_slice(), l))
    }

    /// Every distinct list: the default first, then the per-function lists
    /// in function-name order, each once.
    pub fn lists(&self) -> Vec<&ServerList> {
        let mut out = vec![&self.default];
        for l in self.functions.values() {
            if !out.contains(&l) {
                out.push(l);
            }
        }
        out
    }

    /// Every distinct server, in first-seen order over [`Routing::lists`].
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

    /// Whether some list names `addr`.
    pub fn names(&self, addr: &ServerAddr) -> bool {
        self.default.iter().any(|a| a == addr)
            || self.functions.values().any(|l| l.iter().any(|a| a == addr))
    }

    /// Groups jobs by the list they go to: one entry per distinct list, in
    /// order of first use, with the input indices of its jobs in order.
    pub fn group(&self, jobs: &[Job]) -> Vec<(ServerList, Vec<usize>)> {
        let mut out: Vec<(&ServerList, Vec<usize>)> = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            let l = self.lookup(&j.function);
            match out.iter_mut().find(|(x, _)| *x == l) {
                Some((_, v)) => v.push(i),
                None => out.push((l, vec![i])),
            }
        }
        out.into_iter().map(|(l, v)| (l.clone(), v)).collect()
    }
}

impl From<ServerList> for Routing {
    fn from(default: ServerList) -> Routing {
        Routing::new(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> ServerList {
        ServerList::parse(s).unwrap()
    }

    #[test]
    fn lookup_lists_servers_and_groups() {
        let mut r = Routing::new(l("a,b"));
        r.set_function(b"f", Some(l("b,c"))).unwrap();
        r.set_function(b"g", Some(l("a,b"))).unwrap();
        r.set_function(b"h", Some(l("d"))).unwrap();
        assert_eq!(r.lookup(b"f"), &l("b,c"));
        assert_eq!(r.lookup(b"x"), &l("a,b"));
        assert_eq!(r.lists(), vec![&l("a,b"), &l("b,c"), &l("d")]);
        let all: Vec<String> = r.all_servers().iter().map(|a| a.host.clone()).collect();
        assert_eq!(all, ["a", "b", "c", "d"]);
        assert!(r.names(&l("c").get(0).unwrap().clone()));
        let jobs = [
            Job::new("f", ""),
            Job::new("x", ""),
            Job::new("g", ""),
            Job::new("f", ""),
            Job::new("h", ""),
        ];
        let g = r.group(&jobs);
        assert_eq!(
            g,
            vec![
                (l("b,c"), vec![0, 3]),
                (l("a,b"), vec![1, 2]),
                (l("d"), vec![4])
            ]
        );
        r.set_function(b"h", None).unwrap();
        assert_eq!(r.lookup(b"h"), &l("a,b"));
        let e = r.set_function(b"bad name", Some(l("z"))).unwrap_err();
        assert!(e.to_string().contains("function name"), "{e}");
        assert!(r.function_list(b"bad name").is_none());
        assert_eq!(Routing::from(l("q")).default_list(), &l("q"));
    }
}
