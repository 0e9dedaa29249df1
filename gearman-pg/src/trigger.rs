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

use crate::error::{or_report, GmError};
use crate::functions::background;
use gearman_core::Priority;
use pgrx::prelude::*;
use pgrx::{direct_function_call, PgTriggerError};

/// The trigger function. VOLATILE, PARALLEL UNSAFE (as every trigger).
#[pg_trigger]
pub fn gman_trigger<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let args = trigger.extra_args()?;
    let Some(function) = args.first() else {
        GmError::invalid("gearman: gman_trigger needs the function name as its first argument")
            .hint("CREATE TRIGGER ... EXECUTE FUNCTION gman_trigger('function_name' [, 'high'|'normal'|'low'])")
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
