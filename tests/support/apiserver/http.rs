//! HTTP layer: routing, discovery, CRUD handlers, watch streams, Tables, faults, counting.
//!
//! Discovery is the legacy kind (`/api`, `/api/v1`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`);
//! requests for aggregated discovery (Accept `as=APIGroupDiscoveryList`) are answered with the
//! legacy documents as `application/json`, which kubectl and kube-rs accept and then walk the
//! group versions. `/openapi/v2` answers 404. `/openapi/v3` lists every group version, and
//! each group-version document holds only the PATCH operations of its resources with their
//! `fieldValidation` parameter and `x-kubernetes-group-version-kind` (no schemas): that is
//! what kubectl checks to decide that the server validates fields itself, so it skips
//! client-side schema validation (`kubectl explain` therefore has nothing to show).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::Shared;
use super::select::{FieldSelector, LabelSelector, age, jsonpath};
use super::store::{ApiError, DeleteOpts, EvType, Event, FieldValidation, Obj, ResourceType, WriteCtx, meta_str};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

fn json_response(code: u16, v: &Value, warnings: &[String]) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(h) = HeaderValue::from_str(&text) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

/// An object response, serialized straight from the shared object when no rewrite is needed.
fn obj_response(code: u16, o: &Obj, rt: &ResourceType, version: &str, warnings: &[String]) -> Response {
    if o["apiVersion"].as_str() == Some(rt.api_version(version).as_str()) {
        json_response(code, o, warnings)
    } else {
        json_response(code, &present(o, rt, version), warnings)
    }
}

fn error_response(e: &ApiError) -> Response {
    let mut r = json_response(e.code, &e.to_status(), &[]);
    if let Some(s) = e.retry_after
        && let Ok(h) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, h);
    }
    r
}

fn not_found_path() -> Response {
    error_response(&ApiError::new(404, "NotFound", "the server could not find the requested resource"))
}

type Query = HashMap<String, String>;

fn parse_query(q: Option<&str>) -> Query {
    form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect()
}

fn qbool(q: &Query, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

/// `BERTH_TEST_APISERVER_LOG=1` logs every request and its status to stderr.
fn log_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("BERTH_TEST_APISERVER_LOG").is_some_and(|v| v != "0"))
}

async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    if !log_enabled() {
        return handle_inner(sh, req).await;
    }
    let line = format!(
        "{} {} accept={:?} ct={:?}",
        req.method(),
        req.uri(),
        req.headers().get(header::ACCEPT),
        req.headers().get(header::CONTENT_TYPE)
    );
    let r = handle_inner(sh, req).await;
    eprintln!("[test-apiserver] {line} -> {}", r.status().as_u16());
    r
}

