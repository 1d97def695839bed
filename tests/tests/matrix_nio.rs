//! matrix-nio, the Python client, unmodified and with its end-to-end encryption, against nodes
//! started in-process: `tests/clients/nio_chat.py` registers, chats, reads history on a second
//! device and sees typing; `tests/clients/nio_flows.py` runs what people do with it (a stored
//! filter, rooms, invites, replies, history from a sync token, an encrypted room, leaving) on one
//! node and across two. `scripts/test.sh` installs nio in a virtualenv and names its python in
//! HYPHAE_NIO_PYTHON. (Two devices in network namespaces, found by mDNS alone:
//! `demo-app/tests/netns_clients.rs`.)

use hyphae_tests::{TestNode, nio_python, run_client_script};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_registers_chats_and_reads_history() {
    let Some(python) = nio_python("matrix_nio_registers_chats_and_reads_history") else {
        return;
    };
    let node = TestNode::start().await;
    let url = format!("http://{}", node.node.client_addr());
    run_client_script(python, "nio_chat.py", vec![url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_flows_on_one_node() {
    let Some(python) = nio_python("matrix_nio_flows_on_one_node") else {
        return;
    };
    let node = TestNode::start().await;
    let url = format!("http://{}", node.node.client_addr());
    let store = tempfile::tempdir().unwrap();
    let store_dir = store.path().display().to_string();
    run_client_script(python, "nio_flows.py", vec![url.clone(), url, store_dir]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_flows_across_two_nodes() {
    let Some(python) = nio_python("matrix_nio_flows_across_two_nodes") else {
        return;
    };
    let (a, b) = (TestNode::start().await, TestNode::start().await);
    a.connect(&b).await;
    let store = tempfile::tempdir().unwrap();
    let args = vec![
        format!("http://{}", a.node.client_addr()),
        format!("http://{}", b.node.client_addr()),
        store.path().display().to_string(),
    ];
    run_client_script(python, "nio_flows.py", args).await;
}
