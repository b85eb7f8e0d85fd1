//! One store call: a pooled connection, a time limit, and a connection
//! that goes back to the pool only in a known state.

use std::future::Future;

use tokio_postgres::types::ToSql;
use waymark_core::{Error, Migration, MigrationId};

use crate::PostgresStore;
use crate::conn::Conn;
use crate::error::{self, Failure, Limit, PoolTimeouts, timed_out};
use crate::row;

/// The body of a store call: a closure that owns the connection while
/// `$work` runs with it, then hands it back with the result. `?` in `$work`
/// ends the body, not the call. Owning rather than borrowing keeps the
/// future free of higher-ranked lifetimes, which `Send` checks reject, and
/// lets a call that passes its limit drop the connection mid-statement
/// (which cancels the statement, see [`Conn`]).
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
            Ok(Ok(object)) => Ok(Conn::new(object, self.canceller().clone())),
            Ok(Err(e)) => Err(error::pool(self.server(), e, timeouts)),
            Err(_) => Err(Error::store(
                format!("connecting to PostgreSQL at {}", self.server()),
                timed_out(Limit::PoolWait, limit, "no connection became available"),
            )),
        }
    }

    /// Runs one store call on a pooled connection.
    ///
    /// Each attempt runs within the statement timeout, on the client: the
    /// server's own `statement_timeout` is the session's, left to the
    /// application (it also governs atomic handlers' statements). When the
    /// limit passes, the attempt's connection is dropped mid-statement,
    /// which sends the server a cancel request and closes it.
    ///
    /// The connection goes back to the pool only when `body` has run to its
    /// end without a server or driver error; otherwise it is closed, never
    /// reused in an unknown state (its session ended by the server, say). A
    /// [`Retry::Once`] call that lost its connection runs once more on
    /// another: after a server restart or a terminated backend the pool
    /// recovers without the caller seeing it. A missing table (or schema)
    /// is [`Error::NotInitialised`].
    ///
    /// `body` owns the connection while it runs and hands it back with its
    /// result (see [`body!`]).
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
        let limit = self.statement_timeout();
        let mut retried = false;
        loop {
            let conn = self.checkout().await?;
            let Ok((conn, result)) = tokio::time::timeout(limit, body(conn)).await else {
                return Err(Error::store(
                    self.context(doing),
                    timed_out(
                        Limit::Statement,
                        limit,
                        "no answer from the server (its statement was cancelled)",
                    ),
                ));
            };
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
                    conn.discard();
                    if retry == Retry::Once && !retried && error::connection_lost(&e) {
                        tracing::debug!(error = %e, "connection lost; retrying {doing}");
                        retried = true;
                        continue;
                    }
                    return Err(self.pg_error(doing, e));
                }
            }
        }
    }

    /// The error of a server or driver failure while `doing` something:
    /// [`Error::NotInitialised`] when the table or its schema is missing.
    pub(crate) fn pg_error(&self, doing: &str, e: tokio_postgres::Error) -> Error {
        if error::missing_table(&e) {
            self.not_initialised()
        } else {
            error::pg(self.context(doing), e)
        }
    }

    /// One UPDATE of one migration's row (`$1` its id, then `values`); no
    /// row is [`Error::NotFound`].
    pub(crate) async fn update_row(
        &self,
        doing: &str,
        retry: Retry,
        statement: &str,
        id: MigrationId,
        values: &[&(dyn ToSql + Sync)],
    ) -> Result<(), Error> {
        let raw = id.get();
        self.call(
            doing,
            retry,
            body!(|conn| {
                let statement = conn.prepare_cached(statement).await?;
                let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(1 + values.len());
                params.push(&raw);
                params.extend_from_slice(values);
                match conn.execute(&statement, &params).await? {
                    0 => Err(Error::NotFound { id }.into()),
                    _ => Ok(()),
                }
            }),
        )
        .await
    }

    /// The rows a parameterless SELECT of [`crate::sql`] returns.
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
