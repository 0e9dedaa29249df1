//! The PostgreSQL extension's upgrade path, checked mechanically.
//!
//! In one private PostgreSQL cluster (15, or the installation named by
//! `GEARMAN_TEST_PG_BINDIR`, e.g. `/opt/postgresql-18/bin`):
//!
//! 1. database `upgraded`: `CREATE EXTENSION gearman VERSION '0.1.0'` from the
//!    kept install script (`gearman-pg/sql/gearman--0.1.0.sql`, the script
//!    0.1.0 shipped);
//! 2. objects that depend on the extension: a `gman_trigger` trigger, a view
//!    over `gman_server_status()`, rows in `gearman.outbox`;
//! 3. `ALTER EXTENSION gearman UPDATE` (through every upgrade script to the
//!    workspace version);
//! 4. database `fresh`: `CREATE EXTENSION gearman` (the current version), and
//!    the two catalogs are compared: the extension's member objects,
//!    functions with argument and result types, volatility, strictness,
//!    parallel safety, language and body or C symbol, aggregates, tables and
//!    columns (type, order, NOT NULL, default), constraints, indexes,
//!    sequences, views, types, comments, grants (ACLs, normalized so an
//!    explicit grant equal to the default counts as the default) and the
//!    extension's dump configuration. Any difference fails the test and is
//!    listed line by line;
//! 5. on the upgraded database the trigger still delivers, the outbox rows
//!    written at 0.1.0 are relayed by `gearman-worker relay`, and the
//!    functions work (`gman_do`, commit-mode `gman_do_background`,
//!    `gman_dispatch_status()`, the view).
//!
//! The extension must be installed with its kept and upgrade scripts into
//! that PostgreSQL (`scripts/install-pg-extension`, or the packages).
//! Every schema change comes with an upgrade script in `gearman-pg/sql/`
//! (`gearman--<from>--<to>.sql`); this test then tells whether the script
//! produces exactly what a fresh install has.

mod common;

use common::*;
use gearman_testkit::{pg, Gearmand, Postgres};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// The first released version; its install script is kept.
const FIRST: &str = "0.1.0";
/// The version a fresh install gets (the workspace version).
const CURRENT: &str = env!("CARGO_PKG_VERSION");

