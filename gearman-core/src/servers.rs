//! Server lists, health tracking with back-off, and routing.
//!
//! A list is written `host[:port],host[:port]`; `host` alone means port 4730,
//! IPv6 addresses go in brackets (`[::1]:4730`). An entry written
//! `tls://host[:port]` is reached over TLS (see [`crate::TlsConfig`]): the
//! server's certificate is verified and nothing is ever sent to it in
//! plaintext; entries without the prefix are plaintext TCP as before. A job with a unique key
//! always goes to the same server while that server is healthy
//! (rendezvous hashing of the unique key), so coalescing and
//! GET_STATUS_UNIQUE keep working with several servers (protocol.md 4.1,
//! rule 7 of section 14). Other jobs are spread round-robin over healthy
//! servers. A server that refused a connection is skipped for a back-off
//! period that doubles up to a maximum; when every server is in back-off, all
//! are tried anyway, so a restarted server is found at the next call.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// The IANA port of the Gearman job server.
pub const DEFAULT_PORT: u16 = 4730;

/// A map keyed by job server address, hashed with FNV-1a instead of the
/// standard library's SipHash: the keys come from configuration, not from
/// the network, and the client looks a server up several times per job.
pub(crate) type AddrMap<V> = HashMap<ServerAddr, V, BuildHasherDefault<AddrHasher>>;

/// FNV-1a (64 bits), for [`AddrMap`].
pub(crate) struct AddrHasher(u64);

