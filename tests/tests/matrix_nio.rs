//! matrix-nio, the Python client, against a node started in-process: the script in
//! `tests/clients/nio_chat.py` registers, chats, reads history on a second device and sees
//! typing. `scripts/test.sh` installs nio in a virtualenv and names its python in
//! HYPHAE_NIO_PYTHON.

use std::process::Command;

use hyphae_tests::TestNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_registers_chats_and_reads_history() {
    let Ok(python) = std::env::var("HYPHAE_NIO_PYTHON") else {
        hyphae_tests::skip_or_fail(
            "matrix_nio_registers_chats_and_reads_history",
            "HYPHAE_NIO_PYTHON is not set (scripts/test.sh sets it after installing matrix-nio)",
        );
        return;
    };
    let node = TestNode::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/nio_chat.py");
    let url = format!("http://{}", node.node.client_addr());
    let output =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(url).output())
            .await
            .unwrap()
            .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("OK"),
        "nio failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
