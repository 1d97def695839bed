//! The one writer: a dedicated thread that owns the read-write connection and commits queued
//! write jobs in batches (group commit), each job inside its own savepoint so one failing job does
//! not undo the others.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

use crate::error::{Result, StoreError};

/// At most this many jobs share one transaction; bounds how long a commit keeps callers waiting.
const MAX_BATCH: usize = 256;

/// What a job hands back after running: whether its changes stay, and how to tell its caller
/// once the batch's fate is known.
struct Ran {
    keep: bool,
    finish: Finish,
}

/// Tells a job's caller the outcome, given the batch's commit error if there was one.
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;

/// A queued job. It gets the connection inside an open savepoint, or the reason no transaction
/// could be opened, which it passes on to its caller.
type Job = Box<dyn FnOnce(Result<&Connection, &str>) -> Ran + Send>;

pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread; after each commit it publishes the stream's newest position on
    /// `stream`, which is what wakes long-polling `/sync` requests.
    pub(crate) fn spawn(
        conn: Connection,
        stream: watch::Sender<i64>,
    ) -> std::io::Result<(Writer, JoinHandle<()>)> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("hyphae-store-writer".into())
            .spawn(move || run(conn, queue, stream))?;
        Ok((Writer { jobs }, thread))
    }

    /// Queues `job` at once (so jobs commit in the order they were queued); the returned future
    /// answers once the batch holding it has committed (or failed).
    pub(crate) fn write<T, F>(&self, job: F) -> impl Future<Output = Result<T>> + use<T, F>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let conn = match conn {
                Ok(conn) => conn,
                Err(message) => {
                    let error = StoreError::Commit(message.to_owned());
                    return Ran {
                        keep: false,
                        finish: Box::new(move |_| {
                            let _ = reply.send(Err(error));
                        }),
                    };
                }
            };
            match catch_unwind(AssertUnwindSafe(|| job(conn))) {
                Ok(Ok(value)) => Ran {
                    keep: true,
                    finish: Box::new(move |commit_error| {
                        let _ = reply.send(match commit_error {
                            None => Ok(value),
                            Some(e) => Err(StoreError::Commit(e.to_owned())),
                        });
                    }),
                },
                Ok(Err(e)) => Ran {
                    keep: false,
                    finish: Box::new(move |_| {
                        let _ = reply.send(Err(e));
                    }),
                },
                Err(_) => Ran {
                    keep: false,
                    finish: Box::new(move |_| {
                        let _ = reply.send(Err(StoreError::JobPanicked));
                    }),
                },
            }
        });
        let queued = self.jobs.send(job).map_err(|_| StoreError::Closed);
        async move {
            queued?;
            answer.await.map_err(|_| StoreError::Closed)?
        }
    }
}

fn run(conn: Connection, queue: mpsc::Receiver<Job>, stream: watch::Sender<i64>) {
    // Ends when every `Writer` is gone and the queue is drained: nothing accepted is dropped.
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&conn, batch, &stream);
    }
    tracing::debug!("store writer stopped");
}

fn commit_batch(conn: &Connection, batch: Vec<Job>, stream: &watch::Sender<i64>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let message = e.to_string();
        for job in batch {
            (job(Err(&message)).finish)(Some(&message));
        }
        return;
    }
    let mut finished = Vec::with_capacity(batch.len());
    // Set once the batch's transaction is gone: SQLite rolls a whole transaction back by itself
    // on some errors (disk full, I/O error), and then nothing in this batch may be reported kept.
    let mut lost: Option<String> = None;
    for job in batch {
        if let Some(message) = &lost {
            finished.push(job(Err(message)));
            continue;
        }
        let ran = match conn.execute_batch("SAVEPOINT job") {
            Ok(()) => {
                let ran = job(Ok(conn));
                let end = if ran.keep {
                    "RELEASE job"
                } else {
                    "ROLLBACK TO job; RELEASE job"
                };
                if let Err(e) = conn.execute_batch(end) {
                    lost = Some(format!("ending a write job failed: {e}"));
                }
                ran
            }
            Err(e) => {
                lost = Some(format!("opening a savepoint failed: {e}"));
                job(Err(&e.to_string()))
            }
        };
        if lost.is_none() && conn.is_autocommit() {
            lost = Some("SQLite rolled the write batch back".to_owned());
        }
        finished.push(ran);
    }
    let failure = match lost {
        Some(message) => {
            let _ = conn.execute_batch("ROLLBACK");
            Some(message)
        }
        None => conn.execute_batch("COMMIT").err().map(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            e.to_string()
        }),
    };
    if let Some(message) = &failure {
        tracing::error!(error = %message, "a write batch was not committed");
    }
    // Published before the callers hear back, so a caller that reads the position next sees
    // its own write.
    if let Ok(position) = crate::current_stream_pos(conn) {
        stream.send_if_modified(|current| {
            let newer = position > *current;
            if newer {
                *current = position;
            }
            newer
        });
    }
    for ran in finished {
        (ran.finish)(failure.as_deref());
    }
}
