//! How SQLite's and the file system's errors become [`StoreError`]s.

use std::io::Write;
use std::path::Path;

use rusqlite::ffi::ErrorCode;

use crate::StoreError;

/// `ENOSPC` and `EDQUOT` on Linux (the values the kernel returns on every architecture kustody
/// runs on); the test for "disk full" on an I/O error.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// An internal failure: an SQLite error with the `errno` seen right after it (SQLite reports a
/// failed `write()` as `SQLITE_IOERR_*` in a few places even when the cause is `ENOSPC`), or a
/// store error already classified.
#[derive(Debug)]
pub(crate) enum Fail {
    Sql(rusqlite::Error, Option<i32>),
    Store(StoreError),
}

pub(crate) type Res<T> = Result<T, Fail>;

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Fail {
        let errno = std::io::Error::last_os_error().raw_os_error();
        Fail::Sql(e, errno)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl Fail {
    pub(crate) fn other(msg: impl Into<String>) -> Fail {
        Fail::Store(StoreError::Other(msg.into()))
    }

    /// The store error, `dir` being the store's directory: an I/O error that is not clearly a
    /// full disk is checked by writing a probe file there.
    pub(crate) fn into_store(self, dir: &Path) -> StoreError {
        match self {
            Fail::Store(e) => e,
            Fail::Sql(e, errno) => {
                let msg = e.to_string();
                match code(&e) {
                    Some(ErrorCode::DiskFull) => StoreError::Full(msg),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy(msg),
                    Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
                        if matches!(errno, Some(ENOSPC | EDQUOT)) || disk_full(dir) {
                            StoreError::Full(msg)
                        } else {
                            StoreError::Other(msg)
                        }
                    }
                    _ => StoreError::Other(msg),
                }
            }
        }
    }
}

fn code(e: &rusqlite::Error) -> Option<ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    }
}

/// Whether `dir`'s file system has no room for a 1 MiB probe file (ENOSPC or EDQUOT): run only
/// after an I/O error, to tell a full disk from a failing one.
pub(crate) fn disk_full(dir: &Path) -> bool {
    let probe = dir.join(".kustody-space-probe");
    let full = |e: &std::io::Error| {
        e.kind() == std::io::ErrorKind::StorageFull
            || e.kind() == std::io::ErrorKind::QuotaExceeded
            || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
    };
    let result = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; 1 << 20])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    match result {
        Ok(()) => false,
        Err(e) => full(&e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rusqlite::ffi;

    fn sql(code: i32, errno: Option<i32>) -> Fail {
        Fail::Sql(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None), errno)
    }

    #[test]
    fn classification() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(matches!(sql(ffi::SQLITE_FULL, None).into_store(d), StoreError::Full(_)));
        assert!(matches!(sql(ffi::SQLITE_BUSY, None).into_store(d), StoreError::Busy(_)));
        assert!(matches!(sql(ffi::SQLITE_BUSY_SNAPSHOT, None).into_store(d), StoreError::Busy(_)));
        assert!(matches!(sql(ffi::SQLITE_LOCKED, None).into_store(d), StoreError::Busy(_)));
        assert!(matches!(sql(ffi::SQLITE_IOERR_WRITE, Some(ENOSPC)).into_store(d), StoreError::Full(_)));
        assert!(matches!(sql(ffi::SQLITE_IOERR_FSYNC, Some(EDQUOT)).into_store(d), StoreError::Full(_)));
        // An I/O error on a disk with room is no full disk.
        assert!(matches!(sql(ffi::SQLITE_IOERR_WRITE, Some(5)).into_store(d), StoreError::Other(_)));
        assert!(matches!(sql(ffi::SQLITE_CORRUPT, Some(ENOSPC)).into_store(d), StoreError::Other(_)));
        assert!(!d.join(".kustody-space-probe").exists(), "the probe is removed");
    }

    #[test]
    fn io_error_on_a_full_disk_is_full() {
        let Some(fs) = kustody_testkit::Tmpfs::mount("4m") else { return };
        assert!(!disk_full(fs.path()));
        std::fs::write(fs.path().join("filler"), vec![0u8; 3584 << 10]).unwrap();
        assert!(disk_full(fs.path()));
        assert!(matches!(sql(ffi::SQLITE_IOERR_SHMSIZE, Some(0)).into_store(fs.path()), StoreError::Full(_)));
        assert!(!fs.path().join(".kustody-space-probe").exists(), "the probe is removed");
    }
}
