//! Several nodes in one process: each is its own homeserver, with its own name and data.

use hyphae_tests::TestNode;

#[tokio::test]
async fn nodes_side_by_side_are_separate_homeservers() {
    let nodes = [
        TestNode::start().await,
        TestNode::start().await,
        TestNode::start().await,
    ];
    let mut names = Vec::new();
    for node in &nodes {
        let health: serde_json::Value = reqwest::get(node.client_url("/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok");
        assert_eq!(health["server_name"], node.node.server_name());
        names.push(node.node.server_name().to_owned());
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3, "every node has its own key and name");

    // What one node stores, the others do not see.
    nodes[0]
        .node
        .store()
        .create_account("alice".into(), None)
        .await
        .unwrap();
    assert!(
        nodes[1]
            .node
            .store()
            .account("alice".into())
            .await
            .unwrap()
            .is_none()
    );
}
