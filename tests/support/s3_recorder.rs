//! An HTTP proxy on loopback in front of an S3 server that records every request's method,
//! path, query and headers, and can stamp server-side-encryption headers onto object reads.
//!
//! s3s-fs ignores `x-amz-server-side-encryption*` entirely: it neither stores the headers nor
//! answers with them. The recording shows what a client *sent*; the stamping stands in for a
//! bucket that encrypts (AWS answers HeadObject/GetObject with the object's encryption), with
//! chosen objects left unstamped to play ones stored without it.
//!
//! Requests are forwarded with their Host header unchanged, so SigV4 signatures made for the
//! proxy's address still verify at the server.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response};

/// One request as the proxy received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path without the query, e.g. `/backups/berth/test/config`.
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
}

impl Recorded {
    fn has_query(&self, name: &str) -> bool {
        self.query.split('&').any(|kv| kv.split('=').next() == Some(name))
    }

    /// The S3 operation, for the ones that create objects (PutObject, CopyObject,
    /// CreateMultipartUpload) and those that do not need the headers (UploadPart, ...).
    pub fn operation(&self) -> &'static str {
        let object = self.path.trim_start_matches('/').contains('/');
        match self.method {
            Method::PUT if !object => "CreateBucket",
            Method::PUT if self.has_query("partNumber") => "UploadPart",
            Method::PUT if self.headers.contains_key("x-amz-copy-source") => "CopyObject",
            Method::PUT => "PutObject",
            Method::POST if self.has_query("uploads") => "CreateMultipartUpload",
            Method::POST if self.has_query("uploadId") => "CompleteMultipartUpload",
            Method::POST if self.has_query("delete") => "DeleteObjects",
            Method::DELETE => "Delete",
            Method::HEAD => "Head",
            _ => "Read",
        }
    }

    /// Whether the request creates an object, and so must carry the encryption headers.
    pub fn writes_object(&self) -> bool {
        matches!(self.operation(), "PutObject" | "CopyObject" | "CreateMultipartUpload")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Encryption the proxy claims for objects read through it.
#[derive(Debug, Clone, Default)]
struct Stamp {
    /// `(algorithm, kms key id)` added to HEAD and GET responses of objects.
    encryption: Option<(String, Option<String>)>,
    /// Path suffixes (object keys) left without the headers.
    unstamped: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    stamp: Mutex<Stamp>,
}

pub struct S3Recorder {
    /// `http://127.0.0.1:<port>`: give this to clients instead of the server's endpoint.
    pub endpoint: String,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Recorder {
    /// Listens on a free loopback port and forwards to `upstream` (`http://127.0.0.1:<port>`).
    pub fn start(upstream: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(State::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (upstream, shared) = (upstream.trim_end_matches('/').to_string(), state.clone());
        let thread = std::thread::Builder::new()
            .name("s3-recorder".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let client = reqwest::Client::builder().no_proxy().build().expect("client");
                    let app = axum::Router::new().fallback(move |req: Request<Body>| {
                        let (client, upstream, state) = (client.clone(), upstream.clone(), shared.clone());
                        async move { forward(&client, &upstream, &state, req).await }
                    });
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
            })
            .expect("spawn recorder thread");
        Self { endpoint, state, shutdown: Some(tx), thread: Some(thread) }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Forgets the requests recorded so far.
    pub fn clear(&self) {
        self.state.requests.lock().unwrap().clear();
    }

    /// From now on, answers HEAD and GET of objects with this encryption (as AWS does for an
    /// encrypted object), except for the objects named in [`Self::unstamp`].
    pub fn stamp_encryption(&self, algorithm: &str, kms_key_id: Option<&str>) {
        self.state.stamp.lock().unwrap().encryption = Some((algorithm.into(), kms_key_id.map(str::to_string)));
    }

    /// Answers reads of the object whose path ends with `key` without encryption headers.
    pub fn unstamp(&self, key: &str) {
        self.state.stamp.lock().unwrap().unstamped.insert(key.to_string());
    }
}

impl Drop for S3Recorder {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Hop-by-hop headers, which a proxy does not pass on.
const HOP_BY_HOP: [&str; 4] = ["connection", "keep-alive", "transfer-encoding", "upgrade"];

async fn forward(client: &reqwest::Client, upstream: &str, state: &State, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let recorded = Recorded {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers.clone(),
    };
    state.requests.lock().unwrap().push(recorded.clone());
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("request body");
    let url = format!("{upstream}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut headers = parts.headers.clone();
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    let answer = client.request(parts.method.clone(), url).headers(headers).body(body).send().await;
    let upstream_response = match answer {
        Ok(r) => r,
        Err(e) => return Response::builder().status(502).body(Body::from(e.to_string())).unwrap(),
    };
    let mut response = Response::builder().status(upstream_response.status());
    let mut response_headers = upstream_response.headers().clone();
    for h in HOP_BY_HOP {
        response_headers.remove(h);
    }
    let reads_object = matches!(parts.method, Method::HEAD | Method::GET)
        && recorded.path.trim_start_matches('/').contains('/')
        && upstream_response.status().is_success();
    let stamp = state.stamp.lock().unwrap().clone();
    if reads_object
        && let Some((algorithm, key)) = &stamp.encryption
        && !stamp.unstamped.iter().any(|k| recorded.path.ends_with(k.as_str()))
    {
        response_headers.insert("x-amz-server-side-encryption", HeaderValue::from_str(algorithm).unwrap());
        if let Some(key) = key {
            response_headers.insert("x-amz-server-side-encryption-aws-kms-key-id", HeaderValue::from_str(key).unwrap());
        }
    }
    *response.headers_mut().unwrap() = response_headers;
    let bytes = upstream_response.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).unwrap()
}
