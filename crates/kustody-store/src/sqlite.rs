//! The embedded backend: SQLite in WAL mode.

pub struct SqliteStore;
