//! The harness can be included by path (as a bench binary does) without `mod support;`.
#[path = "support/apiserver/mod.rs"]
mod apiserver;

#[tokio::test]
async fn harness_included_by_path_starts() {
    let s = apiserver::TestApiServer::start().await;
    assert!(s.url().starts_with("http://127.0.0.1:"));
}