#[test]
fn upgrade_from_0_1_0_equals_a_fresh_install_and_keeps_dependent_objects() {
    let ext_dir = pg::pg_config("sharedir").join("extension");
    for f in [
        "gearman.control".to_string(),
        format!("gearman--{FIRST}.sql"),
        format!("gearman--{CURRENT}.sql"),
    ] {
        assert!(
            ext_dir.join(&f).is_file(),
            "{} is missing: install the extension with its kept and upgrade scripts \
             into this PostgreSQL ({}) with `scripts/install-pg-extension` \
             (pass --pg-config {}/pg_config for another installation)",
            ext_dir.join(&f).display(),
            pg::bin_dir().display(),
            pg::bin_dir().display()
        );
    }

    let g = Gearmand::start();
    let servers = format!("gearman.servers={}", g.addr());
    let pg = Postgres::start_with(&[&servers]);
    pg.psql("CREATE DATABASE upgraded");
    pg.psql("CREATE DATABASE fresh");
    let url = |db: &str| format!("postgresql://postgres@127.0.0.1:{}/{db}", pg.port());

    // 1-2: version 0.1.0 and objects that depend on it.
    let mut up = connect(&url("upgraded"));
    up.batch_execute(&format!("CREATE EXTENSION gearman VERSION '{FIRST}'"))
        .unwrap_or_else(|e| panic!("CREATE EXTENSION gearman VERSION '{FIRST}': {e:?}"));
    assert_eq!(ext_version(&mut up), FIRST);
    exec(
        &mut up,
        "CREATE TABLE blog_entries (id serial PRIMARY KEY, title text NOT NULL, url text);
         CREATE TRIGGER blog_job AFTER INSERT ON blog_entries
             FOR EACH ROW EXECUTE FUNCTION gman_trigger('upgrade_trigger');
         CREATE VIEW job_servers AS SELECT * FROM gman_server_status();
         SET gearman.dispatch = 'outbox';
         SELECT gman_do_background('upgrade_outbox', 'written-at-0.1.0-a');
         SELECT gman_do_background('upgrade_outbox', 'written-at-0.1.0-b', 'key-b');
         RESET gearman.dispatch;",
    );
    assert_eq!(count(&mut up, "SELECT count(*) FROM gearman.outbox"), 2);

    // 3: the upgrade.
    if let Err(e) = up.batch_execute("ALTER EXTENSION gearman UPDATE") {
        panic!(
            "ALTER EXTENSION gearman UPDATE from {FIRST} failed: {}\n\
             (the upgrade scripts in {} must take a 0.1.0 install with a view over \
             gman_server_status(), a gman_trigger trigger and outbox rows to {CURRENT})",
            db_error(&e),
            ext_dir.display()
        );
    }
    assert_eq!(ext_version(&mut up), CURRENT);

    // 4: the same catalog as a fresh install.
    let mut fr = connect(&url("fresh"));
    exec(&mut fr, "CREATE EXTENSION gearman");
    assert_eq!(ext_version(&mut fr), CURRENT);
    let upgraded = catalog(&mut up);
    let fresh = catalog(&mut fr);
    assert!(
        upgraded.len() > 40
            && upgraded
                .iter()
                .any(|l| l.starts_with("function public.gman_do(")),
        "the catalog query found too little ({} lines):\n{}",
        upgraded.len(),
        upgraded.iter().cloned().collect::<Vec<_>>().join("\n")
    );
    if upgraded != fresh {
        panic!("{}", describe_difference(&upgraded, &fresh));
    }

    // 5: the dependent objects and the functions still work.
    let dir = tempfile::tempdir().unwrap();
    let trig_seen = dir.path().join("trigger.txt");
    let outbox_seen = dir.path().join("outbox.txt");
    let record = |file: &Path| {
        format!(
            "[\"sh\", \"-c\", {:?}]",
            format!(
                "w=$(cat); printf '%s\\n' \"$w\" >> {}; printf ok",
                file.display()
            )
        )
    };
    let cfg = write_file(
        dir.path(),
        "worker.toml",
        &format!(
            "servers = [\"{}\"]\n[function.reverse]\nbuiltin = \"reverse\"\n\
             [function.upgrade_trigger]\nexec = {}\n[function.upgrade_outbox]\nexec = {}\n",
            g.addr(),
            record(&trig_seen),
            record(&outbox_seen)
        ),
    );
    let w = WorkerProc::spawn(&["--config", cfg.to_str().unwrap()], &[]);
    for f in ["reverse", "upgrade_trigger", "upgrade_outbox"] {
        wait_workers(&g.addr(), f, 1, &|| w.log());
    }

    // The trigger created at 0.1.0 delivers the row after COMMIT.
    exec(
        &mut up,
        "INSERT INTO blog_entries (title, url) VALUES ('upgraded', 'http://example.invalid/u')",
    );
    let lines = |f: &Path| -> Vec<String> {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(15), || lines(&trig_seen).len() == 1),
        "the trigger's job did not arrive; worker log:\n{}",
        w.log()
    );
    let payload: serde_json::Value = serde_json::from_str(&lines(&trig_seen)[0]).unwrap();
    assert_eq!(payload["table"], "blog_entries");
    assert_eq!(payload["op"], "INSERT");
    assert_eq!(payload["new"]["title"], "upgraded");

    // The outbox rows written at 0.1.0 are relayed after the upgrade.
    let mut relay = WorkerProc::spawn(
        &[
            "relay",
            "--postgres",
            &url("upgraded"),
            "-s",
            &g.addr(),
            "--poll-interval-ms",
            "200",
        ],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(15), || {
            count(&mut up, "SELECT count(*) FROM gearman.outbox") == 0
        }),
        "the relay did not drain the outbox; relay log:\n{}",
        relay.log()
    );
    assert!(
        wait_until(Duration::from_secs(15), || lines(&outbox_seen).len() == 2),
        "the outbox jobs did not arrive; worker log:\n{}",
        w.log()
    );
    let mut got = lines(&outbox_seen);
    got.sort();
    assert_eq!(got, ["written-at-0.1.0-a", "written-at-0.1.0-b"]);
    relay.signal(libc::SIGTERM);
    let st = relay
        .wait_exit(Duration::from_secs(10))
        .expect("relay did not exit");
    assert_eq!(st.code(), Some(0), "{}", relay.log());

    // The functions on the upgraded database, in a new session.
    let mut s = connect(&url("upgraded"));
    assert_eq!(
        one(&mut s, "SELECT gman_do('reverse', 'upgrade')"),
        "edargpu"
    );
    exec(
        &mut s,
        "BEGIN; SELECT gman_do_background('upgrade_outbox', 'commit-mode'); COMMIT;",
    );
    assert!(
        wait_until(Duration::from_secs(15), || lines(&outbox_seen).len() == 3),
        "the commit-mode job did not arrive; worker log:\n{}",
        w.log()
    );
    assert_eq!(
        one(
            &mut s,
            "SELECT format('sent=%s failed=%s confirmed+pending=%s', sent, failed, confirmed + pending)
               FROM gman_dispatch_status()"
        ),
        "sent=1 failed=0 confirmed+pending=1"
    );
    assert_eq!(
        one(
            &mut s,
            "SELECT workers::text FROM job_servers WHERE function = 'reverse'"
        ),
        "1"
    );
}

fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

fn db_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "{}: {} (SQLSTATE {}){}{}",
            d.severity(),
            d.message(),
            d.code().code(),
            d.detail()
                .map(|s| format!("\nDETAIL: {s}"))
                .unwrap_or_default(),
            d.where_()
                .map(|s| format!("\nCONTEXT: {s}"))
                .unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

fn exec(c: &mut postgres::Client, sql: &str) {
    if let Err(e) = c.batch_execute(sql) {
        panic!("`{sql}` failed: {}", db_error(&e));
    }
}

fn one(c: &mut postgres::Client, sql: &str) -> String {
    match c.simple_query(sql) {
        Ok(msgs) => msgs
            .iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("`{sql}` returned no row")),
        Err(e) => panic!("`{sql}` failed: {}", db_error(&e)),
    }
}

fn count(c: &mut postgres::Client, sql: &str) -> u64 {
    one(c, sql).parse().unwrap()
}

fn ext_version(c: &mut postgres::Client) -> String {
    one(
        c,
        "SELECT extversion FROM pg_extension WHERE extname = 'gearman'",
    )
}

/// One line per fact about the extension's objects, each starting with the
/// object it is about, so that sorted differences group by object.
const CATALOG_QUERIES: &[&str] = &[
    // The extension itself and its dump configuration.
    "SELECT format('extension gearman | schema=%s relocatable=%s', e.extnamespace::regnamespace, e.extrelocatable)
       FROM pg_extension e WHERE e.extname = 'gearman'",
    "SELECT format('extension gearman | config dump %s where %L', c::regclass, coalesce(w, ''))
       FROM pg_extension e,
            unnest(e.extconfig, coalesce(e.extcondition, array_fill(''::text, array[cardinality(e.extconfig)]))) AS u(c, w)
      WHERE e.extname = 'gearman'",
    // Every member object, by its description (kind, name, argument types).
    "SELECT format('member %s', pg_describe_object(d.classid, d.objid, d.objsubid))
       FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid
      WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'gearman'",
    // Functions, procedures and aggregates: signature and properties.
    "SELECT format('function %s.%s(%s) | returns %s | kind=%s volatility=%s strict=%s security_definer=%s leakproof=%s parallel=%s language=%s cost=%s rows=%s config=%s',
                   p.pronamespace::regnamespace, p.proname, pg_get_function_arguments(p.oid),
                   coalesce(pg_get_function_result(p.oid), '-'), p.prokind, p.provolatile, p.proisstrict,
                   p.prosecdef, p.proleakproof, p.proparallel, l.lanname, p.procost, p.prorows,
                   coalesce(p.proconfig::text, '-'))
       FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
      WHERE p.oid IN (SELECT objid FROM ext_members WHERE classid = 'pg_proc'::regclass)",
    "SELECT format('function %s.%s(%s) | body %s %s',
                   p.pronamespace::regnamespace, p.proname, pg_get_function_identity_arguments(p.oid),
                   coalesce(p.probin, '-'), regexp_replace(p.prosrc, '\\s+', ' ', 'g'))
       FROM pg_proc p
      WHERE p.oid IN (SELECT objid FROM ext_members WHERE classid = 'pg_proc'::regclass)",
    "SELECT format('function %s.%s(%s) | grant %s',
                   p.pronamespace::regnamespace, p.proname, pg_get_function_identity_arguments(p.oid), a.acl)
       FROM pg_proc p, LATERAL (SELECT acl_text(coalesce(p.proacl, acldefault('f', p.proowner))) AS acl) a
      WHERE p.oid IN (SELECT objid FROM ext_members WHERE classid = 'pg_proc'::regclass)",
    "SELECT format('function %s.%s(%s) | comment %L',
                   p.pronamespace::regnamespace, p.proname, pg_get_function_identity_arguments(p.oid),
                   obj_description(p.oid, 'pg_proc'))
       FROM pg_proc p
      WHERE p.oid IN (SELECT objid FROM ext_members WHERE classid = 'pg_proc'::regclass)
        AND obj_description(p.oid, 'pg_proc') IS NOT NULL",
    "SELECT format('function %s | aggregate kind=%s transfn=%s finalfn=%s combinefn=%s serialfn=%s deserialfn=%s stype=%s finalextra=%s finalmodify=%s initval=%s',
                   a.aggfnoid::regprocedure, a.aggkind, a.aggtransfn::regprocedure,
                   a.aggfinalfn::regprocedure, a.aggcombinefn::regprocedure,
                   a.aggserialfn::regprocedure, a.aggdeserialfn::regprocedure,
                   a.aggtranstype::regtype, a.aggfinalextra, a.aggfinalmodify, coalesce(a.agginitval, '-'))
       FROM pg_aggregate a
      WHERE a.aggfnoid IN (SELECT objid FROM ext_members WHERE classid = 'pg_proc'::regclass)",
    // Schemas.
    "SELECT format('schema %s | grant %s comment %L', n.nspname,
                   acl_text(coalesce(n.nspacl, acldefault('n', n.nspowner))),
                   obj_description(n.oid, 'pg_namespace'))
       FROM pg_namespace n
      WHERE n.oid IN (SELECT objid FROM ext_members WHERE classid = 'pg_namespace'::regclass)",
    // Relations (tables, sequences, views) and what hangs on them.
    "SELECT format('relation %s | kind=%s persistence=%s rls=%s force_rls=%s options=%s grant %s comment %L',
                   c.oid::regclass, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
                   coalesce(c.reloptions::text, '-'),
                   acl_text(coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))),
                   obj_description(c.oid, 'pg_class'))
       FROM pg_class c WHERE c.oid IN (SELECT objid FROM ext_relations)",
    "SELECT format('relation %s | column order %s', c.oid::regclass,
                   string_agg(a.attname, ', ' ORDER BY a.attnum))
       FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      WHERE c.oid IN (SELECT objid FROM ext_relations) AND c.relkind <> 'S'
      GROUP BY c.oid",
    "SELECT format('relation %s | column %s %s notnull=%s default=%s identity=%s generated=%s collation=%s grant %s comment %L',
                   c.oid::regclass, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), a.attidentity, a.attgenerated,
                   coalesce(co.collname, '-'), coalesce(acl_text(a.attacl), '-'),
                   col_description(c.oid, a.attnum))
       FROM pg_class c
       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
       LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
       LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 0
      WHERE c.oid IN (SELECT objid FROM ext_relations) AND c.relkind <> 'S'",
    "SELECT format('relation %s | constraint %s %s', co.conrelid::regclass, co.conname, pg_get_constraintdef(co.oid))
       FROM pg_constraint co WHERE co.conrelid IN (SELECT objid FROM ext_relations)",
    "SELECT format('relation %s | index %s', i.indrelid::regclass, pg_get_indexdef(i.indexrelid))
       FROM pg_index i WHERE i.indrelid IN (SELECT objid FROM ext_relations)",
    "SELECT format('relation %s | trigger %s', t.tgrelid::regclass, pg_get_triggerdef(t.oid))
       FROM pg_trigger t WHERE t.tgrelid IN (SELECT objid FROM ext_relations) AND NOT t.tgisinternal",
    "SELECT format('relation %s | policy %s %s %s using %s check %s', p.polrelid::regclass, p.polname, p.polcmd,
                   p.polpermissive, coalesce(pg_get_expr(p.polqual, p.polrelid), '-'),
                   coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '-'))
       FROM pg_policy p WHERE p.polrelid IN (SELECT objid FROM ext_relations)",
    "SELECT format('relation %s | sequence type=%s start=%s increment=%s min=%s max=%s cache=%s cycle=%s owned by %s',
                   s.seqrelid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                   s.seqcache, s.seqcycle,
                   coalesce((SELECT format('%s.%s', d.refobjid::regclass, a.attname)
                               FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                              WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                                AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')), '-'))
       FROM pg_sequence s WHERE s.seqrelid IN (SELECT objid FROM ext_relations)",
    "SELECT format('relation %s | view %s', c.oid::regclass, regexp_replace(pg_get_viewdef(c.oid), '\\s+', ' ', 'g'))
       FROM pg_class c WHERE c.oid IN (SELECT objid FROM ext_relations) AND c.relkind IN ('v', 'm')",
    // Types (composite types' attributes, enum labels, domains).
    "SELECT format('type %s | typtype=%s category=%s grant %s comment %L', t.oid::regtype, t.typtype, t.typcategory,
                   acl_text(coalesce(t.typacl, acldefault('T', t.typowner))), obj_description(t.oid, 'pg_type'))
       FROM pg_type t WHERE t.oid IN (SELECT objid FROM ext_members WHERE classid = 'pg_type'::regclass)",
    "SELECT format('type %s | attribute %s %s (position %s)', t.oid::regtype, a.attname,
                   format_type(a.atttypid, a.atttypmod), a.attnum)
       FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
      WHERE t.oid IN (SELECT objid FROM ext_members WHERE classid = 'pg_type'::regclass)",
    "SELECT format('type %s | enum label %s (position %s)', e.enumtypid::regtype, e.enumlabel, e.enumsortorder)
       FROM pg_enum e WHERE e.enumtypid IN (SELECT objid FROM ext_members WHERE classid = 'pg_type'::regclass)",
    "SELECT format('type %s | domain over %s not null=%s default=%s', t.oid::regtype, t.typbasetype::regtype,
                   t.typnotnull, coalesce(t.typdefault, '-'))
       FROM pg_type t WHERE t.typtype = 'd'
        AND t.oid IN (SELECT objid FROM ext_members WHERE classid = 'pg_type'::regclass)",
];