async fn handle_inner(sh: Arc<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parse_query(parts.uri.query());
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| s.to_string())
        })
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = parts.method.clone();
    match segs.as_slice() {
        ["version"] => return version(),
        ["healthz" | "readyz" | "livez", ..] => return (StatusCode::OK, "ok").into_response(),
        ["api"] => return api_versions(&sh),
        ["apis"] => return group_list(&sh),
        ["api", "v1"] => return resource_list(&sh, "", "v1"),
        ["apis", g] => return group(&sh, g),
        ["apis", g, v] => return resource_list(&sh, g, v),
        ["openapi", "v3"] => return openapi_v3_root(&sh),
        ["openapi", "v3", "api", "v1"] => return openapi_v3_gv(&sh, "", "v1"),
        ["openapi", "v3", "apis", g, v] => return openapi_v3_gv(&sh, g, v),
        ["openapi", ..] => return not_found_path(),
        _ => {}
    }
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return not_found_path(),
    };
    let (ns, rest): (Option<&str>, &[&str]) =
        if rest.len() >= 3 && rest[0] == "namespaces" && !(rest.len() == 3 && matches!(rest[2], "status" | "finalize"))
        {
            (Some(rest[1]), &rest[2..])
        } else {
            (None, rest)
        };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(*n), None),
        [p, n, s] => (*p, Some(*n), Some(*s)),
        _ => return not_found_path(),
    };
    let rt = sh.store.lock().lookup(group, version, plural);
    let Some(rt) = rt else {
        return not_found_path();
    };
    let ns = if rt.namespaced { ns } else { None };
    let is_watch = qbool(&query, "watch");
    let verb = match (&method, name, is_watch) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, Some(_), _) => "get",
        (&Method::GET, None, _) => "list",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, Some(_), _) => "delete",
        (&Method::DELETE, None, _) => "deletecollection",
        _ => {
            return error_response(&ApiError::new(405, "MethodNotAllowed", "method not allowed"));
        }
    };
    let resource = match sub {
        Some(s) => format!("{}/{}", rt.plural, s),
        None => rt.plural.clone(),
    };
    sh.count(verb, &resource);
    if let Some(d) = sh.faults.latency_for(verb, &resource) {
        tokio::time::sleep(d).await;
    }
    if let Some((status, retry_after)) = sh.faults.take(verb, &resource) {
        let reason = match status {
            409 => "Conflict",
            429 => "TooManyRequests",
            404 => "NotFound",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        let mut e = ApiError::new(status, reason, format!("injected fault: {verb} {resource}"));
        e.retry_after = retry_after;
        if status == 409 {
            e = ApiError::conflict(&rt, name.unwrap_or(""));
        }
        e.retry_after = retry_after;
        return error_response(&e);
    }
    if let Some(s) = sub
        && s != "status"
    {
        return not_found_path();
    }
    if rt.namespaced && ns.is_none() && !matches!(verb, "list" | "watch") {
        return not_found_path();
    }
    let ns_s = ns.unwrap_or("").to_string();
    let table = parts.headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("as=Table"));
    let status_sub = sub == Some("status");
    let body = match axum::body::to_bytes(body, 256 << 20).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(e.to_string())),
    };
    let mut ctx = WriteCtx {
        dry_run: query.get("dryRun").is_some_and(|d| d == "All"),
        field_validation: match query.get("fieldValidation").map(String::as_str) {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        },
        version: version.to_string(),
        warnings: vec![],
    };
    let result: Result<Response, ApiError> = match verb {
        "get" => {
            let o = sh.store.lock().get(&rt.key(), &ns_s, name.unwrap());
            match o {
                Some(o) if table => Ok(json_response(200, &to_table(&rt, version, &[o], &query, None), &[])),
                Some(o) => Ok(obj_response(200, &o, &rt, version, &[])),
                None => Err(ApiError::not_found(&rt, name.unwrap())),
            }
        }
        "list" => list(&sh, &rt, version, ns, &query, table),
        "watch" => {
            return watch(sh.clone(), rt.clone(), version.to_string(), ns.map(String::from), &query, name).await;
        }
        "create" => parse_body(&body).and_then(|obj| {
            let o = sh.store.lock().create(&rt, &ns_s, obj, &mut ctx)?;
            Ok(obj_response(201, &o, &rt, version, &ctx.warnings))
        }),
        "update" => parse_body(&body).and_then(|obj| {
            let o = sh.store.lock().update(&rt, &ns_s, name.unwrap(), obj, status_sub, &mut ctx)?;
            Ok(obj_response(200, &o, &rt, version, &ctx.warnings))
        }),
        "patch" => patch(&sh, &rt, &ns_s, name.unwrap(), &parts.headers, &body, &query, status_sub, &mut ctx)
            .map(|o| obj_response(200, &o, &rt, version, &ctx.warnings)),
        "delete" => delete_opts(&body, &query).and_then(|opts| {
            let o = sh.store.lock().delete(&rt, &ns_s, name.unwrap(), &opts)?;
            Ok(obj_response(200, &o, &rt, version, &[]))
        }),
        "deletecollection" => delete_opts(&body, &query).and_then(|opts| {
            let sel = selectors(&query)?;
            let mut store = sh.store.lock();
            let objs = store.list(&rt.key(), ns);
            for o in objs.iter().filter(|o| sel.0.matches(o) && sel.1.matches(o)) {
                let n = meta_str(o, "name").unwrap_or_default().to_string();
                let ons = meta_str(o, "namespace").unwrap_or_default().to_string();
                let _ = store.delete(&rt, &ons, &n, &opts);
            }
            Ok(json_response(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                &[],
            ))
        }),
        _ => unreachable!(),
    };
    match result {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

fn delete_opts(body: &Bytes, q: &Query) -> Result<DeleteOpts, ApiError> {
    let mut opts = DeleteOpts {
        propagation: q.get("propagationPolicy").cloned(),
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        ..Default::default()
    };
    if !body.is_empty() {
        let v = parse_body(body)?;
        if let Some(p) = v["propagationPolicy"].as_str() {
            opts.propagation = Some(p.to_string());
        }
        if v["orphanDependents"].as_bool() == Some(true) {
            opts.propagation = Some("Orphan".into());
        }
        if let Some(rv) = v["preconditions"]["resourceVersion"].as_str() {
            opts.precondition_rv = Some(rv.to_string());
        }
        if let Some(uid) = v["preconditions"]["uid"].as_str() {
            opts.precondition_uid = Some(uid.to_string());
        }
        if v["dryRun"].as_array().is_some_and(|a| a.iter().any(|d| d == "All")) {
            opts.dry_run = true;
        }
    }
    Ok(opts)
}

#[allow(clippy::too_many_arguments)]
fn patch(
    sh: &Shared,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    q: &Query,
    status_sub: bool,
    ctx: &mut WriteCtx,
) -> Result<Obj, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if ct == "application/apply-patch+yaml" || ct == "application/apply-patch+cbor" {
        let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
            return Err(ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        };
        let cfg = parse_body(body)?;
        return sh.store.lock().apply(rt, ns, name, cfg, manager, status_sub, ctx);
    }
    sh.store.lock().patch(rt, ns, name, &ct, body, status_sub, ctx)
}

