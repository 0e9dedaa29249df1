//! Tier 3, end to end: SQL -> gearmand -> gearman-worker -> result, for the
//! six cookbook recipes, on private gearmand, PostgreSQL and MariaDB.
//!
//! Needs the extension installed into the system PostgreSQL 15
//! (`scripts/test` runs `cargo pgrx install` first) and the debug builds of
//! `gearman-worker` and `libgearman_mysql_udf.so` (built by
//! `cargo test --workspace`).

use gearman_demo::recipes;
use gearman_demo::Env;

#[test]
fn the_six_cookbook_recipes_end_to_end() {
    let mut env = Env::start().unwrap_or_else(|e| panic!("environment: {e}"));

    let r = recipes::queue_from_trigger(&env, 120).unwrap_or_else(|e| panic!("recipe 1: {e}"));
    assert_eq!(r.get("mariadb_payloads"), Some(120));
    assert_eq!(r.get("postgres_payloads"), Some(120));
    assert_eq!(r.get("rolled_back_payloads"), Some(0));

    let r = recipes::scatter_gather(&env, 12).unwrap_or_else(|e| panic!("recipe 2: {e}"));
    assert_eq!(r.get("tasks"), Some(36));

    let r = recipes::map_reduce(&env, 60).unwrap_or_else(|e| panic!("recipe 3: {e}"));
    assert_eq!(r.get("documents"), Some(60));
    assert!(r.get("bytes").unwrap() > 60 * 200);

    let r = recipes::log_service(&env).unwrap_or_else(|e| panic!("recipe 4: {e}"));
    assert_eq!(r.get("rows"), r.get("lines"));
    assert!(r.get("lines").unwrap() >= 100);

    let r = recipes::pipeline(&env, 15).unwrap_or_else(|e| panic!("recipe 5: {e}"));
    assert_eq!(r.get("stored"), Some(15));

    let r = recipes::durable_outbox(&mut env, 300).unwrap_or_else(|e| panic!("recipe 6: {e}"));
    assert_eq!(r.get("delivered"), Some(300));
}
