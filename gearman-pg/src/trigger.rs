//! `gman_trigger()`: a trigger function that submits the row as JSON.
//!
//! ```sql
//! CREATE TRIGGER t AFTER INSERT OR UPDATE OR DELETE ON tweets
//!     FOR EACH ROW EXECUTE FUNCTION gman_trigger('send_tweet' [, 'high'|'normal'|'low']);
//! ```
//!
//! The workload is `{"schema":..,"table":..,"op":"INSERT|UPDATE|DELETE|TRUNCATE","new":row|null,"old":row|null}`
//! where each row is `row_to_json` of the table row (so column types keep
//! their JSON form). The job is a background job sent per
//! `gearman.dispatch` (by default after COMMIT, so the worker can read the
//! row). In a BEFORE trigger the row is passed through unchanged.
//!
//! Called any other way (`SELECT gman_trigger()`), it raises SQLSTATE
//! `39P01` (trigger_protocol_violated) with a hint showing `CREATE TRIGGER`.
//! Any other trigger-protocol failure (bad trigger data) raises `39P01` as
//! well, never an internal error.

use crate::error::{or_report, GmError};
use crate::functions::background;
use gearman_core::Priority;
use pgrx::prelude::*;
use pgrx::{direct_function_call, PgSqlErrorCode, PgTriggerError};

const TRIGGER_USAGE: &str = "CREATE TRIGGER ... AFTER INSERT OR UPDATE OR DELETE ON some_table \
     FOR EACH ROW EXECUTE FUNCTION gman_trigger('function_name' [, 'high'|'normal'|'low'])";

/// The trigger protocol was not followed: `39P01` with the usage as hint.
fn protocol_error(what: &str) -> GmError {
    GmError::new(
        PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
        format!("gearman: {what}"),
    )
    .hint(format!("Use it in a trigger: {TRIGGER_USAGE}."))
}

/// The SQL function `gman_trigger()`: checks that PostgreSQL called it as
/// a trigger before pgrx's wrapper (which would panic otherwise) runs.
///
/// # Safety
/// Called by PostgreSQL's function manager with a valid `fcinfo`.
#[unsafe(no_mangle)]
#[doc(hidden)]
#[pg_guard]
pub unsafe extern "C-unwind" fn gman_trigger_checked(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fcinfo is valid; context is NULL or a Node (CALLED_AS_TRIGGER).
    let as_trigger = unsafe {
        !fcinfo.is_null()
            && !(*fcinfo).context.is_null()
            && (*(*fcinfo).context).type_ == pg_sys::NodeTag::T_TriggerData
    };
    if !as_trigger {
        protocol_error("gman_trigger() must be called as a trigger, not as a plain function")
            .raise();
    }
    // SAFETY: called as a trigger, as pgrx's wrapper requires.
    unsafe { gman_trigger_wrapper(fcinfo) }
}

/// Version-1 calling convention record for [`gman_trigger_checked`].
#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_gman_trigger_checked() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The trigger function. VOLATILE, PARALLEL UNSAFE (as every trigger).
#[pg_trigger(sql = r#"
CREATE FUNCTION "gman_trigger"() RETURNS TRIGGER
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'gman_trigger_checked';
"#)]
pub fn gman_trigger<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    match run(trigger) {
        Ok(r) => Ok(r),
        Err(e) => protocol_error(&format!("gman_trigger: invalid trigger call: {e}")).raise(),
    }
}

fn run<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let args = trigger.extra_args()?;
    let Some(function) = args.first() else {
        GmError::invalid("gearman: gman_trigger needs the function name as its first argument")
            .hint(TRIGGER_USAGE)
            .raise();
    };
    let priority = match args.get(1) {
        None => Priority::Normal,
        Some(p) => Priority::parse(p).unwrap_or_else(|e| {
            GmError::invalid(format!("gearman: gman_trigger: {e}"))
                .detail(format!("trigger: {}", trigger.name().unwrap_or("?")))
                .raise()
        }),
    };
    let op = trigger.op()?;
    let op_text = op.to_string();
    let data = trigger.trigger_data();
    let row_level = matches!(trigger.level(), PgTriggerLevel::Row);
    // SAFETY: PostgreSQL's TriggerData for this call: the relation and, for
    // row-level triggers, its tuples are valid for the duration of the call.
    let (new_json, old_json) = unsafe {
        let tupdesc = (*data.tg_relation).rd_att;
        let to_json = |tuple: *mut pg_sys::HeapTupleData| -> String {
            if tuple.is_null() || !row_level {
                return "null".to_string();
            }
            let datum = pg_sys::heap_copy_tuple_as_datum(tuple, tupdesc);
            direct_function_call::<String>(pg_sys::row_to_json, &[Some(datum)])
                .unwrap_or_else(|| "null".to_string())
        };
        match op {
            PgTriggerOperation::Insert => (to_json(data.tg_trigtuple), "null".to_string()),
            PgTriggerOperation::Update => (to_json(data.tg_newtuple), to_json(data.tg_trigtuple)),
            PgTriggerOperation::Delete => ("null".to_string(), to_json(data.tg_trigtuple)),
            PgTriggerOperation::Truncate => ("null".to_string(), "null".to_string()),
        }
    };
    let payload = format!(
        "{{\"schema\":{},\"table\":{},\"op\":{},\"new\":{},\"old\":{}}}",
        json_string(&trigger.table_schema()?),
        json_string(&trigger.table_name()?),
        json_string(&op_text),
        new_json,
        old_json
    );
    or_report(background(
        function,
        payload.into_bytes(),
        None,
        priority,
        None,
    ));
    let before = matches!(trigger.when()?, PgTriggerWhen::Before);
    if !(before && row_level) {
        return Ok(None);
    }
    Ok(match op {
        PgTriggerOperation::Delete => trigger.old(),
        _ => trigger.new(),
    })
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}
