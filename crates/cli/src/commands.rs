//! What the standalone tool does itself: `init`. Every other database
//! command is the library's `migrate` command without handlers.

use serde_json::json;
use waymark::{Error, MigrationStore};

/// `init [--dry-run]`: what to print, as text or JSON.
pub async fn init(store: &dyn MigrationStore, dry_run: bool, json: bool) -> Result<String, Error> {
    if dry_run {
        let plan = store.plan_prepare().await?;
        if !json {
            return Ok(plan.to_string());
        }
        let body = json!({
            "table": plan.table,
            "ready": plan.is_empty() && plan.refusal.is_none(),
            "create": plan.create,
            "changes": plan.changes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "side_objects": plan.side_objects,
            "refusal": plan.refusal,
        });
        return Ok(format!("{body:#}\n"));
    }
    store.prepare().await?;
    Ok(if json {
        format!("{:#}\n", json!({ "ready": true }))
    } else {
        "tracking table ready\n".to_owned()
    })
}
