-- gman_sum(function, workload): one foreground job per row, all run at once
-- in the final step; the sum of the integer results (NULL for no rows).
CREATE AGGREGATE gman_sum(function text, workload text) (
    SFUNC = gman_sum_state,
    STYPE = internal,
    FINALFUNC = gman_sum_final
);
COMMENT ON AGGREGATE gman_sum(text, text) IS
    'Runs one Gearman job per row concurrently and sums the integer results';
