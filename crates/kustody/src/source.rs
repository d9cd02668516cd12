//! The inputs of `hunt` and `timeline`: files (and stdin), or the store of `kustody serve`,
//! read as JSON Lines through the same reader.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use kustody_ingest::{ChunkReader, InputFile, ReadOptions};

pub enum Source {
    File(InputFile),
    /// A data directory, with the time bounds the export may apply early.
    Store {
        dir: PathBuf,
        since: Option<i64>,
        until: Option<i64>,
    },
}

impl Source {
    pub fn store(dir: &Path, since: Option<i64>, until: Option<i64>) -> Result<Source> {
        if !dir.join("kustody.db").exists() {
            bail!("no kustody store in `{}` (kustody serve --data-dir DIR makes one)", dir.display());
        }
        Ok(Source::Store { dir: dir.to_path_buf(), since, until })
    }

    pub fn open(&self, opts: &ReadOptions) -> Result<ChunkReader> {
        match self {
            Source::File(f) => Ok(ChunkReader::open(f, opts.clone())?),
            Source::Store { dir, since, until } => {
                let store = kustody_store::SqliteStore::open_read_only(dir)?;
                let lines = kustody_store::export::ExportLines::new(store, *since, *until);
                let name: Arc<str> = Arc::from(format!("store:{}", dir.display()));
                Ok(ChunkReader::from_reader(name, Box::new(lines), opts.clone())?)
            }
        }
    }
}

impl kustody_pipeline::Input for Source {
    fn open(&self, opts: &ReadOptions) -> Result<ChunkReader, String> {
        match self {
            Source::File(f) => kustody_pipeline::Input::open(f, opts),
            store => Source::open(store, opts).map_err(|e| format!("{e:#}")),
        }
    }
}
