//! Real input found on any Debian machine: the package database
//! (`/var/lib/dpkg/status`), the packages' copyright files
//! (`/usr/share/doc/*/copyright`) and dpkg's log (`/var/log/dpkg.log`).

use std::fs;
use std::path::{Path, PathBuf};

/// One installed package from the dpkg database.
#[derive(Debug, Clone)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// The one-line description.
    pub summary: String,
}

/// Up to `limit` installed packages with a description, in database order.
pub fn packages(limit: usize) -> Result<Vec<Package>, String> {
    let path = "/var/lib/dpkg/status";
    let text = fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut name = None;
        let mut summary = None;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Description: ") {
                summary = Some(v.trim().to_string());
            }
        }
        if let (Some(name), Some(summary)) = (name, summary) {
            out.push(Package { name, summary });
            if out.len() == limit {
                break;
            }
        }
    }
    if out.is_empty() {
        return Err(format!("no packages with a description in {path}"));
    }
    Ok(out)
}

/// One document: a package's copyright file.
#[derive(Debug, Clone)]
pub struct Document {
    /// Path of the file.
    pub path: PathBuf,
    /// Its text.
    pub body: String,
}

/// Up to `limit` copyright files (UTF-8, 200 B to 64 KiB), sorted by path.
pub fn documents(limit: usize) -> Result<Vec<Document>, String> {
    let dir = Path::new("/usr/share/doc");
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("copyright"))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !(200..=65536).contains(&meta.len()) {
            continue;
        }
        let Ok(body) = fs::read_to_string(&path) else {
            continue;
        };
        if body.contains('\0') {
            continue;
        }
        out.push(Document { path, body });
        if out.len() == limit {
            break;
        }
    }
    if out.is_empty() {
        return Err("no copyright files under /usr/share/doc".into());
    }
    Ok(out)
}

/// The path of a real log with at least `min_lines` lines: dpkg's log, or
/// apt's history.
pub fn log_file(min_lines: usize) -> Result<(PathBuf, usize), String> {
    for p in ["/var/log/dpkg.log", "/var/log/apt/history.log"] {
        if let Ok(text) = fs::read_to_string(p) {
            let n = text.lines().count();
            if n >= min_lines {
                return Ok((PathBuf::from(p), n));
            }
        }
    }
    Err(format!(
        "no log of at least {min_lines} lines in /var/log/dpkg.log or /var/log/apt/history.log"
    ))
}
