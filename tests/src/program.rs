//! Client programs the scenarios run beside the nodes (matrix-nio in Python, matrix-js-sdk in
//! Node): their output read line by line as it comes, their stderr kept in a file, and the
//! process ended however the test ends and never left running past its deadline.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running client program, killed when dropped.
pub struct ClientProgram {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
    stderr: PathBuf,
}

impl ClientProgram {
    /// Starts `command`; what it writes to stderr goes to `stderr` (a file).
    pub fn start(name: &str, mut command: Command, stderr: &Path) -> ClientProgram {
        let log = std::fs::File::create(stderr).expect("a log file for the program's stderr");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ClientProgram {
            name: name.to_owned(),
            child,
            lines,
            seen: Vec::new(),
            stderr: stderr.to_owned(),
        }
    }

    /// Waits up to `within` for a stdout line that `wanted` accepts; returns it. Fails the test
    /// with what the program said if it ends or the time is up first.
    pub async fn wait_line(
        &mut self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            match self.lines.try_recv() {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                    continue;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    let status = self.child.wait().ok();
                    self.fail(&format!("ended ({status:?}) before {what}"));
                }
                Err(mpsc::TryRecvError::Empty) if Instant::now() > deadline => {
                    self.fail(&format!("waited {within:?} for {what}"));
                }
                Err(mpsc::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Waits up to `within` for the program to end, reading all it says; true if it exited 0.
    /// Past `within` it is killed and this is false.
    pub async fn finish(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    // What it printed last may still be in the pipe.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.seen.extend(self.lines.try_iter());
                    return status.success();
                }
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    self.seen.push(format!("(killed after {within:?})"));
                    return false;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("{}: {e}", self.name),
            }
        }
    }

    /// What the program said, for a failure message: its stdout, and the end of its stderr.
    pub fn report(&self) -> String {
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!(
            "{} said:\n{}\n--- the last lines of its stderr ({}):\n{tail}",
            self.name,
            self.seen.join("\n"),
            self.stderr.display()
        )
    }

    fn fail(&self, why: &str) -> ! {
        panic!("{}: {why}\n{}", self.name, self.report())
    }
}

impl Drop for ClientProgram {
    fn drop(&mut self) {
        // A test failing elsewhere (in a browser, say) shows what this program was doing.
        if std::thread::panicking() {
            self.seen.extend(self.lines.try_iter());
            eprintln!("{}", self.report());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
