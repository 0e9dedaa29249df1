//! Database plumbing shared by the `sql` handler ([`crate::handlers::sql`]),
//! the relay ([`crate::relay`]) and dead letters ([`crate::deadletter`]):
//! database URLs ([`DatabaseUrl`]: `postgres://`, `mysql://`, `mariadb://`),
//! password redaction for log lines and errors ([`redact_url`]), the
//! connection options every connection gets ([`Bounds`]), error text
//! ([`pg_error`], [`my_error`]) and the `sql` handler's connection pools
//! ([`pool`]).
//!
//! Every connection is bounded: a 10 s connect timeout ([`CONNECT_TIMEOUT`],
//! unless a PostgreSQL URL sets `connect_timeout`), TCP keepalives
//! (PostgreSQL: idle 30 s, interval 10 s, 3 probes), and an I/O bound per
//! use (PostgreSQL: TCP user timeout of the bound + 10 s; MySQL: read and
//! write timeouts of the bound). Connections are plaintext (no TLS).

pub mod pool;

use std::fmt::Write as _;
use std::time::Duration;

/// Connect timeout for database connections: 10 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which database a `sql` function uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DatabaseUrl {
    /// `postgres://` or `postgresql://` URL, or a libpq `key=value` string
    /// (only where [`DatabaseUrl::postgres`] made it: relay and dead-letter flags).
    Postgres(String),
    /// `mysql://` URL (`mariadb://` is rewritten to `mysql://`).
    Mysql(String),
}

impl DatabaseUrl {
    /// Parses and checks a URL with the driver's own parser: `postgres://`
    /// or `postgresql://`, `mysql://` or `mariadb://` (rewritten to
    /// `mysql://`, which the driver reads).
    ///
    /// # Errors
    /// Another scheme, or a URL the driver refuses (the message says which).
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DatabaseUrl::postgres(url)
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            DatabaseUrl::mysql(url)
        } else {
            Err("must start with postgres://, postgresql://, mysql:// or mariadb://".into())
        }
    }

    /// A PostgreSQL URL or libpq `key=value` connection string, checked by
    /// the driver.
    ///
    /// # Errors
    /// The driver's parse error.
    pub fn postgres(url: &str) -> Result<DatabaseUrl, String> {
        url.parse::<postgres::Config>()
            .map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
        Ok(DatabaseUrl::Postgres(url.to_string()))
    }

    /// A `mysql://` or `mariadb://` URL, checked by the driver.
    ///
    /// # Errors
    /// Another scheme, or the driver's parse error.
    pub fn mysql(url: &str) -> Result<DatabaseUrl, String> {
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None if url.starts_with("mysql://") => url.to_string(),
            None => return Err("must start with mysql:// or mariadb://".into()),
        };
        mysql::Opts::from_url(&url).map_err(|e| format!("invalid MySQL URL: {e}"))?;
        Ok(DatabaseUrl::Mysql(url))
    }

    /// The URL as given to the driver (`mariadb://` already rewritten).
    pub fn as_str(&self) -> &str {
        match self {
            DatabaseUrl::Postgres(u) | DatabaseUrl::Mysql(u) => u,
        }
    }

    /// `postgres` or `mysql`, for log lines.
    pub fn kind(&self) -> &'static str {
        match self {
            DatabaseUrl::Postgres(_) => "postgres",
            DatabaseUrl::Mysql(_) => "mysql",
        }
    }

    /// The URL with any password replaced by `***`, for log lines.
    pub fn redacted(&self) -> String {
        redact_url(self.as_str())
    }
}

/// Replaces every password in a database URL or connection string with
/// `***`, for log lines and job errors: the `user:password@` part of a URL,
/// query parameters whose name contains `pass` (`?password=...`), and
/// `key=value` connection strings' values whose key contains `pass`
/// (`host=h password='s e'`).
pub fn redact_url(url: &str) -> String {
    match url.find("://") {
        Some(scheme_end) => redact_uri(url, scheme_end + 3),
        None => redact_conninfo(url),
    }
}

fn is_secret_key(key: &str) -> bool {
    key.to_ascii_lowercase().contains("pass")
}

fn redact_uri(url: &str, rest_start: usize) -> String {
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], Some(&url[q + 1..])),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    // Authority: up to the first '/' after the scheme.
    let rest = &base[rest_start..];
    let auth_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    out.push_str(&base[..rest_start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    out.push_str(&rest[auth_end..]);
    if let Some(q) = query {
        out.push('?');
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

/// `key=value key='quoted value'` (libpq conninfo): secret values become `***`.
fn redact_conninfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        // Copy whitespace.
        let start = i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        out.push_str(&s[start..i]);
        if i >= b.len() {
            break;
        }
        // The key, up to '=' or whitespace.
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[key_start..i];
        out.push_str(key);
        // Spaces and the '='.
        let eq_start = i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            out.push_str(&s[eq_start..i]);
            continue;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        out.push_str(&s[eq_start..i]);
        // The value: quoted (backslash escapes) or up to whitespace.
        let value_start = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        if is_secret_key(key) {
            out.push_str("***");
        } else {
            out.push_str(&s[value_start..i]);
        }
    }
    out
}

/// What a connection is for: its `application_name` (PostgreSQL) and how
/// long one operation on it may take.
#[derive(Debug, Clone, Copy)]
pub struct Bounds<'a> {
    /// PostgreSQL `application_name` unless the URL sets one.
    pub app: &'a str,
    /// Longest expected operation: PostgreSQL's TCP user timeout is this
    /// plus 10 s; MySQL's read and write timeouts are this.
    pub io: Duration,
}

