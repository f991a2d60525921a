//! A plain-HTTP proxy on loopback between the operator and the real API server that injects
//! API faults by rule: 500s (before the server sees the request, or after it acted: a reply
//! lost on the way back), 429 with `Retry-After`, 409 Conflict, a watch closed mid-stream, and
//! a watch answered `410 Gone` (expired resourceVersion, as the server sends it: an `ERROR`
//! event), and a watch whose events arrive late (a cache behind the server). Everything else passes through with the client's own token, so the API server's
//! audit log still names the operator's identity for every request that reached it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use tokio::task::JoinHandle;

/// What a matching request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `500 InternalError`; the request never reaches the server.
    ServerError,
    /// The server does the request; the client gets `500` instead of the server's answer.
    ReplyLost,
    /// `429 TooManyRequests` with `Retry-After: 1`.
    Throttled,
    /// `409 Conflict` ("the object has been modified"); the request never reaches the server.
    Conflict,
    /// The watch is forwarded and closed abruptly after its first chunk of events.
    DropWatch,
    /// The watch is answered with an `ERROR` event `410 Expired` (resourceVersion too old).
    Gone,
    /// Every chunk of the watch is passed on this long after it arrived, in order: the
    /// client's cache lags the server, as under load.
    LagWatch(Duration),
}

/// The request a rule matches: `verb` as the audit log names it (`get` also covers lists,
/// `watch` is a GET with `watch=true`), a substring of the path and query, and optionally a
/// substring of the request body.
#[derive(Clone, Debug)]
pub struct Rule {
    pub verb: &'static str,
    pub path: String,
    pub body: Option<&'static str>,
    pub fault: Fault,
    /// How many matching requests get the fault (the first ones).
    pub times: usize,
}

impl Rule {
    pub fn new(verb: &'static str, path: impl Into<String>, fault: Fault, times: usize) -> Rule {
        Rule { verb, path: path.into(), body: None, fault, times }
    }

    /// Only requests whose body contains `text`.
    pub fn with_body(mut self, text: &'static str) -> Rule {
        self.body = Some(text);
        self
    }
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    rules: Mutex<Vec<Rule>>,
    fired: Mutex<Vec<String>>,
}

pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (an `https://` API server
    /// whose serving certificate `ca_pem` signed).
    pub async fn start(upstream: &str, ca_pem: &str) -> FaultProxy {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
        let client =
            reqwest::Client::builder().tls_certs_only([ca]).http1_only().no_proxy().build().expect("upstream client");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client,
            rules: Mutex::default(),
            fired: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(forward).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { url: format!("http://{addr}"), shared, task }
    }

    /// Adds a rule; the first rule (in order added) that matches and has times left fires.
    pub fn add(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push(rule);
    }

    /// The faults injected so far, as `fault verb path`.
    pub fn fired(&self) -> Vec<String> {
        self.shared.fired.lock().unwrap().clone()
    }

    /// The rules that still have times left.
    pub fn unfired(&self) -> Vec<Rule> {
        self.shared.rules.lock().unwrap().iter().filter(|r| r.times > 0).cloned().collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn verb(method: &str, query: &str) -> &'static str {
    let watch = query.split('&').any(|p| p == "watch=true" || p == "watch=1");
    match method {
        "GET" if watch => "watch",
        "GET" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "other",
    }
}

/// The fault of the first matching rule with times left (counting it down).
fn take_fault(shared: &Shared, verb: &str, path_and_query: &str, body: &[u8]) -> Option<Fault> {
    let body = String::from_utf8_lossy(body);
    let mut rules = shared.rules.lock().unwrap();
    let rule = rules.iter_mut().find(|r| {
        r.times > 0 && r.verb == verb && path_and_query.contains(&r.path) && r.body.is_none_or(|b| body.contains(b))
    })?;
    rule.times -= 1;
    if rule.fault != Fault::DropWatch {
        shared.fired.lock().unwrap().push(format!("{:?} {verb} {path_and_query}", rule.fault));
    }
    Some(rule.fault)
}

/// A Kubernetes `Status` error answer.
fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    response
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().as_str().to_string();
    // Requests are small (no uploads go to the API server): read whole, to match on the body.
    let path_and_query = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let verb = verb(&method, request.uri().query().unwrap_or_default());
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let fault = take_fault(&shared, verb, &path_and_query, &body);
    match fault {
        Some(Fault::ServerError) => return status(500, "InternalError", "injected: an internal error"),
        Some(Fault::Conflict) => {
            return status(
                409,
                "Conflict",
                "injected: Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
            );
        }
        Some(Fault::Throttled) => {
            let mut r = status(429, "TooManyRequests", "injected: too many requests, please try again later");
            r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            return r;
        }
        Some(Fault::Gone) => {
            let event = serde_json::json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "injected: too old resource version", "reason": "Expired", "code": 410}});
            let mut r = Response::new(Body::from(format!("{event}\n")));
            r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
            return r;
        }
        _ => {}
    }
    let mut upstream = shared.client.request(parts.method.clone(), format!("{}{path_and_query}", shared.upstream));
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "connection" | "content-length" | "transfer-encoding") {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.body(body).send().await {
        Ok(answer) => answer,
        Err(e) => return status(502, "ServiceUnavailable", &format!("proxy: {e}")),
    };
    if fault == Some(Fault::ReplyLost) {
        // The server acted; drain its answer so the connection stays reusable, then lie.
        let _ = answer.bytes().await;
        return status(500, "InternalError", "injected: the reply was lost");
    }
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if !matches!(name.as_str(), "connection" | "content-length" | "transfer-encoding") {
            response = response.header(name, value);
        }
    }
    if let Some(Fault::LagWatch(lag)) = fault {
        return response.body(Body::from_stream(lagged(answer, lag))).unwrap();
    }
    let drop_after_first = fault == Some(Fault::DropWatch);
    let dropped = format!("DropWatch {verb} {path_and_query}");
    // (answer, chunks passed, ended)
    let stream = futures::stream::unfold((answer, 0usize, false), move |(mut answer, n, ended)| {
        let (shared, dropped) = (shared.clone(), dropped.clone());
        async move {
            if ended {
                return None;
            }
            if drop_after_first && n == 1 {
                shared.fired.lock().unwrap().push(dropped);
                // An error in the body stream aborts the response: the client sees the watch break.
                return Some((Err(std::io::Error::other("injected: watch dropped")), (answer, n, true)));
            }
            match answer.chunk().await {
                Ok(Some(chunk)) => Some((Ok::<Bytes, std::io::Error>(chunk), (answer, n + 1, false))),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), (answer, n, true))),
            }
        }
    });
    response.body(Body::from_stream(stream)).unwrap()
}

/// The chunks of `answer`, each passed on `lag` after it arrived, in order.
fn lagged(
    mut answer: reqwest::Response,
    lag: Duration,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let item = match answer.chunk().await {
                Ok(Some(chunk)) => Ok(chunk),
                Ok(None) => break,
                Err(e) => Err(std::io::Error::other(e)),
            };
            let failed = item.is_err();
            // Ends when the client has gone (the receiver is dropped) or the watch broke.
            if tx.send((tokio::time::Instant::now() + lag, item)).is_err() || failed {
                break;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let (due, item) = rx.recv().await?;
        tokio::time::sleep_until(due).await;
        Some((item, rx))
    })
}
