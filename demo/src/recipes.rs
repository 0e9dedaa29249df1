//! The six recipes of the Gearman cookbook, run from SQL. Each checks its
//! own outcome against an independent computation and fails with the
//! difference.

use crate::data;
use crate::env::{wait_until, Env};
use crate::{ensure, RecipeResult, Report};
use mysql::prelude::Queryable;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

fn pg_err(what: &str) -> impl Fn(postgres::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn my_err(what: &str) -> impl Fn(mysql::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Counts each distinct string.
fn multiset(items: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in items {
        *m.entry(s).or_insert(0) += 1;
    }
    m
}

/// The first difference between two multisets, for error messages.
fn first_difference(want: &BTreeMap<String, usize>, got: &BTreeMap<String, usize>) -> String {
    for (k, n) in want {
        let g = got.get(k).copied().unwrap_or(0);
        if g != *n {
            return format!("{k:?}: expected {n} time(s), got {g}");
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            return format!("{k:?}: not expected, got {g} time(s)");
        }
    }
    "none".into()
}

fn pg_count(env: &Env, sql: &str) -> Result<i64, String> {
    let mut c = env.pg()?;
    let row = c.query_one(sql, &[]).map_err(pg_err(sql))?;
    Ok(row.get::<_, i64>(0))
}

/// Recipe 1: an asynchronous queue fed by a trigger. The cookbook's
/// `tweet_blog` trigger, verbatim, in MariaDB; its PostgreSQL twin with
/// commit dispatch; every payload handled exactly once; a rolled-back
/// PostgreSQL insert sends nothing.
pub fn queue_from_trigger(env: &Env, rows: usize) -> RecipeResult {
    let mut r = Report::new("1. Asynchronous queue from a trigger (send_tweet)");
    let pkgs = data::packages(rows)?;
    let url = |name: &str| format!("https://packages.debian.org/bookworm/{name}");
    let expected = multiset(
        pkgs.iter()
            .map(|p| format!("{} - {}", p.summary, url(&p.name))),
    );

    // MariaDB, the cookbook's trigger verbatim.
    let mut my = env.my()?;
    my.query_drop(
        "CREATE TABLE blog_entries (id INT AUTO_INCREMENT PRIMARY KEY, \
         title VARCHAR(255) NOT NULL, url VARCHAR(255) NOT NULL)",
    )
    .map_err(my_err("create blog_entries"))?;
    my.query_drop(
        r#"CREATE TRIGGER tweet_blog BEFORE INSERT ON blog_entries FOR EACH ROW SET @ret=gman_do_background('send_tweet', CONCAT(NEW.title, " - ", NEW.url))"#,
    )
    .map_err(my_err("create trigger tweet_blog"))?;
    let t = Instant::now();
    for p in &pkgs {
        my.exec_drop(
            "INSERT INTO blog_entries (title, url) VALUES (?, ?)",
            (&p.summary, url(&p.name)),
        )
        .map_err(my_err("insert into blog_entries"))?;
    }
    let insert_time = t.elapsed();
    let n = pkgs.len() as i64;
    let arrived = wait_until(DELIVERY_TIMEOUT, || {
        Ok(pg_count(env, "SELECT count(*) FROM demo.tweets")? >= n)
    })?;
    let got = tweets(env)?;
    ensure(arrived && got == expected, || {
        format!(
            "MariaDB: {} payloads arrived for {n} inserts; first difference: {}\nworker log:\n{}",
            got.values().sum::<usize>(),
            first_difference(&expected, &got),
            env.worker_log()
        )
    })?;
    let delivered = t.elapsed();
    r.line(format!(
        "MariaDB: {n} single-row INSERTs through the verbatim tweet_blog trigger in {} ({:.0}/s); \
         all {n} payloads handled exactly once after {}",
        ms(insert_time),
        n as f64 / insert_time.as_secs_f64(),
        ms(delivered)
    ));
    r.line(format!(
        "  sample: {:?}",
        expected.keys().next().cloned().unwrap_or_default()
    ));
    r.count("mariadb_payloads", got.values().sum::<usize>() as u64);

    // PostgreSQL twin, commit dispatch (the default).
    let mut pg = env.pg()?;
    pg.batch_execute(
        "TRUNCATE demo.tweets;
         CREATE TABLE demo.blog_entries (id serial PRIMARY KEY, title text NOT NULL, url text NOT NULL);
         CREATE FUNCTION demo.tweet_blog() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           PERFORM gman_do_background('send_tweet', NEW.title || ' - ' || NEW.url);
           RETURN NEW;
         END $$;
         CREATE TRIGGER tweet_blog BEFORE INSERT ON demo.blog_entries
           FOR EACH ROW EXECUTE FUNCTION demo.tweet_blog();",
    )
    .map_err(pg_err("PostgreSQL twin of tweet_blog"))?;
    let t = Instant::now();
    for p in &pkgs {
        pg.execute(
            "INSERT INTO demo.blog_entries (title, url) VALUES ($1, $2)",
            &[&p.summary, &url(&p.name)],
        )
        .map_err(pg_err("insert into demo.blog_entries"))?;
    }
    let insert_time = t.elapsed();
    // A rolled-back insert, then a committed sentinel behind it.
    let mut tx = pg.transaction().map_err(pg_err("begin"))?;
    tx.execute(
        "INSERT INTO demo.blog_entries (title, url) VALUES ('ROLLED BACK', 'nowhere')",
        &[],
    )
    .map_err(pg_err("insert to roll back"))?;
    tx.rollback().map_err(pg_err("rollback"))?;
    pg.execute(
        "INSERT INTO demo.blog_entries (title, url) VALUES ('SENTINEL', 'last')",
        &[],
    )
    .map_err(pg_err("sentinel insert"))?;
    let mut expected_pg = expected.clone();
    expected_pg.insert("SENTINEL - last".into(), 1);
    let arrived = wait_until(DELIVERY_TIMEOUT, || {
        Ok(pg_count(env, "SELECT count(*) FROM demo.tweets")? > n)
    })?;
    // Give a wrongly sent rolled-back job time to show up too.
    std::thread::sleep(Duration::from_millis(300));
    let got = tweets(env)?;
    ensure(arrived && got == expected_pg, || {
        format!(
            "PostgreSQL: first difference: {}",
            first_difference(&expected_pg, &got)
        )
    })?;
    r.line(format!(
        "PostgreSQL: {n} INSERTs with the trigger ported to PL/pgSQL (commit dispatch) in {} ({:.0}/s); \
         all payloads handled exactly once; the rolled-back INSERT sent nothing",
        ms(insert_time),
        n as f64 / insert_time.as_secs_f64()
    ));
    r.count("postgres_payloads", got.values().sum::<usize>() as u64 - 1);
    r.count(
        "rolled_back_payloads",
        got.get("ROLLED BACK - nowhere").copied().unwrap_or(0) as u64,
    );
    Ok(r)
}

fn tweets(env: &Env) -> Result<BTreeMap<String, usize>, String> {
    let mut c = env.pg()?;
    let rows = c
        .query("SELECT payload FROM demo.tweets", &[])
        .map_err(pg_err("read demo.tweets"))?;
    Ok(multiset(rows.iter().map(|r| r.get::<_, String>(0))))
}

/// Recipe 2: scatter/gather. One SQL call fans out to three functions over
/// the same documents; compared with one call per task.
pub fn scatter_gather(env: &Env, docs: usize) -> RecipeResult {
    let mut r =
        Report::new("2. Scatter/gather: word count, full-text count and checksum in one call");
    let docs = data::documents(docs)?;
    let functions = ["word_count", "fulltext_count", "checksum"];
    let mut fnames: Vec<String> = Vec::new();
    let mut bodies: Vec<String> = Vec::new();
    for f in functions {
        for d in &docs {
            fnames.push(f.to_string());
            bodies.push(d.body.clone());
        }
    }
    let mut pg = env.pg()?;
    // One task at a time, timing each.
    let mut sequential = Vec::new();
    let mut slowest = Duration::ZERO;
    let t = Instant::now();
    for (f, b) in fnames.iter().zip(&bodies) {
        let t1 = Instant::now();
        let row = pg
            .query_one("SELECT gman_do($1, $2)", &[f, b])
            .map_err(pg_err("gman_do"))?;
        slowest = slowest.max(t1.elapsed());
        sequential.push(row.get::<_, Option<String>>(0).unwrap_or_default());
    }
    let seq_time = t.elapsed();
    // All tasks from one SQL call.
    let t = Instant::now();
    let rows = pg
        .query(
            "SELECT ordinality, result FROM gman_do_many($1::text[], $2::text[]) ORDER BY ordinality",
            &[&fnames, &bodies],
        )
        .map_err(pg_err("gman_do_many over three functions"))?;
    let par_time = t.elapsed();
    let gathered: Vec<String> = rows
        .iter()
        .map(|row| row.get::<_, Option<String>>(1).unwrap_or_default())
        .collect();
    ensure(gathered == sequential, || {
        "gman_do_many results differ from one-at-a-time gman_do results".into()
    })?;
    // Independent checks of the contents.
    let nd = docs.len();
    for (i, d) in docs.iter().enumerate() {
        let words = d.body.split_ascii_whitespace().count();
        ensure(gathered[i].trim() == words.to_string(), || {
            format!(
                "word_count of {}: worker said {:?}, Rust counts {words}",
                d.path.display(),
                gathered[i]
            )
        })?;
        let lic = d
            .body
            .lines()
            .filter(|l| contains_word(&l.to_ascii_lowercase(), "license"))
            .count();
        ensure(gathered[nd + i].trim() == lic.to_string(), || {
            format!(
                "fulltext_count of {}: worker said {:?}, expected {lic}",
                d.path.display(),
                gathered[nd + i]
            )
        })?;
    }
    let sums = pg
        .query(
            "SELECT encode(sha256(convert_to(b, 'UTF8')), 'hex') FROM unnest($1::text[]) WITH ORDINALITY AS u(b, o) ORDER BY o",
            &[&docs.iter().map(|d| d.body.clone()).collect::<Vec<_>>()],
        )
        .map_err(pg_err("sha256 in SQL"))?;
    for (i, row) in sums.iter().enumerate() {
        let want: String = row.get(0);
        ensure(gathered[2 * nd + i].starts_with(&want), || {
            format!(
                "checksum of document {i}: {:?} vs {want}",
                gathered[2 * nd + i]
            )
        })?;
    }
    let tasks = fnames.len();
    r.line(format!(
        "{tasks} tasks ({} documents x word_count, fulltext_count, checksum)",
        docs.len()
    ));
    r.line(format!(
        "one gman_do per task: {} in all (slowest task {}); one gman_do_many call: {} ({:.1}x faster)",
        ms(seq_time),
        ms(slowest),
        ms(par_time),
        seq_time.as_secs_f64() / par_time.as_secs_f64()
    ));
    r.line(format!(
        "  sample: {} has {} words, {} lines naming a license",
        docs[0].path.display(),
        gathered[0].trim(),
        gathered[nd].trim()
    ));
    r.count("tasks", tasks as u64);
    r.count("sequential_ms", seq_time.as_millis() as u64);
    r.count("gathered_ms", par_time.as_millis() as u64);
    Ok(r)
}

fn contains_word(line: &str, word: &str) -> bool {
    let b = line.as_bytes();
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut start = 0;
    while let Some(pos) = line[start..].find(word) {
        let i = start + pos;
        let j = i + word.len();
        let before = i == 0 || !is_word(b[i - 1]);
        let after = j == b.len() || !is_word(b[j]);
        if before && after {
            return true;
        }
        start = i + 1;
    }
    false
}

/// Recipe 3: map/reduce with `gman_sum` in both databases, against the
/// same sum in plain SQL.
pub fn map_reduce(env: &Env, docs: usize) -> RecipeResult {
    let mut r = Report::new("3. Map/reduce: gman_sum('length', body) over documents");
    let docs = data::documents(docs)?;
    let mut pg = env.pg()?;
    pg.batch_execute("CREATE TABLE demo.docs (path text PRIMARY KEY, body text NOT NULL)")
        .map_err(pg_err("create demo.docs"))?;
    for d in &docs {
        pg.execute(
            "INSERT INTO demo.docs VALUES ($1, $2)",
            &[&d.path.to_string_lossy().into_owned(), &d.body],
        )
        .map_err(pg_err("insert demo.docs"))?;
    }
    let t = Instant::now();
    let row = pg
        .query_one(
            "SELECT gman_sum('length', body)::bigint, sum(octet_length(body))::bigint FROM demo.docs",
            &[],
        )
        .map_err(pg_err("gman_sum in PostgreSQL"))?;
    let pg_time = t.elapsed();
    let (pg_sum, pg_plain): (i64, i64) = (row.get(0), row.get(1));
    ensure(pg_sum == pg_plain, || {
        format!("PostgreSQL: gman_sum {pg_sum} != sum(octet_length) {pg_plain}")
    })?;

    let mut my = env.my()?;
    my.query_drop(
        "CREATE TABLE docs (path VARCHAR(255) PRIMARY KEY, body LONGTEXT NOT NULL) \
         CHARACTER SET utf8mb4",
    )
    .map_err(my_err("create docs"))?;
    for d in &docs {
        my.exec_drop(
            "INSERT INTO docs VALUES (?, ?)",
            (d.path.to_string_lossy().into_owned(), &d.body),
        )
        .map_err(my_err("insert docs"))?;
    }
    let t = Instant::now();
    let row: Option<(i64, i64)> = my
        .query_first("SELECT gman_sum('length', body), SUM(LENGTH(body)) FROM docs")
        .map_err(my_err("gman_sum in MariaDB"))?;
    let my_time = t.elapsed();
    let (my_sum, my_plain) = row.ok_or("gman_sum returned no row")?;
    ensure(my_sum == my_plain, || {
        format!("MariaDB: gman_sum {my_sum} != SUM(LENGTH) {my_plain}")
    })?;
    let bytes: usize = docs.iter().map(|d| d.body.len()).sum();
    ensure(pg_sum as usize == bytes, || {
        format!("{pg_sum} != {bytes} bytes read")
    })?;
    r.line(format!(
        "{} documents, {bytes} bytes: PostgreSQL gman_sum = {pg_sum} in {}, MariaDB gman_sum = {my_sum} in {}; \
         both equal the plain SQL sum",
        docs.len(),
        ms(pg_time),
        ms(my_time)
    ));
    r.count("documents", docs.len() as u64);
    r.count("bytes", bytes as u64);
    Ok(r)
}

/// Recipe 4: the log service. A real log piped line by line into
/// `log_collect` with Debian's `gearman -n`, collected into a table.
pub fn log_service(env: &Env) -> RecipeResult {
    let mut r = Report::new("4. Log service: a log piped into log_collect, collected into a table");
    let (path, lines) = data::log_file(100)?;
    let gearman = "/usr/bin/gearman";
    ensure(std::path::Path::new(gearman).exists(), || {
        "gearman is missing: install the Debian package gearman-tools (scripts/setup)".into()
    })?;
    let t = Instant::now();
    let input = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = Command::new(gearman)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &env.gearmand.port().to_string(),
            "-b",
            "-N",
            "-f",
            "log_collect",
        ])
        .stdin(input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running gearman: {e}"))?;
    ensure(out.status.success(), || {
        format!(
            "gearman -b -N failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let sent = t.elapsed();
    let n = lines as i64;
    let arrived = wait_until(DELIVERY_TIMEOUT, || {
        Ok(pg_count(env, "SELECT count(*) FROM demo.log_lines")? >= n)
    })?;
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let want = multiset(text.lines().map(str::to_string));
    let mut c = env.pg()?;
    let got = multiset(
        c.query("SELECT line FROM demo.log_lines", &[])
            .map_err(pg_err("read demo.log_lines"))?
            .iter()
            .map(|row| row.get::<_, String>(0)),
    );
    ensure(arrived && got == want, || {
        format!(
            "{} rows for {lines} lines; first difference: {}",
            got.values().sum::<usize>(),
            first_difference(&want, &got)
        )
    })?;
    r.line(format!(
        "`gearman -b -N -f log_collect < {}`: {lines} lines sent in {}, {lines} rows collected after {}",
        path.display(),
        ms(sent),
        ms(t.elapsed())
    ));
    r.count("lines", lines as u64);
    r.count("rows", got.values().sum::<usize>() as u64);
    Ok(r)
}

/// Recipe 5: a pipeline. Inserting a path starts `pipe_fetch` (through
/// `gman_trigger`), whose SQL submits `pipe_transform`, whose SQL submits
/// `pipe_store`; a final query searches what was stored.
pub fn pipeline(env: &Env, docs: usize) -> RecipeResult {
    let mut r = Report::new("5. Pipeline: insert -> fetch -> transform -> store -> search");
    let docs = data::documents(docs)?;
    let mut pg = env.pg()?;
    pg.batch_execute(
        "CREATE TRIGGER pipe_fetch AFTER INSERT ON demo.pipe_input
           FOR EACH ROW EXECUTE FUNCTION gman_trigger('pipe_fetch')",
    )
    .map_err(pg_err("create trigger pipe_fetch"))?;
    let t = Instant::now();
    for d in &docs {
        pg.execute(
            "INSERT INTO demo.pipe_input (path) VALUES ($1)",
            &[&d.path.to_string_lossy().into_owned()],
        )
        .map_err(pg_err("insert demo.pipe_input"))?;
    }
    let n = docs.len() as i64;
    let done = wait_until(DELIVERY_TIMEOUT, || {
        Ok(pg_count(env, "SELECT count(*) FROM demo.pipe_docs")? >= n)
    })?;
    let stored = pg_count(env, "SELECT count(*) FROM demo.pipe_docs")?;
    ensure(done && stored == n, || {
        format!(
            "{stored} of {n} documents reached the end of the pipeline\nworker log:\n{}",
            env.worker_log()
        )
    })?;
    let took = t.elapsed();
    let query = "warranty & merchantability";
    let via_pipeline: Vec<String> = pg
        .query(
            "SELECT path FROM demo.pipe_docs WHERE tsv @@ to_tsquery('english', $1) ORDER BY path",
            &[&query],
        )
        .map_err(pg_err("search"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let direct: Vec<String> = pg
        .query(
            "SELECT path FROM demo.pipe_input
              WHERE to_tsvector('english', pg_read_file(path)) @@ to_tsquery('english', $1)
              ORDER BY path",
            &[&query],
        )
        .map_err(pg_err("direct search"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    ensure(via_pipeline == direct, || {
        format!("pipeline search found {via_pipeline:?}, direct search {direct:?}")
    })?;
    let words_ok: bool = pg
        .query_one(
            "SELECT bool_and(d.words = array_length(regexp_split_to_array(trim(pg_read_file(i.path)), '\\s+'), 1))
               FROM demo.pipe_docs d JOIN demo.pipe_input i USING (path)",
            &[],
        )
        .map_err(pg_err("check word counts"))?
        .get::<_, Option<bool>>(0)
        .unwrap_or(false);
    ensure(words_ok, || {
        "stored word counts differ from the files".into()
    })?;
    r.line(format!(
        "{n} documents through three chained jobs in {}; search {query:?} finds {} of them, \
         the same as searching the files directly",
        ms(took),
        via_pipeline.len()
    ));
    if let Some(first) = via_pipeline.first() {
        r.line(format!("  sample match: {first}"));
    }
    r.count("stored", stored as u64);
    r.count("matches", via_pipeline.len() as u64);
    Ok(r)
}

/// Recipe 6: the durable outbox. With gearmand stopped, rows are written
/// under `gearman.dispatch = outbox`; gearmand starts; the relay delivers
/// every committed one and none of a rolled-back transaction.
pub fn durable_outbox(env: &mut Env, rows: usize) -> RecipeResult {
    let mut r =
        Report::new("6. Durable outbox: jobs written while gearmand is down, delivered later");
    env.gearmand.kill();
    let mut pg = env.pg()?;
    pg.batch_execute("SET gearman.dispatch = 'outbox'")
        .map_err(pg_err("SET gearman.dispatch"))?;
    let n = rows as i64;
    let mut tx = pg.transaction().map_err(pg_err("begin"))?;
    tx.execute(
        "SELECT count(gman_do_background('outbox_sink', 'order ' || i)) FROM generate_series(1, $1::int) i",
        &[&(n as i32)],
    )
    .map_err(pg_err("gman_do_background in outbox mode"))?;
    tx.commit().map_err(pg_err("commit"))?;
    let mut tx = pg.transaction().map_err(pg_err("begin"))?;
    tx.execute(
        "SELECT count(gman_do_background('outbox_sink', 'rolled back ' || i)) FROM generate_series(1, 100) i",
        &[],
    )
    .map_err(pg_err("outbox rows to roll back"))?;
    tx.rollback().map_err(pg_err("rollback"))?;
    let queued = pg_count(env, "SELECT count(*) FROM gearman.outbox")?;
    ensure(queued == n, || {
        format!("gearman.outbox holds {queued} rows, expected {n}")
    })?;
    r.line(format!(
        "gearmand stopped; {n} jobs committed and 100 rolled back under gearman.dispatch = outbox: \
         gearman.outbox holds {queued} rows"
    ));
    let t = Instant::now();
    env.gearmand.restart();
    env.start_relay()?;
    let done = wait_until(DELIVERY_TIMEOUT, || {
        Ok(pg_count(env, "SELECT count(*) FROM demo.outbox_seen")? >= n
            && pg_count(env, "SELECT count(*) FROM gearman.outbox")? == 0)
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let mut c = env.pg()?;
    let got = multiset(
        c.query("SELECT payload FROM demo.outbox_seen", &[])
            .map_err(pg_err("read demo.outbox_seen"))?
            .iter()
            .map(|row| row.get::<_, String>(0)),
    );
    let want = multiset((1..=n).map(|i| format!("order {i}")));
    ensure(done && got == want, || {
        format!(
            "{} jobs delivered of {n}; first difference: {}\n{}",
            got.values().sum::<usize>(),
            first_difference(&want, &got),
            env.relay_log()
        )
    })?;
    r.line(format!(
        "gearmand started, relay running: all {n} committed jobs delivered once in {}, none of the \
         rolled-back ones; gearman.outbox is empty",
        ms(t.elapsed())
    ));
    r.count("delivered", got.values().sum::<usize>() as u64);
    Ok(r)
}

/// Runs every recipe in order, handing each result to `report` as soon as
/// it is known; stops before the next recipe once `stop` is set (Ctrl-C).
/// Returns the results of the recipes that ran.
pub fn run_all(
    env: &mut Env,
    scale: Scale,
    stop: &AtomicBool,
    mut report: impl FnMut(&str, &RecipeResult),
) -> Vec<(String, RecipeResult)> {
    let mut out = Vec::new();
    macro_rules! step {
        ($name:expr, $run:expr) => {
            if stop.load(Ordering::SeqCst) {
                return out;
            }
            let r = $run;
            report($name, &r);
            out.push(($name.to_string(), r));
        };
    }
    step!("queue", queue_from_trigger(env, scale.rows));
    step!("scatter", scatter_gather(env, scale.scatter_docs));
    step!("mapreduce", map_reduce(env, scale.docs));
    step!("log", log_service(env));
    step!("pipeline", pipeline(env, scale.pipeline_docs));
    step!("outbox", durable_outbox(env, scale.outbox_rows));
    out
}

/// How much data each recipe uses.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Packages inserted through the triggers.
    pub rows: usize,
    /// Documents for scatter/gather.
    pub scatter_docs: usize,
    /// Documents for map/reduce.
    pub docs: usize,
    /// Documents through the pipeline.
    pub pipeline_docs: usize,
    /// Outbox jobs.
    pub outbox_rows: usize,
}

impl Default for Scale {
    fn default() -> Scale {
        Scale {
            rows: 500,
            scatter_docs: 40,
            docs: 300,
            pipeline_docs: 50,
            outbox_rows: 1000,
        }
    }
}