fn selectors(q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let l = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let f = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok((l, f))
}

/// The object as served in `version` (apiVersion rewritten for other CRD versions).
fn present(o: &Obj, rt: &ResourceType, version: &str) -> Value {
    let av = rt.api_version(version);
    if o["apiVersion"].as_str() == Some(av.as_str()) {
        (**o).clone()
    } else {
        let mut v = (**o).clone();
        v["apiVersion"] = json!(av);
        v
    }
}

fn list(
    sh: &Shared,
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    q: &Query,
    table: bool,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(q)?;
    let (objs, rv) = {
        let store = sh.store.lock();
        (store.list(&rt.key(), ns), store.rv)
    };
    let objs: Vec<Obj> = objs.into_iter().filter(|o| ls.matches(o) && fs.matches(o)).collect();
    if table {
        return Ok(json_response(200, &to_table(rt, version, &objs, q, Some(rv)), &[]));
    }
    // Serialize items without cloning each object into a new Value tree.
    let av = rt.api_version(version);
    let mut out = Vec::with_capacity(256 + objs.len() * 512);
    let head = serde_json::to_string(
        &json!({"apiVersion": av, "kind": rt.list_kind, "metadata": {"resourceVersion": rv.to_string()}}),
    )
    .unwrap();
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"items\":[");
    for (i, o) in objs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if o["apiVersion"].as_str() == Some(av.as_str()) {
            serde_json::to_writer(&mut out, &**o).unwrap();
        } else {
            serde_json::to_writer(&mut out, &present(o, rt, version)).unwrap();
        }
    }
    out.extend_from_slice(b"]}");
    let mut r = Response::new(Body::from(out));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