impl DatabaseUrl {
    /// A PostgreSQL client configuration with [`Bounds`] applied.
    ///
    /// # Errors
    /// Not a PostgreSQL URL, or an invalid one.
    pub fn pg_config(&self, b: Bounds<'_>) -> Result<postgres::Config, String> {
        let DatabaseUrl::Postgres(url) = self else {
            return Err(format!("{} is not a PostgreSQL URL", self.redacted()));
        };
        let mut cfg: postgres::Config = url
            .parse()
            .map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(CONNECT_TIMEOUT);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name(b.app);
        }
        cfg.keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3)
            .tcp_user_timeout(b.io + Duration::from_secs(10));
        Ok(cfg)
    }

    /// MySQL connection options with [`Bounds`] applied (`app` unused).
    ///
    /// # Errors
    /// Not a MySQL URL, or an invalid one.
    pub fn my_opts(&self, b: Bounds<'_>) -> Result<mysql::OptsBuilder, String> {
        let DatabaseUrl::Mysql(url) = self else {
            return Err(format!("{} is not a MySQL URL", self.redacted()));
        };
        let opts = mysql::Opts::from_url(url).map_err(|e| format!("invalid MySQL URL: {e}"))?;
        Ok(mysql::OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(CONNECT_TIMEOUT))
            .read_timeout(Some(b.io))
            .write_timeout(Some(b.io)))
    }

    /// Connects to PostgreSQL with [`DatabaseUrl::pg_config`].
    ///
    /// # Errors
    /// The driver's error as [`pg_error`] text (no URL in it).
    pub fn connect_pg(&self, b: Bounds<'_>) -> Result<postgres::Client, String> {
        self.pg_config(b)?
            .connect(postgres::NoTls)
            .map_err(|e| pg_error(&e))
    }

    /// Connects to MySQL/MariaDB with [`DatabaseUrl::my_opts`].
    ///
    /// # Errors
    /// The driver's error as [`my_error`] text (no URL in it).
    pub fn connect_my(&self, b: Bounds<'_>) -> Result<mysql::Conn, String> {
        mysql::Conn::new(self.my_opts(b)?).map_err(|e| my_error(&e))
    }
}

/// PostgreSQL error text: severity, message, SQLSTATE (and detail) for
/// server errors, else the driver's message with its causes.
pub fn pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(d) = db.detail() {
                let _ = write!(s, "; detail: {d}");
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                let _ = write!(s, ": {inner}");
                src = inner.source();
            }
            s
        }
    }
}

/// MySQL error text: `ERROR code (SQLSTATE): message` for server errors,
/// else the driver's message.
pub fn my_error(e: &mysql::Error) -> String {
    match e {
        mysql::Error::MySqlError(m) => format!("ERROR {} ({}): {}", m.code, m.state, m.message),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_url("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(redact_url("host=x"), "host=x");
        assert_eq!(
            redact_url("postgres://app@h:5/app?sslmode=disable&password=S3cret&x=1"),
            "postgres://app@h:5/app?sslmode=disable&password=***&x=1"
        );
        assert_eq!(
            redact_url("mysql://u:p@ss@h/db?PASSWORD=x"),
            "mysql://u:***@h/db?PASSWORD=***"
        );
        assert_eq!(
            redact_url("host=h password=KvS3cret user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(
            redact_url("host=h password = 'a \\' b' dbname=d"),
            "host=h password = *** dbname=d"
        );
        assert_eq!(redact_url("password="), "password=***");
        for url in [
            "postgres://u:secret@h/d?password=secret",
            "password='secret",
        ] {
            assert!(!redact_url(url).contains("secret"), "{url}");
        }
    }

    #[test]
    fn urls_are_checked_and_mariadb_is_rewritten() {
        assert_eq!(
            DatabaseUrl::parse("mariadb://root@h:3307/test").unwrap(),
            DatabaseUrl::Mysql("mysql://root@h:3307/test".into())
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://u@h/db").unwrap().kind(),
            "postgres"
        );
        assert!(DatabaseUrl::parse("sqlite://x")
            .unwrap_err()
            .contains("must start"));
        assert!(DatabaseUrl::parse("host=h").is_err());
        assert!(DatabaseUrl::postgres("host=h user=u").is_ok());
        assert!(DatabaseUrl::mysql("postgres://u@h/db")
            .unwrap_err()
            .contains("mysql://"));
        let pg = DatabaseUrl::parse("postgres://u:pw@h/db?connect_timeout=3").unwrap();
        let cfg = pg
            .pg_config(Bounds {
                app: "t",
                io: Duration::from_secs(1),
            })
            .unwrap();
        assert_eq!(cfg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(cfg.get_application_name(), Some("t"));
        assert!(pg
            .my_opts(Bounds {
                app: "t",
                io: Duration::from_secs(1)
            })
            .is_err());
    }
}
