-- jsonb workloads: the job gets the jsonb value's canonical text.
-- VOLATILE, not STRICT (NULL function gives NULL), PARALLEL UNSAFE, as the text forms.
CREATE FUNCTION gman_do("function" text, "workload" jsonb, "unique" text DEFAULT NULL)
RETURNS text LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT @extschema@.gman_do("function", "workload"::text, "unique") $$;
CREATE FUNCTION gman_do_high("function" text, "workload" jsonb, "unique" text DEFAULT NULL)
RETURNS text LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT @extschema@.gman_do_high("function", "workload"::text, "unique") $$;
CREATE FUNCTION gman_do_low("function" text, "workload" jsonb, "unique" text DEFAULT NULL)
RETURNS text LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT @extschema@.gman_do_low("function", "workload"::text, "unique") $$;
CREATE FUNCTION gman_do_background("function" text, "workload" jsonb, "unique" text DEFAULT NULL)
RETURNS text LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT @extschema@.gman_do_background("function", "workload"::text, "unique") $$;
CREATE FUNCTION gman_do_high_background("function" text, "workload" jsonb, "unique" text DEFAULT NULL)
RETURNS text LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT @extschema@.gman_do_high_background("function", "workload"::text, "unique") $$;
CREATE FUNCTION gman_do_low_background("function" text, "workload" jsonb, "unique" text DEFAULT NULL)
RETURNS text LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT @extschema@.gman_do_low_background("function", "workload"::text, "unique") $$;
CREATE FUNCTION gman_do_background_at("function" text, "workload" jsonb, "run_at" timestamptz, "unique" text DEFAULT NULL)
RETURNS text LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT @extschema@.gman_do_background_at("function", "workload"::text, "run_at", "unique") $$;