// ------------------------------------------------------------------------------------ tables

fn to_table(rt: &ResourceType, version: &str, objs: &[Obj], q: &Query, rv: Option<u64>) -> Value {
    let name_col = json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names", "priority": 0});
    let age_col = json!({"name": "Age", "type": "date", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0});
    let printer: Vec<Value> = rt.columns.get(version).cloned().unwrap_or_default();
    let mut cols = vec![name_col];
    if printer.is_empty() {
        cols.push(age_col);
    } else {
        for c in &printer {
            cols.push(json!({
                "name": c["name"], "type": c["type"].as_str().unwrap_or("string"),
                "format": c["format"].as_str().unwrap_or(""),
                "description": c["description"].as_str().unwrap_or(""),
                "priority": c["priority"].as_i64().unwrap_or(0),
            }));
        }
    }
    let include = q.get("includeObject").map(String::as_str).unwrap_or("Metadata");
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            if printer.is_empty() {
                cells.push(json!(age(meta_str(o, "creationTimestamp").unwrap_or(""))));
            } else {
                for c in &printer {
                    let path = c["jsonPath"].as_str().unwrap_or("");
                    let ty = c["type"].as_str().unwrap_or("string");
                    let vals = jsonpath(o, path);
                    let cell = match vals.first() {
                        None => Value::Null,
                        Some(v) if ty == "date" => match v.as_str() {
                            Some(s) => json!(age(s)),
                            None => Value::Null,
                        },
                        Some(v) => match (ty, v) {
                            ("string", Value::String(_)) => (*v).clone(),
                            ("string", Value::Object(_) | Value::Array(_)) => json!(v.to_string()),
                            ("string", other) => json!(other.to_string()),
                            _ => (*v).clone(),
                        },
                    };
                    cells.push(cell);
                }
            }
            let object = match include {
                "None" => Value::Null,
                "Object" => present(o, rt, version),
                _ => {
                    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
                }
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": cols, "rows": rows})
}

// ------------------------------------------------------------------------------------ watch

struct WatchFilter {
    ns: Option<String>,
    name: Option<String>,
    ls: LabelSelector,
    fs: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, ns: &str, o: &Value) -> bool {
        self.ns.as_deref().is_none_or(|n| n == ns)
            && self.name.as_deref().is_none_or(|n| meta_str(o, "name") == Some(n))
            && self.ls.matches(o)
            && self.fs.matches(o)
    }
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// The line for an event as this watcher must see it, or None when filtered out.
fn render(ev: &Event, f: &WatchFilter, rt: &ResourceType, version: &str) -> Option<Bytes> {
    let now = f.matches(&ev.ns, &ev.obj);
    let before = ev.prev.as_ref().is_some_and(|p| f.matches(&ev.ns, p));
    let ty = match (ev.ty, now, before) {
        (EvType::Added, true, _) => EvType::Added,
        (EvType::Modified, true, true) => EvType::Modified,
        (EvType::Modified, true, false) => EvType::Added,
        (EvType::Modified, false, true) => EvType::Deleted,
        (EvType::Deleted, true, _) => EvType::Deleted,
        _ => return None,
    };
    let native = ev.obj["apiVersion"].as_str() == Some(rt.api_version(version).as_str());
    if ty == ev.ty && native {
        return Some(ev.line.get_or_init(|| event_line(ty.as_str(), &ev.obj)).clone());
    }
    Some(event_line(ty.as_str(), &present(&ev.obj, rt, version)))
}

fn bookmark(rt: &ResourceType, version: &str, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line("BOOKMARK", &json!({"kind": rt.kind, "apiVersion": rt.api_version(version), "metadata": meta}))
}

async fn watch(
    sh: Arc<Shared>,
    rt: Arc<ResourceType>,
    version: String,
    ns: Option<String>,
    q: &Query,
    name: Option<&str>,
) -> Response {
    let (ls, fs) = match selectors(q) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let filter = WatchFilter { ns, name: name.map(String::from), ls, fs };
    let send_initial = qbool(q, "sendInitialEvents");
    let bookmarks = qbool(q, "allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let key = rt.key();
    // Snapshot + subscription under one lock: no event can fall between them.
    let (initial, history, mut rx, mut last, expired) = {
        let store = sh.store.lock();
        let Some(d) = store.data.get(&key) else {
            return not_found_path();
        };
        let rx = d.tx.subscribe();
        if send_initial || rv_param.is_empty() || rv_param == "0" {
            (store.list(&key, filter.ns.as_deref()), vec![], rx, store.rv, false)
        } else {
            let Ok(since) = rv_param.parse::<u64>() else {
                return error_response(&ApiError::bad_request(format!("invalid resource version {rv_param:?}")));
            };
            match store.history_since(&key, since) {
                Some(h) => (vec![], h, rx, since, false),
                None => (vec![], vec![], rx, since, true),
            }
        }
    };
    let (mut tx, body_rx) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let mut drop_rx = sh.drop_watches.clone();
    drop_rx.mark_unchanged();
    let bookmark_every = sh.opts.bookmark_interval;
    tokio::spawn(async move {
        if expired {
            let e = ApiError::new(410, "Expired", format!("too old resource version: {last}"));
            let _ = tx.send(Ok(event_line("ERROR", &e.to_status()))).await;
            return;
        }
        for o in &initial {
            let ons = meta_str(o, "namespace").unwrap_or("");
            if filter.matches(ons, o) {
                let line = if o["apiVersion"].as_str() == Some(rt.api_version(&version).as_str()) {
                    event_line("ADDED", o)
                } else {
                    event_line("ADDED", &present(o, &rt, &version))
                };
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
        }
        if send_initial && tx.send(Ok(bookmark(&rt, &version, last, true))).await.is_err() {
            return;
        }
        for ev in &history {
            if let Some(line) = render(ev, &filter, &rt, &version)
                && tx.send(Ok(line)).await.is_err()
            {
                return;
            }
            last = ev.rv;
        }
        drop(history);
        drop(initial);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                r = drop_rx.changed() => { let _ = r; break; }
                _ = tick.tick(), if bookmarks => {
                    // Everything up to the global rv has been delivered if nothing is queued.
                    let rv = {
                        let store = sh.store.lock();
                        if rx.is_empty() { Some(store.rv.max(last)) } else { None }
                    };
                    if let Some(rv) = rv {
                        last = rv;
                        if tx.send(Ok(bookmark(&rt, &version, rv, false))).await.is_err() {
                            return;
                        }
                    }
                }
                r = rx.recv() => match r {
                    Ok(ev) => {
                        if ev.rv <= last {
                            continue;
                        }
                        last = ev.rv;
                        if let Some(line) = render(&ev, &filter, &rt, &version)
                            && tx.send(Ok(line)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let h = sh.store.lock().history_since(&key, last);
                        match h {
                            Some(h) => {
                                for ev in h {
                                    if let Some(line) = render(&ev, &filter, &rt, &version)
                                        && tx.send(Ok(line)).await.is_err()
                                    {
                                        return;
                                    }
                                    last = ev.rv;
                                }
                            }
                            None => {
                                let e = ApiError::new(410, "Expired", format!("too old resource version: {last}"));
                                let _ = tx.send(Ok(event_line("ERROR", &e.to_status()))).await;
                                return;
                            }
                        }
                    }
                    Err(RecvError::Closed) => break,
                },
            }
        }
    });
    let mut r = Response::new(Body::from_stream(body_rx));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

// ------------------------------------------------------------------------------------ discovery

fn version() -> Response {
    json_response(
        200,
        &json!({
            "major": "1", "minor": "35", "gitVersion": "v1.35.0-berth-test",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc",
            "platform": "linux/amd64", "emulationMajor": "1", "emulationMinor": "35",
            "minCompatibilityMajor": "1", "minCompatibilityMinor": "34",
        }),
        &[],
    )
}

fn api_versions(sh: &Shared) -> Response {
    json_response(
        200,
        &json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{}", sh.port)}]}),
        &[],
    )
}

/// group → versions (preferred first)
fn groups(sh: &Shared) -> Vec<(String, Vec<String>)> {
    let types = sh.store.lock().all_types();
    let mut out: Vec<(String, Vec<String>)> = vec![];
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => {
                for v in &t.versions {
                    if !vs.contains(v) {
                        vs.push(v.clone());
                    }
                }
            }
            None => out.push((t.group.clone(), t.versions.clone())),
        }
    }
    out
}

fn group_json(g: &str, vs: &[String]) -> Value {
    let versions: Vec<Value> = vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
    json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
}

fn group_list(sh: &Shared) -> Response {
    let gs: Vec<Value> = groups(sh).iter().map(|(g, vs)| group_json(g, vs)).collect();
    json_response(200, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs}), &[])
}

