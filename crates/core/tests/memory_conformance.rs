//! The whole conformance suite against `MemoryStore`.

use std::sync::Arc;

use waymark_core::testkit::TestStore;
use waymark_core::{MemoryStore, MigrationStore};

async fn fresh() -> TestStore {
    let store = MemoryStore::new();
    let shared = store.clone();
    TestStore::new(
        Arc::new(store),
        Arc::new(move || {
            let clone: Arc<dyn MigrationStore> = Arc::new(shared.clone());
            Box::pin(async move { clone })
        }),
        (),
    )
}

waymark_core::store_conformance_tests!(fresh);
