//! A compact byte encoding of background jobs with their server lists, for
//! handing jobs from one process to another through memory they share
//! (PostgreSQL backends → the dispatcher background worker).
//!
//! A record is a sequence of groups; a group is a server list (its text,
//! as [`ServerList`]'s `Display` writes it, which [`ServerList::parse`]
//! reads back) and its jobs, in order. All integers are little-endian:
//!
//! ```text
//! group := u32 list_len, list_len bytes (UTF-8), u32 n_jobs, n_jobs × job
//! job   := u8 priority (0 high, 1 normal, 2 low), u8 flags (1: unique key
//!          present, 2: epoch present), [i64 epoch], u32 function_len,
//!          function, [u32 unique_len, unique], u32 workload_len, workload
//! ```
//!
//! [`decode`] checks every length against the bytes present: a truncated or
//! corrupt record is an error, never a panic or an allocation larger than
//! the record.

use crate::error::{Error, Result};
use crate::job::{Job, Priority};
use crate::servers::ServerList;

/// Appends one group (`list` and its `jobs`) to `out`.
pub fn encode_group<'a, I>(out: &mut Vec<u8>, list: &ServerList, jobs: I)
where
    I: IntoIterator<Item = &'a Job>,
    I::IntoIter: ExactSizeIterator,
{
    encode_group_text(out, &list.to_string(), jobs);
}

/// As [`encode_group`], with the list given as its text (as
/// [`ServerList`]'s `Display` writes it): for a caller that keeps the text
/// of a list it encodes often.
pub fn encode_group_text<'a, I>(out: &mut Vec<u8>, list_text: &str, jobs: I)
where
    I: IntoIterator<Item = &'a Job>,
    I::IntoIter: ExactSizeIterator,
{
    let jobs = jobs.into_iter();
    put_bytes(out, list_text.as_bytes());
    put_u32(out, jobs.len());
    for j in jobs {
        out.push(match j.priority {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        });
        let flags = u8::from(j.unique.is_some()) | (u8::from(j.epoch.is_some()) << 1);
        out.push(flags);
        if let Some(e) = j.epoch {
            out.extend_from_slice(&e.to_le_bytes());
        }
        put_bytes(out, &j.function);
        if let Some(u) = &j.unique {
            put_bytes(out, u);
        }
        put_bytes(out, &j.workload);
    }
}

/// The bytes [`encode_group`] appends for `jobs` to a list whose text is
/// `list_len` bytes long.
pub fn encoded_len(list_len: usize, jobs: &[Job]) -> usize {
    8 + list_len
        + jobs
            .iter()
            .map(|j| {
                2 + if j.epoch.is_some() { 8 } else { 0 }
                    + 4
                    + j.function.len()
                    + j.unique.as_ref().map_or(0, |u| 4 + u.len())
                    + 4
                    + j.workload.len()
            })
            .sum::<usize>()
}

/// Decodes every group of a record, in order.
///
/// # Errors
/// [`crate::ErrorKind::Protocol`] when the record is truncated or corrupt
/// (a length past its end, a bad priority or flag, a list that does not
/// parse).
pub fn decode(buf: &[u8]) -> Result<Vec<(ServerList, Vec<Job>)>> {
    decode_groups(buf)?
        .into_iter()
        .map(|(text, jobs)| Ok((parse_list(text)?, jobs)))
        .collect()
}

/// As [`decode`], but each group's server list is left as its text, for a
/// caller that parses each distinct list once (e.g. a dispatcher taking
/// many records of the same list). Check it with [`parse_list`].
///
/// # Errors
/// As [`decode`], except that the lists are not parsed.
pub fn decode_groups(mut buf: &[u8]) -> Result<Vec<(&str, Vec<Job>)>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let text = take_bytes(&mut buf)?;
        let text = std::str::from_utf8(text).map_err(|_| corrupt("server list is not UTF-8"))?;
        let n = take_u32(&mut buf)? as usize;
        // Each job takes at least 14 bytes: never reserve more than the
        // record can hold.
        let mut jobs = Vec::with_capacity(n.min(buf.len() / 14));
        for _ in 0..n {
            let [p, flags] = take::<2>(&mut buf)?;
            let priority = match p {
                0 => Priority::High,
                1 => Priority::Normal,
                2 => Priority::Low,
                _ => return Err(corrupt("bad priority")),
            };
            if flags & !3 != 0 {
                return Err(corrupt("bad flags"));
            }
            let epoch = if flags & 2 != 0 {
                Some(i64::from_le_bytes(take::<8>(&mut buf)?))
            } else {
                None
            };
            let function = take_bytes(&mut buf)?.to_vec();
            let unique = if flags & 1 != 0 {
                Some(take_bytes(&mut buf)?.to_vec())
            } else {
                None
            };
            let workload = take_bytes(&mut buf)?.to_vec();
            jobs.push(Job {
                function,
                workload,
                unique,
                priority,
                epoch,
            });
        }
        out.push((text, jobs));
    }
    Ok(out)
}

/// Parses a server list's text from [`decode_groups`].
///
/// # Errors
/// [`crate::ErrorKind::Protocol`] when it does not parse (a corrupt record).
pub fn parse_list(text: &str) -> Result<ServerList> {
    ServerList::parse(text).map_err(|e| corrupt(&format!("server list {text:?}: {}", e.message())))
}

fn corrupt(why: &str) -> Error {
    Error::protocol(format!("corrupt job hand-off record: {why}"))
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("hand-off lengths fit in u32");
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

fn take<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N]> {
    if buf.len() < N {
        return Err(corrupt("truncated"));
    }
    let (head, rest) = buf.split_at(N);
    *buf = rest;
    Ok(head.try_into().expect("length checked"))
}

fn take_u32(buf: &mut &[u8]) -> Result<u32> {
    Ok(u32::from_le_bytes(take::<4>(buf)?))
}

fn take_bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8]> {
    let n = take_u32(buf)? as usize;
    if buf.len() < n {
        return Err(corrupt("length past the end"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}
