//! Tests of the store as a whole: batching, concurrency, crashes and bad data folders.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

fn count(conn: &Connection, sql: &str) -> Result<i64> {
    Ok(conn.query_row(sql, [], |row| row.get(0))?)
}

/// Occupies the writer with a job that waits for the returned sender, so that everything queued
/// meanwhile lands in the next batch together.
async fn hold_writer(store: &Store) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let store = store.clone();
    let holding = tokio::spawn(async move {
        store
            .write(move |_| {
                let _ = started_tx.send(());
                let _ = released.recv_timeout(Duration::from_secs(30));
                Ok(())
            })
            .await
            .unwrap();
    });
    started.await.unwrap();
    (release, holding)
}

fn insert_account(store: &Store, name: &'static str) -> impl Future<Output = Result<()>> + use<> {
    let store = store.clone();
    async move {
        store
            .write(move |c| {
                c.execute(
                    "INSERT INTO accounts (localpart, created_ms) VALUES (?1, 0)",
                    [name],
                )?;
                Ok(())
            })
            .await
    }
}

async fn account_names(store: &Store) -> Vec<String> {
    store
        .read(|c| {
            let mut s = c.prepare("SELECT localpart FROM accounts ORDER BY localpart")?;
            Ok(s.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_job_rolls_back_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let (release, holding) = hold_writer(&store).await;
    let a = tokio::spawn(insert_account(&store, "a"));
    let failing = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .write(|c| {
                    c.execute(
                        "INSERT INTO accounts (localpart, created_ms) VALUES ('ghost', 0)",
                        [],
                    )?;
                    Err::<(), _>(StoreError::NotFound("something"))
                })
                .await
        }
    });
    let panicking = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .write(|c| -> Result<()> {
                    c.execute(
                        "INSERT INTO accounts (localpart, created_ms) VALUES ('phantom', 0)",
                        [],
                    )?;
                    panic!("a bug in a write job");
                })
                .await
        }
    });
    let b = tokio::spawn(insert_account(&store, "b"));
    tokio::time::sleep(Duration::from_millis(100)).await; // let all four reach the queue
    release.send(()).unwrap();
    holding.await.unwrap();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert!(matches!(
        failing.await.unwrap(),
        Err(StoreError::NotFound("something"))
    ));
    assert!(matches!(
        panicking.await.unwrap(),
        Err(StoreError::JobPanicked)
    ));
    assert_eq!(account_names(&store).await, ["a", "b"]);
    // The writer is still alive after the panic.
    insert_account(&store, "c").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_transaction_is_lost_reports_nothing_as_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let (release, holding) = hold_writer(&store).await;
    let a = tokio::spawn(insert_account(&store, "a"));
    // Stands in for SQLite rolling the transaction back by itself (disk full, I/O error).
    let rollback = tokio::spawn({
        let store = store.clone();
        async move { store.write(|c| Ok(c.execute_batch("ROLLBACK")?)).await }
    });
    let c = tokio::spawn(insert_account(&store, "c"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    release.send(()).unwrap();
    holding.await.unwrap();
    for outcome in [a.await.unwrap(), rollback.await.unwrap(), c.await.unwrap()] {
        assert!(matches!(outcome, Err(StoreError::Commit(_))), "{outcome:?}");
    }
    assert!(account_names(&store).await.is_empty());
    insert_account(&store, "after").await.unwrap();
    assert_eq!(account_names(&store).await, ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_go_on_while_a_write_batch_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    store.create_account("before".into(), None).await.unwrap();

    let (inside_tx, inside) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let writing = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .write(move |c| {
                    c.execute(
                        "INSERT INTO accounts (localpart, created_ms) VALUES ('during', 0)",
                        [],
                    )?;
                    inside_tx.send(()).unwrap();
                    // Hold the write transaction open until the readers are done.
                    released.recv_timeout(Duration::from_secs(30)).unwrap();
                    Ok(())
                })
                .await
        }
    });
    tokio::task::spawn_blocking(move || inside.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();

    // Eight reads on four pooled connections, all while the writer holds its transaction.
    let reads = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .read(|c| count(c, "SELECT count(*) FROM accounts"))
                .await
        })
    });
    let counts = tokio::time::timeout(Duration::from_secs(10), futures_join_all(reads))
        .await
        .expect("readers were blocked by the open write batch");
    assert!(
        counts.iter().all(|n| *n == 1),
        "readers see the last commit, not the open batch: {counts:?}"
    );
    assert!(!writing.is_finished());

    release.send(()).unwrap();
    writing.await.unwrap().unwrap();
    let after = store
        .read(|c| count(c, "SELECT count(*) FROM accounts"))
        .await
        .unwrap();
    assert_eq!(after, 2);
}

async fn futures_join_all(
    handles: impl Iterator<Item = tokio::task::JoinHandle<Result<i64>>>,
) -> Vec<i64> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap().unwrap());
    }
    out
}

const CRASH_DIR_ENV: &str = "HYPHAE_STORE_CRASH_DIR";
const PDUS_PER_BATCH: usize = 40;

/// The child half of `a_killed_writer_leaves_whole_batches`: writes batches of PDUs until it is
/// killed, printing the number of each batch once its write has returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not a test on its own: a_killed_writer_leaves_whole_batches runs it as the child process it kills"]
async fn crash_child_writes_until_killed() {
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
        panic!("run by a_killed_writer_leaves_whole_batches only");
    };
    let store = Store::open(dir).await.unwrap();
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    // Several writers at once, so batches hold several jobs when the kill lands.
    for writer in 0..4u64 {
        let store = store.clone();
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let batch = writer * 1_000_000 + n;
                let pdus = (0..PDUS_PER_BATCH).map(|i| crash_pdu(batch, i)).collect();
                store.append_pdus(pdus).await.unwrap();
                done_tx.send(batch).unwrap();
            }
        });
    }
    use std::io::Write;
    while let Some(batch) = done.recv().await {
        let mut out = std::io::stdout().lock();
        writeln!(out, "committed {batch}").unwrap();
        out.flush().unwrap();
    }
}

