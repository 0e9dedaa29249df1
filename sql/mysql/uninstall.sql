-- Drops every function of libgearman_mysql_udf.so (see install.sql).
-- IF EXISTS: safe to run when some or all are already gone.
DROP FUNCTION IF EXISTS gman_do;
DROP FUNCTION IF EXISTS gman_do_high;
DROP FUNCTION IF EXISTS gman_do_low;
DROP FUNCTION IF EXISTS gman_do_background;
DROP FUNCTION IF EXISTS gman_do_high_background;
DROP FUNCTION IF EXISTS gman_do_low_background;
DROP FUNCTION IF EXISTS gman_sum;
DROP FUNCTION IF EXISTS gman_servers_set;
DROP FUNCTION IF EXISTS gman_do_epoch;
DROP FUNCTION IF EXISTS gman_job_status;
DROP FUNCTION IF EXISTS gman_server_status;
DROP FUNCTION IF EXISTS gman_last_error;
DROP FUNCTION IF EXISTS gman_do_background_at;
DROP FUNCTION IF EXISTS gman_do_many;
DROP FUNCTION IF EXISTS gman_dispatch_status;
