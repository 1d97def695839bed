//! A small pool of read-only connections. WAL lets them read a consistent snapshot while the
//! writer commits; each read runs on tokio's blocking pool, never on a worker thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use crate::error::{Result, StoreError};

pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    pub(crate) fn open(path: &Path, size: usize) -> Result<Readers> {
        let idle = (0..size)
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>>>()?;
        Ok(Readers {
            path: path.to_owned(),
            idle: Mutex::new(idle),
            permits: Semaphore::new(size),
        })
    }

    /// Runs `query` in a read transaction: everything it reads comes from one snapshot.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, query: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // A connection lost to a panicking query is replaced here.
            let conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&readers.path)?,
            };
            let result = (|| {
                let tx = conn.unchecked_transaction()?;
                let value = query(&tx)?;
                tx.finish()?;
                Ok(value)
            })();
            readers
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
            result
        })
        .await
        .map_err(|_| StoreError::JobPanicked)?
    }
}

fn open_reader(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}
