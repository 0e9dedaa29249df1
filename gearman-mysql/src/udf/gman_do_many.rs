//! `gman_do_many(function, json_array)`: scatter/gather. One foreground job
//! per element of a JSON array, all submitted before any result is awaited;
//! a JSON array of the results in input order.

use super::{job, Signature, Site, Udf};
use crate::abi::Arg;
use crate::runtime::runtime;
use gearman_core::Job;
use serde_json::value::RawValue;
use std::time::Instant;

/// Many foreground jobs of one function at once.
#[derive(Debug, Clone, Copy)]
pub struct DoMany;

impl Udf for DoMany {
    fn signature(&self) -> Signature {
        Signature {
            usage: "(function, json_array)",
            min: 2,
            max: 2,
        }
    }

    /// A NULL array is SQL NULL (nothing sent). Bad arguments fail the row
    /// before anything is sent. A job that fails is `null` in its place and
    /// reported by `gman_last_error()` (the row is still returned); the
    /// whole output is at most `max_result_bytes`.
    fn process(&mut self, site: &mut Site, args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        let rt = runtime()?;
        // One bound for the whole call: connecting, failing over, waiting.
        let deadline = rt.options().foreground_timeout.map(|t| Instant::now() + t);
        let template = job::from_args(&args[..1], usize::MAX)?;
        let Some(array) = args.get(1).and_then(Arg::to_bytes) else {
            return Ok(None);
        };
        let workloads = workloads(&array, rt.config.max_sum_rows)?;
        if workloads.is_empty() {
            return Ok(Some(b"[]".to_vec()));
        }
        let jobs: Vec<Job> = workloads
            .into_iter()
            .map(|w| Job {
                workload: w,
                ..template.clone()
            })
            .collect();
        let results = rt
            .with_client_until(deadline, |c| Ok(c.run_all(&jobs)))
            .map_err(|e| job::describe(&template, &e))?;
        let max = rt.config.max_result_bytes as usize;
        let mut out = Vec::with_capacity(2 + 8 * jobs.len());
        let mut failed: Vec<(usize, String)> = Vec::new();
        out.push(b'[');
        for (i, r) in results.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let text = r
                .map_err(|e| job::describe(&template, &e))
                .and_then(|bytes| {
                    String::from_utf8(bytes).map_err(|_| {
                        format!(
                            "function '{}': the worker's result is not valid UTF-8 and cannot \
                             be a JSON string (gman_do returns results byte for byte)",
                            template.function_name()
                        )
                    })
                });
            match text {
                Ok(s) => serde_json::to_writer(&mut out, &s).map_err(|e| e.to_string())?,
                Err(e) => {
                    out.extend_from_slice(b"null");
                    failed.push((i + 1, e));
                }
            }
            if out.len() >= max {
                return Err(format!(
                    "the results of {} jobs exceed max_result_bytes ({max} bytes) together",
                    jobs.len()
                ));
            }
        }
        out.push(b']');
        if let Some((first, msg)) = failed.first() {
            site.fail(format!(
                "{}: {} of {} jobs failed (null in their place); first: element {first}: {msg}",
                site.name,
                failed.len(),
                jobs.len()
            ));
        }
        Ok(Some(out))
    }
}

/// The workloads of a JSON array: a string element is its text, `null` an
/// empty workload, any other element the JSON text it was given (an object
/// is sent as JSON). At most `limit` elements.
fn workloads(array: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, String> {
    let elements: Vec<&RawValue> = serde_json::from_slice(array).map_err(|e| {
        let shown: String = String::from_utf8_lossy(array).chars().take(40).collect();
        format!("json_array '{shown}' is not a JSON array: {e}")
    })?;
    if elements.len() > limit {
        return Err(format!(
            "json_array has {} elements, more than {limit} (max_sum_rows in the configuration file)",
            elements.len()
        ));
    }
    elements
        .into_iter()
        .map(|raw| {
            let text = raw.get();
            if text.starts_with('"') {
                serde_json::from_str::<String>(text)
                    .map(String::into_bytes)
                    .map_err(|e| format!("json_array: {e}"))
            } else if text == "null" {
                Ok(Vec::new())
            } else {
                Ok(text.as_bytes().to_vec())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_become_workloads() {
        let w = workloads(
            br#"["a\u00e9", null, 42, 1.50, {"k": [1, 2]}, true, ""]"#,
            10,
        )
        .unwrap();
        let w: Vec<String> = w
            .into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        assert_eq!(w, ["aé", "", "42", "1.50", r#"{"k": [1, 2]}"#, "true", ""]);
        assert!(workloads(b"[]", 0).unwrap().is_empty());
    }

    #[test]
    fn bad_arrays_are_refused_with_their_reason() {
        let e = workloads(b"{\"a\": 1}", 10).unwrap_err();
        assert!(e.contains("is not a JSON array"), "{e}");
        let e = workloads(b"[1, 2", 10).unwrap_err();
        assert!(e.contains("is not a JSON array"), "{e}");
        let e = workloads(b"[1, 2, 3]", 2).unwrap_err();
        assert!(e.contains("3 elements, more than 2"), "{e}");
    }
}