fn crash_pdu(batch: u64, i: usize) -> NewPdu {
    NewPdu {
        event_id: format!("${batch}_{i}"),
        room_id: format!("!batch{batch}:crash"),
        depth: i as i64,
        sender: "@writer:crash".into(),
        event_type: "m.room.message".into(),
        state_key: None,
        origin_server_ts: 0,
        json: format!(r#"{{"body":"{}"}}"#, "x".repeat(200)),
        prev_events: if i == 0 {
            vec![]
        } else {
            vec![format!("${batch}_{}", i - 1)]
        },
        auth_events: vec![],
        rejection_reason: None,
        outlier: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_leaves_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::crash_child_writes_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let acknowledged = tokio::task::spawn_blocking(move || {
        let mut acknowledged = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(batch) = line.strip_prefix("committed ") {
                acknowledged.push(batch.parse::<u64>().unwrap());
                if acknowledged.len() == 60 {
                    break;
                }
            }
        }
        acknowledged
    });
    let acknowledged = tokio::time::timeout(Duration::from_secs(120), acknowledged).await;
    child.kill().unwrap(); // SIGKILL: no destructor, no clean close.
    child.wait().unwrap();
    let acknowledged = acknowledged
        .expect("the child wrote too little in 120 s")
        .unwrap();
    assert_eq!(
        acknowledged.len(),
        60,
        "the child died before it was killed"
    );

    let store = Store::open(dir.path()).await.unwrap();
    let (integrity, foreign_key_problems, per_room) = store
        .read(|c| {
            let integrity: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            let mut fk = c.prepare("PRAGMA foreign_key_check")?;
            let problems = fk.query_map([], |_| Ok(()))?.count();
            let mut rooms = c.prepare("SELECT room_id, count(*) FROM events GROUP BY room_id")?;
            let per_room = rooms
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((integrity, problems, per_room))
        })
        .await
        .unwrap();
    assert_eq!(integrity, "ok");
    assert_eq!(foreign_key_problems, 0);
    for (room, n) in &per_room {
        assert_eq!(*n, PDUS_PER_BATCH as i64, "{room} holds part of a batch");
    }
    for batch in acknowledged {
        let room = format!("!batch{batch}:crash");
        assert!(
            per_room.iter().any(|(r, _)| *r == room),
            "batch {batch} was acknowledged but is gone after the kill"
        );
    }
    // The store takes writes again after the crash.
    store
        .append_pdus(vec![crash_pdu(u64::MAX, 0)])
        .await
        .unwrap();
}

#[tokio::test]
async fn garbage_in_place_of_the_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DATABASE_FILE), vec![0xA5u8; 64 * 1024]).unwrap();
    let error = Store::open(dir.path())
        .await
        .err()
        .expect("garbage was opened");
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("hyphae.db"), "{message}");
    assert!(
        message.contains("not a Hyphae database, or it is corrupt"),
        "{message}"
    );
}

#[tokio::test]
async fn a_data_folder_that_cannot_be_created_is_a_clear_error() {
    // A regular file where the data folder should be.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taken");
    std::fs::write(&file, b"not a folder").unwrap();
    let error = Store::open(file.join("data")).await.err().expect("opened");
    assert!(matches!(error, StoreError::DataFolder { .. }), "{error:?}");
    assert!(
        error.to_string().contains("cannot use data folder"),
        "{error}"
    );

    // A read-only file system (even root cannot write there).
    let error = Store::open("/proc/hyphae-store-test/data")
        .await
        .err()
        .expect("opened");
    assert!(matches!(error, StoreError::DataFolder { .. }), "{error:?}");
}

#[tokio::test]
async fn an_unwritable_database_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).await.unwrap().close().await;
    let db = dir.path().join(DATABASE_FILE);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    // File modes do not stop root (CI runs as root): there, make the file immutable instead.
    let _immutable = Immutable::try_set(&db);
    if std::fs::OpenOptions::new().append(true).open(&db).is_ok() {
        panic!(
            "cannot make {} unwritable here (not root, and file modes did not stop a write)",
            db.display()
        );
    }
    let error = Store::open(dir.path())
        .await
        .err()
        .expect("a read-only database was opened for writing");
    assert!(matches!(error, StoreError::NotWritable { .. }), "{error:?}");
    assert!(
        error.to_string().contains("cannot write to the database"),
        "{error}"
    );
}

/// `chattr +i` on a file for as long as it lives; a no-op where chattr is refused.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn try_set(path: &Path) -> Immutable {
        let _ = Command::new("chattr").arg("+i").arg(path).status();
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_second_store_on_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).await.unwrap();
    let error = Store::open(dir.path()).await.err().expect("opened twice");
    assert!(matches!(error, StoreError::InUse { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("in use by another running Hyphae node"),
        "{error}"
    );
    drop(first);
    Store::open(dir.path())
        .await
        .expect("the lock goes with the store");
}

#[tokio::test]
async fn committed_stream_positions_wake_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let mut position = store.stream_position();
    let start = *position.borrow_and_update();
    let waiting = tokio::spawn(async move {
        position.changed().await.unwrap();
        *position.borrow()
    });
    store.write(next_stream_pos).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("nobody was woken")
        .unwrap();
    assert_eq!(woken, start + 1);
}
