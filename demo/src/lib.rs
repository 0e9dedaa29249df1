//! The main job: the Gearman cookbook's recipes run from SQL, end to end.
//!
//! [`Env::start`] brings up private instances of gearmand, PostgreSQL 15 and
//! MariaDB (temporary directories, free loopback ports), creates the
//! `gearman` extension, installs the UDF library, and starts the companion
//! `gearman-worker` with a configuration for the recipes. Each recipe then
//! runs from SQL on real data found on any Debian machine (the package
//! database, the documentation's copyright files, dpkg's log) and checks its
//! own result: a recipe returns `Err` with what differed, never a made-up
//! figure. The binary (`gearman-demo`) prints the reports; the end-to-end
//! tests (`demo/tests`) run the same recipes and assert on their counts.

pub mod data;
pub mod env;
pub mod recipes;

pub use env::Env;

/// What a recipe did, in a few readable lines.
#[derive(Debug, Default)]
pub struct Report {
    /// Recipe title.
    pub title: String,
    /// Lines to print: counts, timings, sample results.
    pub lines: Vec<String>,
    /// Named counts for tests to assert on.
    pub counts: Vec<(&'static str, u64)>,
}

impl Report {
    fn new(title: &str) -> Report {
        Report {
            title: title.to_string(),
            ..Report::default()
        }
    }

    fn line(&mut self, s: impl Into<String>) {
        self.lines.push(s.into());
    }

    fn count(&mut self, name: &'static str, n: u64) {
        self.counts.push((name, n));
    }

    /// A named count, if the recipe recorded it.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counts
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// A recipe's failure: what was expected and what happened.
pub type RecipeResult = Result<Report, String>;

/// Checks a condition, or fails the recipe with a message.
fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}
