//! One store call: a pooled connection, a time limit, and a connection
//! that goes back to the pool only in a known state.

use std::future::Future;

use tokio_postgres::types::ToSql;
use waymark_core::{Error, Migration, MigrationId};

use crate::PostgresStore;
use crate::conn::Conn;
use crate::error::{self, Failure, PoolTimeouts, timed_out};
use crate::row;

/// The body of a store call: a closure that owns the connection while
/// `$work` runs with it, then hands it back with the result. `?` in `$work`
/// ends the body, not the call. Owning rather than borrowing keeps the
/// future free of higher-ranked lifetimes, which `Send` checks reject.
macro_rules! body {
    (|$conn:ident| $work:expr) => {
        move |#[allow(unused_mut)] mut $conn: Conn| async move {
            let result = async { $work }.await;
            ($conn, result)
        }
    };
}

pub(crate) use body;

/// Whether a call may run again after losing its connection: only when
/// running it twice has the same effect as once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    Once,
    Never,
}

impl PostgresStore {
    /// A connection from the pool, waiting at most the connect timeout plus
    /// the statement timeout (a pool of the application's may have no
    /// limit of its own).
    pub(crate) async fn checkout(&self) -> Result<Conn, Error> {
        let limit = self
            .connect_timeout()
            .saturating_add(self.statement_timeout());
        let timeouts = PoolTimeouts {
            connect: self.connect_timeout(),
            wait: limit,
        };
        match tokio::time::timeout(limit, self.pool().get()).await {
            Ok(Ok(object)) => Ok(Conn::new(object)),
            Ok(Err(e)) => Err(error::pool(self.server(), e, timeouts)),
            Err(_) => Err(Error::store(
                format!("connecting to PostgreSQL at {}", self.server()),
                timed_out(limit, "no connection became available"),
            )),
        }
    }

    /// Runs one store call on a pooled connection, within the call limit.
    ///
    /// The connection goes back to the pool only when `body` has run to its
    /// end without a server or driver error; otherwise it is closed, never
    /// reused in an unknown state (abandoned mid-statement, or its session
    /// ended by the server). A [`Retry::Once`] call that lost its connection
    /// runs once more on another: after a server restart or a terminated
    /// backend the pool recovers without the caller seeing it.
    ///
    /// `body` owns the connection while it runs and hands it back with its
    /// result (see [`body!`]), so a cancelled call drops it mid-way.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        doing: &str,
        retry: Retry,
        body: F,
    ) -> Result<T, Error>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = (Conn, Result<T, Failure>)>,
    {
        let limit = self
            .connect_timeout()
            .saturating_add(self.statement_timeout().saturating_mul(2));
        let run = async {
            let mut retried = false;
            loop {
                let conn = self.checkout().await?;
                let (conn, result) = body(conn).await;
                match result {
                    Ok(value) => {
                        conn.release();
                        return Ok(value);
                    }
                    Err(Failure::Done(e)) => {
                        conn.release();
                        return Err(e);
                    }
                    Err(Failure::Pg(e)) => {
                        drop(conn);
                        if retry == Retry::Once && !retried && error::connection_lost(&e) {
                            tracing::debug!(error = %e, "connection lost; retrying {doing}");
                            retried = true;
                            continue;
                        }
                        return Err(error::pg(self.context(doing), e));
                    }
                }
            }
        };
        match tokio::time::timeout(limit, run).await {
            Ok(result) => result,
            Err(_) => Err(Error::store(
                self.context(doing),
                timed_out(limit, "no answer from the server"),
            )),
        }
    }

    /// One UPDATE of one migration's row; no row is [`Error::NotFound`].
    pub(crate) async fn update(
        &self,
        doing: &str,
        retry: Retry,
        statement: &str,
        id: MigrationId,
        value: &(dyn ToSql + Sync),
    ) -> Result<(), Error> {
        let raw = id.get();
        self.call(
            doing,
            retry,
            body!(|conn| {
                let statement = conn.prepare_cached(statement).await?;
                match conn.execute(&statement, &[&raw, value]).await? {
                    0 => Err(Error::NotFound { id: raw }.into()),
                    _ => Ok(()),
                }
            }),
        )
        .await
    }

    pub(crate) async fn select(
        &self,
        doing: &str,
        statement: &str,
    ) -> Result<Vec<Migration>, Error> {
        self.call(
            doing,
            Retry::Once,
            body!(|conn| {
                let statement = conn.prepare_cached(statement).await?;
                conn.query(&statement, &[])
                    .await?
                    .iter()
                    .map(row::migration)
                    .collect()
            }),
        )
        .await
    }
}
