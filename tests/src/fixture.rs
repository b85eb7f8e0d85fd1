//! A store as the atomic conformance suite drives it: core's
//! `AtomicFixture` is implemented here for each backend, and the orphan
//! rule asks for a type of this crate, so [`Fixture`] wraps a store and
//! forwards every call to it, once for every backend.

use std::future::Future;
use std::sync::Arc;

use waymark_core::store::{
    AtomicError, AtomicFn, AtomicStore, BatchFn, LockGuard, LockInfo, LockRequest, PreparePlan,
    RowChange, SetState,
};
use waymark_core::{
    BatchStep, Error, Migration, MigrationContext, MigrationDef, MigrationId, MigrationStore,
    async_trait,
};

/// A backend's store, for the atomic conformance suite.
#[derive(Debug, Clone)]
pub struct Fixture<St>(pub St);

#[async_trait]
impl<St: MigrationStore> MigrationStore for Fixture<St> {
    async fn prepare(&self) -> Result<(), Error> {
        self.0.prepare().await
    }
    async fn register(&self, defs: &[MigrationDef]) -> Result<(), Error> {
        self.0.register(defs).await
    }
    async fn list(&self) -> Result<Vec<Migration>, Error> {
        self.0.list().await
    }
    async fn update(&self, id: MigrationId, change: RowChange<'_>) -> Result<(), Error> {
        self.0.update(id, change).await
    }
    async fn lock(&self, request: &LockRequest) -> Result<LockGuard, Error> {
        self.0.lock(request).await
    }
    async fn lock_or_wait(&self, request: &LockRequest) -> Result<Option<LockGuard>, Error> {
        self.0.lock_or_wait(request).await
    }
    async fn plan_prepare(&self) -> Result<PreparePlan, Error> {
        self.0.plan_prepare().await
    }
    async fn locks(&self) -> Result<Vec<LockInfo>, Error> {
        self.0.locks().await
    }
    async fn pending(&self) -> Result<Vec<Migration>, Error> {
        self.0.pending().await
    }
    async fn get(&self, id: MigrationId) -> Result<Migration, Error> {
        self.0.get(id).await
    }
    async fn is_settled(&self, fingerprint: &str) -> Result<bool, Error> {
        self.0.is_settled(fingerprint).await
    }
    async fn set_state(&self, fingerprint: &str) -> Result<SetState, Error> {
        self.0.set_state(fingerprint).await
    }
    async fn mark_executed(&self, id: MigrationId) -> Result<(), Error> {
        self.0.mark_executed(id).await
    }
    async fn mark_pending(&self, id: MigrationId) -> Result<(), Error> {
        self.0.mark_pending(id).await
    }
    async fn record_success(&self, id: MigrationId) -> Result<(), Error> {
        self.0.record_success(id).await
    }
    async fn record_failure(&self, id: MigrationId, error: &str) -> Result<(), Error> {
        self.0.record_failure(id, error).await
    }
    async fn save_checkpoint(&self, id: MigrationId, checkpoint: &str) -> Result<(), Error> {
        self.0.save_checkpoint(id, checkpoint).await
    }
}

impl<St: AtomicStore> AtomicStore for Fixture<St> {
    type Tx<'t> = <St as AtomicStore>::Tx<'t>;
    type Output<'t, R: Send + 't> = <St as AtomicStore>::Output<'t, R>;

    fn map_output<'t, A: Send + 't, B: Send + 't>(
        out: Self::Output<'t, A>,
        f: impl FnOnce(A) -> B + Send + 't,
    ) -> Self::Output<'t, B> {
        St::map_output(out, f)
    }

    fn execute_atomic<S: Send + Sync + 'static>(
        &self,
        work: AtomicFn<S, Self>,
        ctx: Arc<MigrationContext<S>>,
    ) -> impl Future<Output = Result<(), AtomicError>> + Send + 'static {
        self.0.execute_atomic(work, ctx)
    }

    fn execute_batch<S: Send + Sync + 'static>(
        &self,
        work: BatchFn<S, Self>,
        ctx: Arc<MigrationContext<S>>,
        from: Option<String>,
    ) -> impl Future<Output = Result<BatchStep, AtomicError>> + Send + 'static {
        self.0.execute_batch(work, ctx, from)
    }
}
