//! How PostgreSQL's errors become [`StoreError`]s.
//!
//! A lost connection, a server shutting down or restarting, a lock or serialization conflict
//! and a server short of resources are [`StoreError::Busy`]: transient, so a receiver answers
//! 503 with `Retry-After` and the sender retries; the store reconnects on its next call. A
//! full disk (`53100`) is [`StoreError::Full`]. The rest are [`StoreError::Other`]. Messages
//! name the server (host, port, database), never the password.

use postgres::error::SqlState;

use crate::StoreError;

/// An internal failure: a PostgreSQL error, or a store error already classified.
#[derive(Debug)]
pub(crate) enum Fail {
    Pg(postgres::Error),
    Store(StoreError),
}

pub(crate) type Res<T> = Result<T, Fail>;

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

/// The codec's failures (compression, dictionaries) are already store errors.
impl From<crate::sqlite::error::Fail> for Fail {
    fn from(f: crate::sqlite::error::Fail) -> Fail {
        match f {
            crate::sqlite::error::Fail::Store(e) => Fail::Store(e),
            crate::sqlite::error::Fail::Sql(e, _) => Fail::Store(StoreError::Other(e.to_string())),
        }
    }
}

impl Fail {
    pub(crate) fn other(msg: impl Into<String>) -> Fail {
        Fail::Store(StoreError::Other(msg.into()))
    }

    /// The store error, `target` naming the server.
    pub(crate) fn into_store(self, target: &str) -> StoreError {
        match self {
            Fail::Store(e) => e,
            Fail::Pg(e) => classify(&e, target),
        }
    }

    /// Whether the connection is gone (the next call reconnects).
    pub(crate) fn is_connection(&self) -> bool {
        match self {
            // closed, or an I/O error underneath (not a conversion error of a value)
            Fail::Pg(e) => e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
            Fail::Store(_) => false,
        }
    }
}

/// The [`StoreError`] of a PostgreSQL error.
pub(crate) fn classify(e: &postgres::Error, target: &str) -> StoreError {
    let msg = match e.as_db_error() {
        Some(db) => format!("PostgreSQL {target}: {} ({})", db.message(), db.code().code()),
        None => format!("PostgreSQL {target}: {e}"),
    };
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection (refused, reset, closed: worth retrying), or a value that
        // did not convert (not).
        let connection = e.is_closed()
            || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            || e.to_string().contains("connect");
        return if connection { StoreError::Busy(msg) } else { StoreError::Other(msg) };
    };
    if *code == SqlState::DISK_FULL {
        return StoreError::Full(msg);
    }
    let class = code.code().get(..2).unwrap_or("");
    let transient = matches!(
        class,
        // connection exception, insufficient resources, operator intervention (shutdown,
        // crash recovery), transaction rollback (serialization, deadlock)
        "08" | "53" | "57" | "40"
    ) || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::CANNOT_CONNECT_NOW
        // a standby after a failover: the primary comes back elsewhere
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION;
    if transient {
        StoreError::Busy(msg)
    } else {
        StoreError::Other(msg)
    }
}