impl Default for AddrHasher {
    fn default() -> AddrHasher {
        AddrHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One job server address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerAddr {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Reached over TLS (the entry was written `tls://host[:port]`): the
    /// connection verifies the server's certificate against this host name
    /// or IP address and sends nothing before the handshake succeeded.
    pub tls: bool,
}

impl ServerAddr {
    /// A plaintext TCP server `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> ServerAddr {
        ServerAddr {
            host: host.into(),
            port,
            tls: false,
        }
    }

    /// A TLS server `tls://host:port`.
    pub fn new_tls(host: impl Into<String>, port: u16) -> ServerAddr {
        ServerAddr {
            host: host.into(),
            port,
            tls: true,
        }
    }

    /// Parses one `host[:port]` or `tls://host[:port]` entry.
    ///
    /// The prefix `tls://` (lower or upper case) asks for TLS; no other
    /// scheme is accepted (`tcp://`, `ssl://`, ... are refused naming the
    /// entry).
    ///
    /// `host` is a host name or IPv4 address (ASCII letters, digits, `-`,
    /// `.` and `_`) or an IPv6 address in brackets (`[::1]`, `[fe80::1]:4731`);
    /// `port` is 1 to 65535 and defaults to 4730. Anything else is refused
    /// with an error naming the entry: a bare IPv6 address (`::1`), more
    /// than one colon outside brackets (`a:b:c`, `garbage:::`), an empty or
    /// non-numeric port (`host:`, `127.0.0.1:4731:`), text after `]`.
    pub fn parse(s: &str) -> Result<ServerAddr> {
        let entry = s.trim();
        let bad = |why: &str| {
            Error::invalid_argument(format!(
                "invalid server address {entry:?}: {why} (expected host[:port], [ipv6]:port, \
                 or either with tls:// in front)"
            ))
        };
        let (s, tls) = match entry.find("://") {
            Some(i) if entry[..i].eq_ignore_ascii_case("tls") => (&entry[i + 3..], true),
            Some(_) => return Err(bad("the only scheme is tls://")),
            None => (entry, false),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let end = rest.find(']').ok_or_else(|| bad("missing ']'"))?;
            let host = &rest[..end];
            let after = &rest[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("unexpected text after ']'")),
            };
            // An IPv6 address, optionally with a zone (`fe80::1%eth0`).
            let (ip, zone) = match host.split_once('%') {
                Some((ip, zone)) => (ip, Some(zone)),
                None => (host, None),
            };
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("brackets must hold an IPv6 address"));
            }
            if zone.is_some_and(|z| {
                z.is_empty()
                    || !z
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            }) {
                return Err(bad("bad IPv6 zone after '%'"));
            }
            (host, port)
        } else {
            match s.matches(':').count() {
                0 => (s, None),
                1 => {
                    let (h, p) = s.split_once(':').expect("one colon");
                    (h, Some(p))
                }
                _ => {
                    return Err(bad(
                        "more than one ':' (an IPv6 address goes in brackets, e.g. [::1]:4730)",
                    ))
                }
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if !s.starts_with('[')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(bad(
                "a host name may hold only ASCII letters, digits, '-', '.' and '_'",
            ));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some("") => return Err(bad("empty port after ':'")),
            Some(p) if !p.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(bad("port must be a number from 1 to 65535"))
            }
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad("port must be a number from 1 to 65535")),
                Ok(p) => p,
            },
        };
        Ok(ServerAddr {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl fmt::Display for ServerAddr {
    /// `host:port`, `[ipv6]:port`, with `tls://` in front for TLS: the
    /// form [`ServerAddr::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            f.write_str("tls://")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An ordered, non-empty list of job servers without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerList {
    addrs: Vec<ServerAddr>,
}

impl ServerList {
    /// Parses `host[:port],tls://host[:port],...`. Spaces around entries are ignored;
    /// duplicates are dropped. Errors if the list is empty or an entry is bad.
    pub fn parse(s: &str) -> Result<ServerList> {
        let mut addrs: Vec<ServerAddr> = Vec::new();
        for part in s.split(',') {
            if part.trim().is_empty() {
                continue;
            }
            let a = ServerAddr::parse(part)?;
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err(Error::invalid_argument(format!(
                "server list {s:?} names no server (expected host[:port],...)"
            )));
        }
        Ok(ServerList { addrs })
    }

    /// A list of one server.
    pub fn single(addr: ServerAddr) -> ServerList {
        ServerList { addrs: vec![addr] }
    }

    /// The servers in order.
    pub fn iter(&self) -> std::slice::Iter<'_, ServerAddr> {
        self.addrs.iter()
    }

    /// Number of servers (at least one).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Always false: a list holds at least one server.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The server at index `i`.
    pub fn get(&self, i: usize) -> Option<&ServerAddr> {
        self.addrs.get(i)
    }
}

impl Default for ServerList {
    /// `127.0.0.1:4730`.
    fn default() -> ServerList {
        ServerList::single(ServerAddr::new("127.0.0.1", DEFAULT_PORT))
    }
}

impl fmt::Display for ServerList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.addrs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ServerList {
    type Err = Error;
    fn from_str(s: &str) -> Result<ServerList> {
        ServerList::parse(s)
    }
}

/// 64-bit FNV-1a with a final mix: small, stable across versions and platforms.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV alone mixes the last bytes poorly; finish with MurmurHash3's
    // fmix64 so rendezvous scores spread evenly.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[derive(Debug, Clone, Copy)]
struct Health {
    failures: u32,
    dead_until: Instant,
}

/// Health of servers as seen by one client, and the routing decisions.
#[derive(Debug, Default)]
pub struct Router {
    health: AddrMap<Health>,
    next: usize,
}

impl Router {
    /// Whether `addr` is in its back-off period now.
    pub fn is_dead(&self, addr: &ServerAddr, now: Instant) -> bool {
        self.health.get(addr).is_some_and(|h| h.dead_until > now)
    }

    /// Records a failed connect: back-off `base`, doubling per consecutive
    /// failure, at most `max`.
    pub fn mark_dead(&mut self, addr: &ServerAddr, base: Duration, max: Duration) {
        let h = self.health.entry(addr.clone()).or_insert(Health {
            failures: 0,
            dead_until: Instant::now(),
        });
        h.failures = h.failures.saturating_add(1);
        let factor = 1u32 << (h.failures - 1).min(16);
        let wait = base.saturating_mul(factor).min(max);
        h.dead_until = Instant::now() + wait;
    }

    /// When the back-off of `addr` ends, if its last connect failed
    /// (`None`: it did not, or it was never tried).
    pub fn backoff_until(&self, addr: &ServerAddr) -> Option<Instant> {
        self.health.get(addr).map(|h| h.dead_until)
    }

    /// Records a success: the server is healthy again.
    pub fn mark_alive(&mut self, addr: &ServerAddr) {
        self.health.remove(addr);
    }

    /// The order in which to try the servers of `list` for a job with the
    /// given unique key: healthy servers first (by rendezvous hash of the
    /// unique key, or round-robin without one), then those in back-off.
    pub fn order(&mut self, list: &ServerList, unique: Option<&[u8]>) -> Vec<usize> {
        let now = Instant::now();
        let n = list.len();
        let mut idx: Vec<usize> = (0..n).collect();
        match unique {
            Some(u) if !u.is_empty() && n > 1 => {
                // Highest score first; ties broken by position.
                let mut scored: Vec<(u64, usize)> = idx
                    .iter()
                    .map(|&i| {
                        let a = &list.addrs[i];
                        let port = a.port.to_be_bytes();
                        (fnv1a(&[a.host.as_bytes(), &port, u]), i)
                    })
                    .collect();
                scored.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
                idx = scored.into_iter().map(|(_, i)| i).collect();
            }
            _ if n > 1 => {
                let start = self.next % n;
                self.next = self.next.wrapping_add(1);
                idx.rotate_left(start);
            }
            _ => {}
        }
        let (alive, dead): (Vec<usize>, Vec<usize>) = idx
            .into_iter()
            .partition(|&i| !self.is_dead(&list.addrs[i], now));
        if alive.is_empty() {
            dead
        } else {
            // Servers in back-off are left out while any other is healthy.
            alive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_ipv6() {
        let l = ServerList::parse("a, b:7003,[::1]:4731,[fe80::1],[::1]").unwrap();
        let got: Vec<String> = l.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            got,
            [
                "a:4730",
                "b:7003",
                "[::1]:4731",
                "[fe80::1]:4730",
                "[::1]:4730"
            ]
        );
        assert_eq!(
            l.to_string(),
            "a:4730,b:7003,[::1]:4731,[fe80::1]:4730,[::1]:4730"
        );
        assert_eq!(ServerList::parse("x,x:4730").unwrap().len(), 1);
    }

    #[test]
    fn tls_entries_parse_and_print_back() {
        let l = ServerList::parse("tls://a, b:7003,TLS://[::1]:4731,tls://10.0.0.1:1,a").unwrap();
        let got: Vec<(String, bool)> = l.iter().map(|a| (a.to_string(), a.tls)).collect();
        assert_eq!(
            got,
            [
                ("tls://a:4730".to_string(), true),
                ("b:7003".to_string(), false),
                ("tls://[::1]:4731".to_string(), true),
                ("tls://10.0.0.1:1".to_string(), true),
                // The same host and port in plaintext is another entry.
                ("a:4730".to_string(), false),
            ]
        );
        assert_eq!(ServerList::parse(&l.to_string()).unwrap(), l);
        assert_eq!(l.get(0).unwrap().host, "a");
        assert_eq!(ServerList::parse("tls://x,tls://x:4730").unwrap().len(), 1);
        for bad in [
            "tls://",
            "tls://:4730",
            "tcp://a",
            "ssl://a:4730",
            "https://a",
            "tls:/a",
            "tls://tls://a",
            "://a",
            "tls://a:0",
            "tls://::1",
        ] {
            let e = ServerList::parse(&format!("ok,{bad}")).unwrap_err();
            assert_eq!(e.kind(), &crate::ErrorKind::InvalidArgument, "{bad}");
            assert!(
                e.to_string().contains(&format!("{bad:?}")),
                "{bad}: error does not name the entry: {e}"
            );
        }
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in [
            "", " , ", "a:0", "a:65536", "a:b", "[::1", "[::1]x", ":4730", "a b",
        ] {
            let e = ServerList::parse(bad).unwrap_err();
            assert_eq!(e.kind(), &crate::ErrorKind::InvalidArgument, "{bad}");
        }
    }

    /// Issue 10 item 6: only `host[:port]` and `[ipv6][:port]`; the error
    /// names the offending entry.
    #[test]
    fn refuses_what_is_not_host_port_naming_the_entry() {
        for bad in [
            "garbage:::",
            "a:b:c",
            "127.0.0.1:4731:",
            "host:",
            "::1",
            "fe80::1",
            "::",
            "a:+1",
            "a: 1",
            "a:-1",
            "[]",
            "[]:4730",
            "[host]:4730",
            "[127.0.0.1]",
            "[::1]:",
            "[::1]:x",
            "[::1]::4730",
            "[::1%]",
            "h/x",
            "h@x",
            "h\nx",
            "h\u{7f}",
            "[[::1]]",
            "h]:1",
            "héllo",
        ] {
            let list = format!("good:4730, {bad} ,other");
            let e = ServerList::parse(&list).unwrap_err();
            assert_eq!(e.kind(), &crate::ErrorKind::InvalidArgument, "{bad}");
            assert!(
                e.to_string().contains(&format!("{:?}", bad.trim())),
                "{bad}: error does not name the entry: {e}"
            );
        }
        for good in [
            "h",
            "h:1",
            "h:65535",
            "my-host.example.com:4730",
            "under_score",
            "10.0.0.1",
            "[::1]",
            "[::1]:4731",
            "[fe80::1%eth0]:4730",
            "[::ffff:127.0.0.1]:1",
        ] {
            ServerList::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Parsing never panics; whatever it accepts prints as a list
            /// that parses back to the same servers.
            #[test]
            fn accepted_lists_round_trip(s in "(tls://)?[a-z0-9:/\\[\\].,% _-]{0,40}") {
                if let Ok(l) = ServerList::parse(&s) {
                    let again = ServerList::parse(&l.to_string()).unwrap();
                    prop_assert_eq!(again, l);
                } else {
                    let e = ServerList::parse(&s).unwrap_err();
                    prop_assert_eq!(e.kind(), &crate::ErrorKind::InvalidArgument);
                }
            }

            /// Two or more colons outside brackets is never a server.
            #[test]
            fn two_colons_without_brackets_are_refused(
                a in "[a-z0-9.]{0,8}", b in "[a-z0-9.]{0,8}", c in "[a-z0-9:]{0,8}"
            ) {
                let s = format!("{a}:{b}:{c}");
                prop_assert!(ServerAddr::parse(&s).is_err(), "{} accepted", s);
            }

            /// Every host name and port is accepted and kept as given.
            #[test]
            fn host_port_is_accepted(h in "[a-z0-9][a-z0-9.-]{0,20}", p in 1u16..) {
                let a = ServerAddr::parse(&format!("{h}:{p}")).unwrap();
                prop_assert_eq!((a.host.as_str(), a.port), (h.as_str(), p));
            }

            /// Every IPv6 address in brackets is accepted, with or without port.
            #[test]
            fn bracketed_ipv6_is_accepted(ip in any::<std::net::Ipv6Addr>(), p in 1u16..) {
                let a = ServerAddr::parse(&format!("[{ip}]:{p}")).unwrap();
                prop_assert_eq!((a.host.clone(), a.port), (ip.to_string(), p));
                let b = ServerAddr::parse(&format!("[{ip}]")).unwrap();
                prop_assert_eq!(b.port, DEFAULT_PORT);
                prop_assert!(ServerAddr::parse(&ip.to_string()).is_err());
            }
        }
    }

    #[test]
    fn unique_routes_stably_and_spreads() {
        let l = ServerList::parse("a,b,c,d").unwrap();
        let mut r = Router::default();
        let first = r.order(&l, Some(b"user-42"))[0];
        for _ in 0..10 {
            assert_eq!(r.order(&l, Some(b"user-42"))[0], first);
        }
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            seen.insert(r.order(&l, Some(format!("k{i}").as_bytes()))[0]);
        }
        assert_eq!(seen.len(), 4, "200 keys should reach all 4 servers");
    }

    #[test]
    fn dead_servers_are_skipped_until_all_are_dead() {
        let l = ServerList::parse("a,b").unwrap();
        let mut r = Router::default();
        let a = l.get(0).unwrap().clone();
        r.mark_dead(&a, Duration::from_secs(60), Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(r.order(&l, None), vec![1]);
        }
        let b = l.get(1).unwrap().clone();
        r.mark_dead(&b, Duration::from_secs(60), Duration::from_secs(60));
        assert_eq!(r.order(&l, None).len(), 2);
        r.mark_alive(&a);
        assert_eq!(r.order(&l, Some(b"x")), vec![0]);
    }
}
