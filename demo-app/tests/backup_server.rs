//! `hyphae backup-server` as an operator runs it: a real process, an invitation made while it
//! runs, and `hyphae up --backup … --backup-token …` subscribing with it (loopback only).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn hyphae() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hyphae"))
}

/// A child process, killed when the test ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command`, reads its stdout up to "Press Ctrl-C", returns the process and the lines.
fn start(mut command: Command) -> (Running, Vec<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("Press Ctrl-C");
        seen.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (child, seen)
}

fn field(lines: &[String], name: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(name).map(|r| r.trim().to_owned()))
}

#[test]
fn invite_while_running_then_a_device_subscribes_from_the_command_line() {
    let server_data = tempfile::tempdir().unwrap();
    let device_data = tempfile::tempdir().unwrap();
    let mut server = hyphae();
    server
        .args([
            "backup-server",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--data",
        ])
        .arg(server_data.path());
    let (_server, lines) = start(server);
    let name = field(&lines, "server name").expect("server name printed");
    let addr = field(&lines, "p2p listen").expect("listen address printed");
    assert!(addr.contains("/p2p/"), "{addr}");

    // The server holds the data folder's lock; the invitation is made anyway.
    let invite = hyphae()
        .args(["backup-server", "invite", "--quota", "10M", "--data"])
        .arg(server_data.path())
        .output()
        .unwrap();
    assert!(invite.status.success(), "{invite:?}");
    let token = String::from_utf8(invite.stdout).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64, "{token}");
    let bad = hyphae()
        .args(["backup-server", "invite", "--quota", "lots", "--data"])
        .arg(server_data.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let mut device = hyphae();
    device
        .args(["up", "--no-app", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--backup", &addr])
        .args(["--backup-token", &token, "--data"])
        .arg(device_data.path());
    let (_device, lines) = start(device);
    let backup = field(&lines, "backup").expect("the backup line");
    assert_eq!(backup, format!("{name} (subscribed now)"));
}
