//! matrix-js-sdk (what Element Web is built on), with its Rust crypto, run by Node against two
//! nodes in this process connected over loopback: the script in `tests/clients/js_sdk_chat.mjs`
//! registers Alice and Bob on different nodes, chats encrypted across them, pages back, renames,
//! reads a remote profile and leaves. `scripts/test.sh` installs the packages from
//! `tests/clients/package-lock.json` outside the clone and names the folder in HYPHAE_JS.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hyphae_tests::TestNode;
use hyphae_tests::browser::{artifacts_dir, find_program};
use hyphae_tests::program::ClientProgram;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_chats_encrypted_across_two_nodes() {
    const TEST: &str = "matrix_js_sdk_chats_encrypted_across_two_nodes";
    let Some(packages) = std::env::var_os("HYPHAE_JS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
    else {
        hyphae_tests::skip_or_fail(
            TEST,
            "HYPHAE_JS is not set (scripts/test.sh installs matrix-js-sdk and sets it)",
        );
        return;
    };
    let Some(node_js) = find_program("HYPHAE_NODE", &["node"]) else {
        hyphae_tests::skip_or_fail(TEST, "Node.js is not installed (scripts/test.sh does)");
        return;
    };
    let logs = artifacts_dir(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("matrix-js-sdk"));

    let (a, b) = (TestNode::start().await, TestNode::start().await);
    a.connect(&b).await;
    let mut command = Command::new(node_js);
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/clients/js_sdk_chat.mjs"
        ))
        .arg(a.client_url(""))
        .arg(b.client_url(""))
        .env("HYPHAE_JS", &packages);
    let mut js = ClientProgram::start("matrix-js-sdk", command, &logs.join("js-sdk.stderr.log"));
    // The script bounds each wait and the whole run (100 s) itself; this is the backstop.
    let passed = js.finish(Duration::from_secs(120)).await;
    assert!(
        passed && js.seen.last().map(String::as_str) == Some("OK"),
        "{}",
        js.report()
    );
}
