-- Installs the Gearman UDFs of libgearman_mysql_udf.so (gearman-mysql).
--
-- First copy the library into the server's plugin_dir as a NEW file
-- (SELECT @@plugin_dir;  then  install -m 0644 libgearman_mysql_udf.so <plugin_dir>/),
-- never `cp` over a library the server has loaded. Then, as a user with
-- INSERT privilege on the mysql schema:
--   mariadb < sql/mysql/install.sql
-- To replace the library later: run uninstall.sql, install the new file, run
-- this file again.
--
-- Upgrading from a build without the last three functions
-- (gman_do_background_at, gman_do_many, gman_dispatch_status): replace the
-- library as above (uninstall.sql drops every function, old or new, and
-- ignores those that do not exist); this file then creates them all.
--
-- The first eight lines are those of the original gearman-mysql-udf, so that
-- existing triggers and install scripts keep working.
--
-- gman_do_background / _high_ / _low_ / gman_do_background_at (gman_do_epoch:
-- its older name, same function) return the job handle
-- (H:host:n). With background_dispatch = "pipelined" in the configuration
-- file (gearman-udf.toml) they hand the job to the library's one sender
-- thread (which writes every session's jobs pipelined, one connection per
-- job server), return without waiting for gearmand's confirmation and give
-- the job's unique key instead (the caller's, or a
-- generated 36-character one); gman_job_status() accepts either. Jobs that
-- gearmand refuses later, or whose confirmation does not come within
-- io_timeout_ms (fate unknown: they may have been queued), are reported in
-- the error log and by gman_last_error() of the connection that submitted
-- them.
--
-- gman_servers_set() is disabled by default: it fails for every SQL user
-- (root included) unless the configuration file (/etc/mysql/gearman-udf.toml,
-- or the file named by GEARMAN_UDF_CONFIG) says allow_servers_set = true.
-- UDFs need no privilege and the list it sets is process-wide, so any user
-- could otherwise send every session's jobs to a server of their choice. Put
-- the job servers in that file instead (servers = "...", [function_servers]).
-- When enabled it returns its argument as given ('127.0.0.1', not
-- '127.0.0.1:4730'), as gearman-mysql-udf did; a list that is not
-- host[:port],... (IPv6 in brackets) is refused, naming the bad entry.
-- An entry tls://host[:port] is reached over TLS, verified against the
-- configuration file's tls_ca_file (default: the system's roots), with the
-- client certificate of tls_cert_file/tls_key_file if set; a server that
-- fails verification gives NULL, one error-log line and gman_last_error().
--
-- gman_do_background_at(function, workload, run_at [, unique]): a scheduled
-- job; run_at is Unix seconds or RFC 3339 text with Z or an offset
-- ('2026-12-03T10:00:00Z'); a DATETIME (no time zone) is refused: pass
-- UNIX_TIMESTAMP(x).
-- gman_do_many(function, json_array): one foreground job per element, all
-- submitted before any result is awaited; a JSON array of the results (JSON
-- strings) in input order; a failed job is null in its place (the row is
-- still returned; gman_last_error() names the first failed element). A
-- string element is its text, null an empty workload, any other element its
-- JSON text. Bounded like gman_do: one foreground_timeout_ms for the whole
-- call, each result and the whole output at most max_result_bytes, at most
-- max_sum_rows elements.
-- gman_dispatch_status(): JSON {"dispatch","sent","confirmed","failed",
-- "refused","unknown","pending"}: the pipelined background jobs of the whole
-- server process since the library was loaded (sent = confirmed + failed +
-- pending; failed = refused + unknown; pending includes jobs still queued),
-- and once the sender thread has started "sender": {"queued","queued_bytes",
-- "oldest_age_ms","written","unsent","panics","servers"}.
-- gman_server_status(): JSON, one object per server and function with total
-- (jobs gearmand holds), queued (jobs waiting for a worker: total - running),
-- running and workers.
-- gman_sum(): do not use it with GROUP BY ... WITH ROLLUP: MariaDB shares one
-- aggregate state between the rollup rows of a UDF aggregate, so their
-- totals are wrong (a plain C aggregate UDF does the same).
--
-- Time: every call has one deadline from its start (connecting and failing
-- over included): foreground_timeout_ms (30 s) for gman_do* and a gman_sum
-- group, io_timeout_ms (5 s) for background calls, gman_job_status() and
-- gman_server_status(). A background call that timed out waiting for
-- gearmand's confirmation may still have been queued: give the job a unique
-- key before retrying it, or the retry may run it twice.
-- Size: a gman_do* result is at most max_result_bytes (16 MiB); a longer
-- one makes that row NULL.
--
-- Errors: a failing row returns NULL for that row only (later rows still
-- run); gman_last_error() returns the last error of this connection's latest
-- statement that called another gman_* function (NULL if none failed), or
-- a later report of pipelined jobs it submitted that were refused (kept
-- until its next error); never another connection's (identified by its
-- connection id, also with the thread cache and the thread pool).
CREATE FUNCTION gman_do RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_do_high RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_do_low RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_do_background RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_do_high_background RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_do_low_background RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE AGGREGATE FUNCTION gman_sum RETURNS INTEGER SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_servers_set RETURNS STRING SONAME "libgearman_mysql_udf.so";
-- New in gearman-mysql.
CREATE FUNCTION gman_do_epoch RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_job_status RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_server_status RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_last_error RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_do_background_at RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_do_many RETURNS STRING SONAME "libgearman_mysql_udf.so";
CREATE FUNCTION gman_dispatch_status RETURNS STRING SONAME "libgearman_mysql_udf.so";
