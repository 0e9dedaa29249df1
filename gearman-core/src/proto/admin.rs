//! Text admin protocol framing (protocol.md section 10).
//!
//! Commands are one line ended by CRLF. Replies are one line (`OK ...`,
//! `ERR ...`, or a value) or a list of lines ended by a line holding only `.`.
//! Line endings vary (`\n` or `\r\n`); an optional `\r` is stripped.

use crate::error::{Error, Result};

/// Longest admin line gearmand accepts, CRLF included (protocol.md 9).
const MAX_LINE: usize = 8192;

/// Appends `command` and CRLF to `out`. The command must be one line of at
/// most 8190 bytes with at most five space-separated words: gearmand closes
/// the connection otherwise (protocol.md 9).
pub fn encode_admin_command(command: &str, out: &mut Vec<u8>) -> Result<()> {
    if command.contains(['\r', '\n', '\0']) {
        return Err(Error::invalid_argument(
            "admin command must be a single line",
        ));
    }
    if command.len() + 2 > MAX_LINE {
        return Err(Error::invalid_argument(
            "admin command longer than 8190 bytes",
        ));
    }
    if command.split(' ').count() > 5 {
        return Err(Error::invalid_argument(
            "admin command has more than five words (gearmand drops the connection)",
        ));
    }
    out.extend_from_slice(command.as_bytes());
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Decodes one line from the front of `buf`: the line without its ending,
/// and the bytes used; `None` while no newline has arrived.
pub fn decode_line(buf: &[u8]) -> Result<Option<(String, usize)>> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(pos) => {
            let mut line = &buf[..pos];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            Ok(Some((String::from_utf8_lossy(line).into_owned(), pos + 1)))
        }
        None if buf.len() > MAX_LINE * 16 => {
            Err(Error::protocol("admin reply line without a newline"))
        }
        None => Ok(None),
    }
}

/// Decodes a `.`-terminated list from the front of `buf`: its lines (without
/// the final `.`) and the bytes used; `None` while incomplete. A first line
/// starting with `ERR ` is returned alone, as gearmand sends no list then.
pub fn decode_list(buf: &[u8]) -> Result<Option<(Vec<String>, usize)>> {
    let mut lines = Vec::new();
    let mut used = 0;
    while let Some((line, n)) = decode_line(&buf[used..])? {
        used += n;
        if line == "." {
            return Ok(Some((lines, used)));
        }
        if lines.is_empty() && line.starts_with("ERR") {
            return Ok(Some((vec![line], used)));
        }
        lines.push(line);
    }
    Ok(None)
}
