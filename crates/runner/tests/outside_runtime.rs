//! Called outside a Tokio runtime, a run is a clear error, not a panic.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use waymark_core::{BoxError, Error, MemoryStore, MigrationContext, MigrationDef};
use waymark_runner::{Handler, Runner};

/// Polls a future on this thread with no runtime at all.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[test]
fn running_without_a_tokio_runtime_is_invalid() {
    let runner = Runner::builder(MemoryStore::new())
        .migration(
            MigrationDef::new(1, "m1", "").unwrap(),
            Handler::async_fn(|_ctx: MigrationContext<()>| async { Ok::<(), BoxError>(()) }),
        )
        .build()
        .unwrap();
    match block_on(runner.run(())) {
        Err(Error::Invalid {
            field: "runtime", ..
        }) => {}
        other => panic!("expected Invalid runtime, got {other:?}"),
    }
}
