//! A probe that shows jobs ran at the same time without timing them.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Counts the jobs inside [`Overlap::run`] at once. Each job waits at the
/// gate until `target` jobs have been inside together (once that happened
/// the gate stays open), or until `bound` passes. A test then asserts
/// `peak() >= target`: true only if `target` jobs really ran at once,
/// whatever the machine's load; with serial execution every job waits the
/// bound and the assertion fails.
#[derive(Clone, Debug)]
pub struct Overlap {
    inner: Arc<(Mutex<State>, Condvar)>,
    target: usize,
    bound: Duration,
}

#[derive(Debug, Default)]
struct State {
    now: usize,
    peak: usize,
}

impl Overlap {
    /// A probe whose gate opens when `target` jobs are inside at once;
    /// a job waits at most 10 s for that.
    pub fn new(target: usize) -> Overlap {
        Overlap {
            inner: Arc::default(),
            target,
            bound: Duration::from_secs(10),
        }
    }

    /// Runs `f` as one job: counted in, held at the gate, run, counted out.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let (m, cv) = &*self.inner;
        {
            let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
            s.now += 1;
            s.peak = s.peak.max(s.now);
            cv.notify_all();
            let deadline = Instant::now() + self.bound;
            while s.peak < self.target {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                s = cv
                    .wait_timeout(s, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let out = f();
        let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
        s.now -= 1;
        out
    }

    /// The most jobs seen inside at once.
    pub fn peak(&self) -> usize {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner()).peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_threads_open_the_gate_and_one_alone_does_not() {
        let o = Overlap::new(4);
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let o = o.clone();
                std::thread::spawn(move || o.run(|| i))
            })
            .collect();
        let sum: i32 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!((sum, o.peak()), (6, 4));
        let alone = Overlap {
            bound: Duration::from_millis(50),
            ..Overlap::new(2)
        };
        assert_eq!(alone.run(|| 1) + alone.run(|| 1), 2);
        assert_eq!(alone.peak(), 1);
    }
}
