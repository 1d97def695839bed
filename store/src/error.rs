//! The store's error type: what went wrong, said so that an operator knows what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data folder {path}: {source}")]
    DataFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data folder {path} is in use by another running Hyphae node")]
    InUse { path: PathBuf },
    #[error("{path} is not a Hyphae database, or it is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot write to the database {path}: {source}")]
    NotWritable {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "{path} has schema version {found}, newer than this build of Hyphae knows ({known}); \
         refusing to open it (upgrade Hyphae instead)"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("migrating the database to version {version} failed: {source}")]
    Migration {
        version: i64,
        source: rusqlite::Error,
    },
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    #[error("{0} does not exist")]
    NotFound(&'static str),
    #[error("one-time key {key_id} was already uploaded with different content")]
    KeyConflict {
        key_id: String,
        old: String,
        new: String,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("committing a write batch failed: {0}")]
    Commit(String),
    #[error("a write job panicked; its changes were rolled back")]
    JobPanicked,
    #[error("the store is closed")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
