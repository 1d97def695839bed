//! hyphae-store: the node's SQLite database. It owns the schema and its migrations, the one writer
//! thread, the pool of readers, and the typed queries the node uses. It knows nothing of HTTP or
//! libp2p.
//!
//! Writes go through [`Store::write`] (or a typed method built on it) and are committed in batches
//! by one thread; reads go through [`Store::read`] on a pool of read-only connections. Both are
//! async and never block a tokio worker thread.

mod account_data;
mod accounts;
mod backup;
mod backup_server;
mod backup_subscription;
mod crypto;
mod dag;
mod directory;
mod error;
mod events;
mod keys;
mod mailbox;
mod migrations;
mod outbox;
mod peers;
mod policy;
mod presence;
mod push_actions;
mod pushers;
mod readers;
mod receipts;
mod relations;
mod remote_profiles;
mod rooms;
mod search;
mod to_device;
mod user_directory;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::watch;

pub use account_data::AccountDataEntry;
pub use accounts::{Account, Device, NewDevice};
pub use backup::{BackupKey, BackupVersion, BackupWrite};
pub use backup_server::{BackupSubscriber, ReplicaEntry, ReplicaOutcome, ReplicaPdu};
pub use backup_subscription::{BackupSubscription, ReplicaSource};
pub use crypto::{
    CryptoAccountRow, CryptoWrite, InboundGroupSessionRow, KeyBackupRow, KeyRequestRow, MegolmSeen,
    OlmSessionRow, OutboundGroupSessionRow, OutboundShare, OutboundWrite, TrackedDevice,
    TrackedUser, TrackedUserWrite,
};
pub use dag::HistoryChange;
pub use error::{Result, StoreError};
pub use events::{NewPdu, ReplacedState, StoredPdu};
pub use keys::{ClaimedKey, CrossSigningKey, KeySignature, KeyUpload, OneTimeKey};
pub use mailbox::{
    CLOCK_AHEAD_MS, MAIL_MAX_AGE_MS, MailOutcome, MailSeen, MailboxRecord, RECORD_LIMITS,
    RecordLimits, RecordSource,
};
pub use migrations::SCHEMA_VERSION;
pub use outbox::{OutboxEntry, OutboxKind};
pub use peers::KnownPeer;
pub use presence::PresenceRow;
pub use push_actions::{
    EvaluationBatch, EventToEvaluate, LocalMember, MAIN_THREAD, PushAction, RoomNow, SentMark,
    StoredNotification, UnreadCounts,
};
pub use receipts::Receipt;
pub use relations::{
    Aggregations, MAX_RELATION_DEPTH, RelationFilter, StreamPage, ThreadRoot, ThreadSummary,
};
pub use remote_profiles::{CachedProfile, PeerOwner};
pub use rooms::{AcceptedPdu, Membership, ResolvedState, StateSnapshot};
pub use rusqlite;
pub use search::{EventSearch, SearchCursor, SearchHit, SearchOrder, SearchPage, search_terms};
pub use to_device::ToDeviceMessage;
pub use user_directory::DirectoryEntry;

use readers::Readers;
use writer::Writer;

/// The database file inside a node's data folder.
pub const DATABASE_FILE: &str = "hyphae.db";

const READERS: usize = 4;

