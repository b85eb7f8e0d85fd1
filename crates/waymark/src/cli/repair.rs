//! `mark-executed` and `mark-pending`: an operator's repairs, made under
//! the locks so that no run executes a migration while its row is flipped.

use serde::Serialize;

use crate::cli::MarkArgs;
use crate::cli::commands::print_json;
use crate::cli::console::{Console, Failure, output_error};
use crate::cli::exit;
use crate::store::{LockGuard, LockHolder, LockRequest, LockScope};
use crate::{Error, MigrationId, MigrationStore};

/// Which repair.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mark {
    Executed,
    Pending,
}

impl Mark {
    fn state(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::Pending => "pending",
        }
    }
}

/// `mark-* --json`.
#[derive(Serialize)]
struct MarkedJson<'a> {
    marked: &'a [MigrationId],
    state: &'static str,
    /// Whether the locks were skipped (`--force`).
    forced: bool,
}

pub(crate) async fn mark(
    store: &dyn MigrationStore,
    args: &MarkArgs,
    mark: Mark,
    json: bool,
    console: &mut Console<'_>,
) -> Result<u8, Failure> {
    // Checked before any lock or change, so that a typo in the fifth id
    // leaves the first four as they were.
    store.prepare().await?;
    for &id in &args.ids {
        store.get(id).await?;
    }
    let _guards = if args.force {
        // Said on stderr whether or not the application logs anywhere; the
        // JSON mode keeps stderr for its error object and logs it only.
        let warning = "--force: changing the rows without the locks; a run in progress may execute them meanwhile";
        tracing::warn!(ids = ?args.ids, "{warning}");
        if !json {
            let _ = writeln!(console.err, "{}: warning: {warning}", console.program);
        }
        Vec::new()
    } else {
        let guards = take_locks(store, args).await?;
        tracing::info!("holding the run and background locks for the repair");
        guards
    };
    for &id in &args.ids {
        match mark {
            Mark::Executed => store.mark_executed(id).await?,
            Mark::Pending => store.mark_pending(id).await?,
        }
        if !json {
            writeln!(console.out, "migration {id} marked {}", mark.state())
                .map_err(output_error)?;
        }
    }
    if json {
        print_json(
            console,
            &MarkedJson {
                marked: &args.ids,
                state: mark.state(),
                forced: args.force,
            },
        )?;
    }
    Ok(exit::SUCCESS)
}

/// The run lock, then the background lock: while both are held no run of
/// any replica executes a migration. A lock held for the whole wait is a
/// refusal naming its holder.
async fn take_locks(
    store: &dyn MigrationStore,
    args: &MarkArgs,
) -> Result<Vec<LockGuard>, Failure> {
    let mut guards = Vec::with_capacity(2);
    // One wait for both locks, as documented: the second gets what is left.
    let deadline = std::time::Instant::now() + args.lock_wait;
    for scope in [LockScope::Run, LockScope::Background] {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        let request = LockRequest::new(scope, wait).with_holder(LockHolder::this_process());
        match store.lock(&request).await {
            Ok(guard) => guards.push(guard),
            Err(Error::LockTimeout { .. }) => {
                return Err(refusal(store, scope, args.lock_wait).await);
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(guards)
}

async fn refusal(
    store: &dyn MigrationStore,
    scope: LockScope,
    waited: std::time::Duration,
) -> Failure {
    let held = match store.locks().await {
        Ok(locks) => locks
            .iter()
            .find(|lock| lock.scope == scope)
            .map(|lock| crate::cli::watch::held_by(lock, false)),
        Err(_) => None,
    };
    let held = held.unwrap_or_else(|| "by another process".to_owned());
    Failure::new(
        "locked",
        format!(
            "the {scope} lock is held {held}: a run may be executing these migrations; \
             nothing was changed (waited {}; wait for the run to end, or pass --force)",
            crate::render::human_duration(waited)
        ),
        exit::LOCKED,
    )
}