fn group(sh: &Shared, g: &str) -> Response {
    match groups(sh).into_iter().find(|(n, _)| n == g) {
        Some((g, vs)) => {
            let mut j = group_json(&g, &vs);
            j["kind"] = json!("APIGroup");
            j["apiVersion"] = json!("v1");
            json_response(200, &j, &[])
        }
        None => not_found_path(),
    }
}

fn resource_list(sh: &Shared, g: &str, v: &str) -> Response {
    let types = sh.store.lock().all_types();
    let verbs = json!(["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]);
    let mut resources = vec![];
    for t in types.iter().filter(|t| t.group == g && t.serves(v)) {
        let mut r = json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
            "kind": t.kind, "verbs": verbs,
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        if t.crd {
            r["storageVersionHash"] = json!(format!("{:x}", fxhash(&t.kind)));
        }
        resources.push(r);
        if t.status {
            resources.push(json!({
                "name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                "kind": t.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return not_found_path();
    }
    let gv = if g.is_empty() { v.to_string() } else { format!("{g}/{v}") };
    json_response(
        200,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        &[],
    )
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

// ------------------------------------------------------------------------------------ openapi

fn gv_path(g: &str, v: &str) -> String {
    if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") }
}

fn gv_types(sh: &Shared, g: &str, v: &str) -> Vec<Arc<ResourceType>> {
    sh.store.lock().all_types().into_iter().filter(|t| t.group == g && t.serves(v)).collect()
}

fn openapi_v3_root(sh: &Shared) -> Response {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![(String::new(), "v1".to_string())];
    for (g, vs) in groups(sh) {
        for v in vs {
            gvs.push((g.clone(), v));
        }
    }
    for (g, v) in gvs {
        let kinds: Vec<String> = gv_types(sh, &g, &v).iter().map(|t| t.plural.clone()).collect();
        let hash = format!("{:016X}", fxhash(&kinds.join(",")));
        let p = gv_path(&g, &v);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}));
    }
    json_response(200, &json!({"paths": paths}), &[])
}

fn openapi_v3_gv(sh: &Shared, g: &str, v: &str) -> Response {
    let types = gv_types(sh, g, v);
    if types.is_empty() {
        return not_found_path();
    }
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
    ]);
    let mut paths = serde_json::Map::new();
    for t in types {
        let prefix = format!("/{}", gv_path(g, v));
        let path = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        let gvk = json!({"group": g, "version": v, "kind": t.kind});
        paths.insert(
            path,
            json!({
                "patch": {
                    "operationId": format!("patch{}", t.kind),
                    "parameters": params,
                    "responses": {"200": {"description": "OK"}},
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                }
            }),
        );
    }
    json_response(
        200,
        &json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.35.0"}, "paths": paths, "components": {"schemas": {}}}),
        &[],
    )
}