/// A handle to the store; cheap to clone. The writer thread ends once every handle is dropped
/// (after committing what was queued), or at [`Store::close`].
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    // Held until close or drop: a second process on the same folder would be a second node with
    // the same identity.
    lock: Mutex<Option<std::fs::File>>,
    writer: Mutex<Option<Arc<Writer>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Readers>,
    stream: watch::Sender<i64>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`, migrating it to [`SCHEMA_VERSION`].
    pub async fn open(data_dir: impl Into<PathBuf>) -> Result<Store> {
        let data_dir = data_dir.into();
        tokio::task::spawn_blocking(move || Store::open_blocking(&data_dir))
            .await
            .map_err(|_| StoreError::JobPanicked)?
    }

    fn open_blocking(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataFolder {
            path: data_dir.to_owned(),
            source,
        })?;
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        let mut conn = open_writer(&path)?;
        migrations::migrate_to(&mut conn, &path, SCHEMA_VERSION)?;
        let readers = Arc::new(Readers::open(&path, READERS)?);
        let (stream, _) = watch::channel(current_stream_pos(&conn)?);
        let (writer, thread) =
            Writer::spawn(conn, stream.clone()).map_err(|source| StoreError::DataFolder {
                path: data_dir.to_owned(),
                source,
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                lock: Mutex::new(Some(lock)),
                writer: Mutex::new(Some(Arc::new(writer))),
                writer_thread: Mutex::new(Some(thread)),
                readers,
                stream,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `job` on the writer, in a transaction shared with other queued jobs. Returns once the
    /// job's changes are committed; if the job fails, only its own changes are rolled back.
    /// A job must not begin or end transactions itself. The job is queued when this is called,
    /// not when the future is first polled, so jobs commit in the order of the calls.
    pub fn write<T, F>(&self, job: F) -> impl Future<Output = Result<T>> + use<T, F>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let queued = writer.map(|writer| writer.write(job));
        async move {
            match queued {
                Some(answer) => answer.await,
                None => Err(StoreError::Closed),
            }
        }
    }

    /// The newest committed position of the stream; changes wake whoever waits on it (no
    /// polling).
    pub fn stream_position(&self) -> watch::Receiver<i64> {
        self.inner.stream.subscribe()
    }

    /// Runs `query` on a reader, inside one read transaction (a consistent snapshot).
    pub async fn read<T, F>(&self, query: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.inner.readers.read(query).await
    }

    /// Stops taking writes, waits for the queued ones to commit, ends the writer thread and
    /// releases the data folder for another process.
    pub async fn close(&self) {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let thread = self
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.inner
            .lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// The lock file's name in the data folder.
pub const LOCK_FILE: &str = "hyphae.lock";

fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File> {
    let path = data_dir.join(LOCK_FILE);
    let folder_error = |source| StoreError::DataFolder {
        path: data_dir.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(folder_error)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse {
            path: data_dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(folder_error(e)),
    }
}

fn open_writer(path: &Path) -> Result<Connection> {
    let corrupt = |source| StoreError::Corrupt {
        path: path.to_owned(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|source| {
        match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::CannotOpen) | Some(rusqlite::ErrorCode::ReadOnly) => {
                StoreError::NotWritable {
                    path: path.to_owned(),
                    source,
                }
            }
            _ => corrupt(source),
        }
    })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // The first real read of the file: garbage in place of a database fails here.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(corrupt)?;
    // Refuse a file that cannot be written before the node accepts anything it could not keep.
    // SQLite silently opens such a file read-only.
    let not_writable = |source| StoreError::NotWritable {
        path: path.to_owned(),
        source,
    };
    if conn.is_readonly(rusqlite::MAIN_DB)? {
        return Err(not_writable(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some("the file or its folder is read-only".into()),
        )));
    }
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK")
        .map_err(not_writable)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(not_writable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%mode, "SQLite refused WAL mode; readers will wait for the writer");
    }
    // FULL: a commit the node acknowledged survives a power cut too, not only a killed process.
    // Batching in the writer keeps the fsync per commit affordable.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// Milliseconds since the Unix epoch, as Matrix counts time.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Takes the next position in the one stream that orders everything a client can see.
/// Call it only from a write job.
pub fn next_stream_pos(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "UPDATE counters SET value = value + 1 WHERE name = 'stream' RETURNING value",
        [],
        |row| row.get(0),
    )?)
}

/// The newest position handed out in the stream.
pub fn current_stream_pos(conn: &Connection) -> Result<i64> {
    Ok(conn
        .query_row(
            "SELECT value FROM counters WHERE name = 'stream'",
            [],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0))
}
