//! Shared helpers: free ports, waiting for a listener, locating binaries.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks it (bind to port 0); ports are taken from the ephemeral
/// range so they never collide with the well-known defaults.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .expect("binding an ephemeral loopback port");
    listener.local_addr().expect("local_addr").port()
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
/// Returns false when `timeout` passes first.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into();
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Whether process `pid` holds the socket listening on TCP `port`
/// (IPv4 or IPv6), from `/proc/net/tcp*` and `/proc/PID/fd`. Tells our
/// server from a stranger that took the port between picking and binding.
pub fn listener_owned_by(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
    })
}

/// Finds `name` in the given directories or on PATH, or panics naming the
/// Debian package that provides it.
pub fn require_binary(name: &str, extra_dirs: &[&str], package: &str) -> PathBuf {
    for dir in extra_dirs {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "`{name}` was not found: install the Debian package `{package}` \
         (run `sudo scripts/setup`, which installs every test dependency)"
    );
}

/// A loopback port where nothing listens, held for the life of the value:
/// a TCP socket bound to it without `listen`, so connects get
/// ECONNREFUSED and no other test can take the port meanwhile (a port from
/// [`free_port`] can be bound by a parallel test and then accept).
#[derive(Debug)]
pub struct DeadPort {
    fd: libc::c_int,
    port: u16,
}

impl DeadPort {
    /// Binds a fresh ephemeral port on 127.0.0.1 without listening.
    pub fn new() -> DeadPort {
        // SAFETY: plain socket calls on a descriptor we own; `addr` is a
        // valid sockaddr_in of the size passed.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
            addr.sin_port = 0;
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len);
            assert!(rc == 0, "bind: {}", std::io::Error::last_os_error());
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut got_len = len;
            let rc = libc::getsockname(
                fd,
                (&mut got as *mut libc::sockaddr_in).cast(),
                &mut got_len,
            );
            assert!(rc == 0, "getsockname: {}", std::io::Error::last_os_error());
            DeadPort {
                fd,
                port: u16::from_be(got.sin_port),
            }
        }
    }

    /// The port number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Default for DeadPort {
    fn default() -> DeadPort {
        DeadPort::new()
    }
}

impl Drop for DeadPort {
    fn drop(&mut self) {
        // SAFETY: `fd` is ours and closed once.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// A loopback port that drops SYNs, held for the life of the value: a
/// listener with backlog 0 whose accept queue is filled with connections
/// nobody accepts, so Linux drops further SYNs (no RST) and a connect hangs
/// until the caller's timeout. A real black hole, without touching the
/// machine's network configuration.
#[derive(Debug)]
pub struct BlackHole {
    port: u16,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl BlackHole {
    /// Binds a fresh ephemeral port on 127.0.0.1 and fills its accept queue.
    pub fn new() -> BlackHole {
        use std::os::fd::AsRawFd;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: a valid listening socket; listen() again only sets its backlog.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
        let sa = l.local_addr().unwrap();
        let mut fillers = Vec::new();
        while let Ok(s) = TcpStream::connect_timeout(&sa, Duration::from_millis(200)) {
            fillers.push(s);
            assert!(fillers.len() < 16, "the accept queue does not fill");
        }
        BlackHole {
            port: sa.port(),
            _listener: l,
            _fillers: fillers,
        }
    }

    /// `n` black holes, made in parallel (each waits 200 ms for its queue
    /// to be full).
    pub fn many(n: usize) -> Vec<BlackHole> {
        let ts: Vec<_> = (0..n).map(|_| std::thread::spawn(BlackHole::new)).collect();
        ts.into_iter().map(|t| t.join().unwrap()).collect()
    }

    /// The port number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Default for BlackHole {
    fn default() -> BlackHole {
        BlackHole::new()
    }
}

/// utime + stime of process `pid` (all its threads) from
/// `/proc/<pid>/stat`, in seconds: the CPU a benchmark charges to a server.
///
/// # Panics
/// When the process does not exist or its stat line does not parse.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The fields after the command (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_port_refuses_connections() {
        let d = DeadPort::new();
        let e = TcpStream::connect(d.addr()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        // And nobody else can bind it meanwhile.
        assert!(TcpListener::bind(d.addr()).is_err());
    }

    #[test]
    fn a_listener_is_told_to_belong_to_its_process() {
        let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listener_owned_by(std::process::id(), port));
        // Not ours: pid 1 holds no socket of this test.
        assert!(!listener_owned_by(1, port));
        drop(l);
        assert!(!listener_owned_by(std::process::id(), port));
    }
}