/// Helpers the queries use, created in `pg_temp` (gone with the session).
const CATALOG_SETUP: &str = "
CREATE TEMP VIEW ext_members AS
  SELECT d.classid, d.objid FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid
   WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'gearman';
-- Member relations, and relations in member schemas (their sequences, views).
CREATE TEMP VIEW ext_relations AS
  SELECT objid FROM ext_members WHERE classid = 'pg_class'::regclass
  UNION
  SELECT c.oid FROM pg_class c
   WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
     AND c.relnamespace IN (SELECT objid FROM ext_members WHERE classid = 'pg_namespace'::regclass);
-- An ACL as sorted grantee:privilege(grant option) items (0 = PUBLIC).
CREATE FUNCTION pg_temp.acl_text(acl aclitem[]) RETURNS text LANGUAGE sql AS $$
  SELECT coalesce(string_agg(format('%s:%s%s',
                                    CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE x.grantee::regrole::text END,
                                    x.privilege_type, CASE WHEN x.is_grantable THEN '*' ELSE '' END),
                             ',' ORDER BY 1), 'none')
    FROM aclexplode(acl) x
$$;
";

/// The catalog facts of the extension in one database.
fn catalog(c: &mut postgres::Client) -> BTreeSet<String> {
    exec(c, CATALOG_SETUP);
    let mut lines = BTreeSet::new();
    for q in CATALOG_QUERIES {
        let q = q.replace("acl_text(", "pg_temp.acl_text(");
        match c.simple_query(&q) {
            Ok(msgs) => {
                for m in msgs {
                    if let postgres::SimpleQueryMessage::Row(r) = m {
                        lines.insert(r.get(0).unwrap_or("<NULL>").to_string());
                    }
                }
            }
            Err(e) => panic!("catalog query failed: {}\n{q}", db_error(&e)),
        }
    }
    exec(
        c,
        "DROP VIEW pg_temp.ext_relations; DROP VIEW pg_temp.ext_members; DROP FUNCTION pg_temp.acl_text(aclitem[]);",
    );
    lines
}

/// Both sides' lines that the other lacks, sorted together so that the two
/// versions of one object's fact sit next to each other.
fn describe_difference(upgraded: &BTreeSet<String>, fresh: &BTreeSet<String>) -> String {
    let mut diff: Vec<(&String, char)> = upgraded
        .difference(fresh)
        .map(|l| (l, '-'))
        .chain(fresh.difference(upgraded).map(|l| (l, '+')))
        .collect();
    diff.sort();
    let mut out = format!(
        "after CREATE EXTENSION gearman VERSION '{FIRST}' and ALTER EXTENSION gearman UPDATE, \
         the catalog differs from CREATE EXTENSION gearman ({CURRENT}) in {} line(s).\n\
         `-` = only after the upgrade, `+` = only in the fresh install; fix the upgrade \
         script (gearman-pg/sql/gearman--*--{CURRENT}.sql) so that it creates exactly the \
         `+` lines' state:\n",
        diff.len()
    );
    for (line, side) in diff {
        let _ = writeln!(out, "  {side} {line}");
    }
    out
}
