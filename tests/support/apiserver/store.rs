//! The object store: resource types (built-ins + CRDs), objects, the global resourceVersion,
//! per-type watch history and broadcast, the write pipeline (status isolation, generation,
//! no-op detection, validation), deletion with finalizers and owner-reference GC.
//!
//! One `std::sync::Mutex` guards everything; it is never held across an `.await`. Each
//! operation touches one object (plus its dependents on deletion), so no request is O(n) in
//! the store size except LIST/initial watch snapshots, which copy `Arc` pointers only.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use axum::body::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::{patch, schema};

pub type Obj = Arc<Value>;
/// (group, plural)
pub type ResKey = (String, String);
/// (namespace or "", name)
pub type ObjKey = (String, String);

pub const CRD_KEY: (&str, &str) = ("apiextensions.k8s.io", "customresourcedefinitions");

#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    pub storage_version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `status` subresource.
    pub status: bool,
    /// CRD: openAPIV3Schema per version.
    pub schemas: HashMap<String, Value>,
    /// CRD: additionalPrinterColumns per version.
    pub columns: HashMap<String, Vec<Value>>,
    /// CRD: compiled CEL rules per version (only for schemas with x-kubernetes-validations).
    pub cel: HashMap<String, Arc<kube_cel::CompiledSchema>>,
    pub crd: bool,
}

impl ResourceType {
    pub fn key(&self) -> ResKey {
        (self.group.clone(), self.plural.clone())
    }
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_string() } else { format!("{}/{}", self.group, version) }
    }
    /// `plural` or `plural.group` as in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }
    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvType {
    Added,
    Modified,
    Deleted,
}

impl EvType {
    pub fn as_str(self) -> &'static str {
        match self {
            EvType::Added => "ADDED",
            EvType::Modified => "MODIFIED",
            EvType::Deleted => "DELETED",
        }
    }
}

/// One change, shared by every watcher (never copied per watcher).
pub struct Event {
    pub rv: u64,
    pub ty: EvType,
    pub key: ResKey,
    pub ns: String,
    pub obj: Obj,
    pub prev: Option<Obj>,
    /// Serialized watch line in the stored apiVersion, computed once.
    pub line: OnceLock<Bytes>,
}

impl Event {
    pub fn name(&self) -> &str {
        self.obj["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// A Kubernetes `Status` failure.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError { code, reason: reason.into(), message: message.into(), details: None, retry_after: None }
    }
    fn with_details(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
        self
    }
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{}\" not found", rt.qualified(), name)).with_details(rt, name)
    }
    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{}\" already exists", rt.qualified(), name))
            .with_details(rt, name)
    }
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.qualified(),
                name
            ),
        )
        .with_details(rt, name)
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }
    pub fn invalid(rt: &ResourceType, name: &str, causes: Vec<schema::Cause>) -> Self {
        let group_kind = if rt.group.is_empty() { rt.kind.clone() } else { format!("{}.{}", rt.kind, rt.group) };
        let parts: Vec<String> = causes
            .iter()
            .map(|c| if c.field.is_empty() { c.message.clone() } else { format!("{}: {}", c.field, c.message) })
            .collect();
        let joined = if parts.len() == 1 { parts[0].clone() } else { format!("[{}]", parts.join(", ")) };
        let mut e = Self::new(422, "Invalid", format!("{group_kind} \"{name}\" is invalid: {joined}"));
        e.details = Some(json!({
            "name": name, "group": rt.group, "kind": rt.kind,
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
        }));
        e
    }
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        if let Some(r) = self.retry_after {
            s["details"]["retryAfterSeconds"] = json!(r);
        }
        s
    }
}

pub type Result<T> = std::result::Result<T, ApiError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// Per-request write settings and outputs.
#[derive(Debug, Default)]
pub struct WriteCtx {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    /// The API version the request used (for schema selection); empty: storage version.
    pub version: String,
    pub warnings: Vec<String>,
}

pub struct TypeData {
    pub objects: BTreeMap<ObjKey, Obj>,
    pub history: VecDeque<Arc<Event>>,
    /// Events with rv <= compacted may have been evicted from history.
    pub compacted: u64,
    pub tx: broadcast::Sender<Arc<Event>>,
    /// Server-side apply: last applied configuration per (manager, status-subresource).
    pub applied: HashMap<ObjKey, BTreeMap<(String, bool), Value>>,
}

impl TypeData {
    fn new() -> Self {
        TypeData {
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            tx: broadcast::channel(4096).0,
            applied: HashMap::new(),
        }
    }
}

pub struct Inner {
    pub rv: u64,
    pub types: HashMap<ResKey, Arc<ResourceType>>,
    pub data: HashMap<ResKey, TypeData>,
    /// uid → location of the object
    uids: HashMap<String, (ResKey, ObjKey)>,
    /// owner uid → dependents
    dependents: HashMap<String, HashSet<(ResKey, ObjKey)>>,
    history_limit: usize,
    all_tx: broadcast::Sender<Arc<Event>>,
}

pub struct Store {
    inner: Mutex<Inner>,
    pub all_tx: broadcast::Sender<Arc<Event>>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let all_tx = broadcast::channel(1 << 16).0;
        let mut inner = Inner {
            rv: 1,
            types: HashMap::new(),
            data: HashMap::new(),
            uids: HashMap::new(),
            dependents: HashMap::new(),
            history_limit: history_limit.max(16),
            all_tx: all_tx.clone(),
        };
        for rt in builtin_types() {
            inner.register(rt);
        }
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            inner.ensure_namespace(ns);
        }
        Store { inner: Mutex::new(inner), all_tx }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Create or replace (PUT semantics without resourceVersion check) any object.
    pub fn upsert_internal(&self, obj: Value) -> Result<Obj> {
        let mut inner = self.lock();
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let rt = inner
            .type_by_kind(&api_version, &kind)
            .ok_or_else(|| ApiError::bad_request(format!("unknown kind {api_version} {kind}")))?;
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let ns = if rt.namespaced {
            obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string()
        } else {
            String::new()
        };
        let mut ctx = WriteCtx::default();
        let status = obj.get("status").cloned();
        let o = if inner.get(&rt.key(), &ns, &name).is_some() {
            let mut cand = obj;
            if let Some(m) = cand["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            inner.update(&rt, &ns, &name, cand, false, &mut ctx)?
        } else {
            inner.create(&rt, &ns, obj, &mut ctx)?
        };
        match status {
            Some(st) if rt.status && (rt.group.as_str(), rt.plural.as_str()) != CRD_KEY => {
                Ok(inner.write_status(&rt.key(), &ns, &name, st).unwrap_or(o))
            }
            _ => Ok(o),
        }
    }

    pub fn get_by_kind(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Obj> {
        let inner = self.lock();
        let rt = inner.type_by_kind(api_version, kind)?;
        let ns = if rt.namespaced { ns } else { "" };
        inner.get(&rt.key(), ns, name)
    }
}

static UID_COUNTER: AtomicU64 = AtomicU64::new(0);

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn random_u64() -> u64 {
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    splitmix(seed ^ splitmix(UID_COUNTER.fetch_add(1, Ordering::Relaxed)))
}

pub fn new_uid() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = CHARS[(r % CHARS.len() as u64) as usize] as char;
            r /= CHARS.len() as u64;
            c
        })
        .collect()
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn finalizers_empty(obj: &Value) -> bool {
    obj["metadata"]["finalizers"].as_array().is_none_or(|a| a.is_empty())
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["uid"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Everything except metadata and status (what `generation` tracks).
fn spec_differs(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a != b;
    };
    let skip = |k: &String| matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind");
    let ka: Vec<_> = a.iter().filter(|(k, _)| !skip(k)).collect();
    let kb: Vec<_> = b.iter().filter(|(k, _)| !skip(k)).collect();
    ka != kb
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let o = obj.as_object_mut().unwrap();
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut().unwrap()
}

impl Inner {
    // ---------------------------------------------------------------- types

    fn register(&mut self, rt: ResourceType) {
        let key = rt.key();
        self.data.entry(key.clone()).or_insert_with(TypeData::new);
        self.types.insert(key, Arc::new(rt));
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        let rt = self.types.get(&(group.to_string(), plural.to_string()))?;
        rt.serves(version).then(|| rt.clone())
    }

    pub fn type_by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        self.types.values().find(|rt| rt.group == group && rt.kind == kind && rt.serves(version)).cloned()
    }

    pub fn all_types(&self) -> Vec<Arc<ResourceType>> {
        let mut v: Vec<_> = self.types.values().cloned().collect();
        v.sort_by(|a, b| (&a.group, &a.plural).cmp(&(&b.group, &b.plural)));
        v
    }

    fn sync_crd(&mut self, crd: &Value) {
        let Some(rt) = crd_to_type(crd) else { return };
        self.register(rt);
    }

    fn unregister_crd(&mut self, crd: &Value) {
        let group = crd["spec"]["group"].as_str().unwrap_or_default().to_string();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default().to_string();
        let key = (group, plural);
        let keys: Vec<ObjKey> = self.data.get(&key).map(|d| d.objects.keys().cloned().collect()).unwrap_or_default();
        for (ns, name) in keys {
            self.remove_object(&key, &ns, &name, false);
        }
        self.types.remove(&key);
        self.data.remove(&key);
    }

    // ---------------------------------------------------------------- reads

    pub fn get(&self, key: &ResKey, ns: &str, name: &str) -> Option<Obj> {
        self.data.get(key)?.objects.get(&(ns.to_string(), name.to_string())).cloned()
    }

    /// All objects of a type, optionally in one namespace (sorted by namespace, name).
    pub fn list(&self, key: &ResKey, ns: Option<&str>) -> Vec<Obj> {
        let Some(d) = self.data.get(key) else {
            return vec![];
        };
        match ns {
            None => d.objects.values().cloned().collect(),
            Some(ns) => d
                .objects
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, o)| o.clone())
                .collect(),
        }
    }

    // ---------------------------------------------------------------- events

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(&mut self, key: &ResKey, ty: EvType, ns: &str, obj: Obj, prev: Option<Obj>, rv: u64) {
        let ev = Arc::new(Event { rv, ty, key: key.clone(), ns: ns.to_string(), obj, prev, line: OnceLock::new() });
        let limit = self.history_limit;
        if let Some(d) = self.data.get_mut(key) {
            d.history.push_back(ev.clone());
            while d.history.len() > limit {
                if let Some(old) = d.history.pop_front() {
                    d.compacted = old.rv;
                }
            }
            let _ = d.tx.send(ev.clone());
        }
        let _ = self.all_tx.send(ev);
    }

    fn store_obj(&mut self, key: &ResKey, ns: &str, name: &str, obj: Obj, prev: Option<Obj>, rv: u64) {
        if let Some(p) = &prev {
            if owner_uids(p) != owner_uids(&obj) {
                self.index_remove(key, ns, name, p);
                self.index_insert(key, ns, name, &obj);
            }
        } else {
            self.index_insert(key, ns, name, &obj);
        }
        let ty = if prev.is_some() { EvType::Modified } else { EvType::Added };
        if let Some(d) = self.data.get_mut(key) {
            d.objects.insert((ns.to_string(), name.to_string()), obj.clone());
        }
        self.emit(key, ty, ns, obj, prev, rv);
    }

    fn index_insert(&mut self, key: &ResKey, ns: &str, name: &str, obj: &Value) {
        let okey = (ns.to_string(), name.to_string());
        if let Some(uid) = meta_str(obj, "uid") {
            self.uids.insert(uid.to_string(), (key.clone(), okey.clone()));
        }
        for owner in owner_uids(obj) {
            self.dependents.entry(owner).or_default().insert((key.clone(), okey.clone()));
        }
    }

    fn index_remove(&mut self, key: &ResKey, ns: &str, name: &str, obj: &Value) {
        let okey = (ns.to_string(), name.to_string());
        for owner in owner_uids(obj) {
            if let Some(s) = self.dependents.get_mut(&owner) {
                s.remove(&(key.clone(), okey.clone()));
                if s.is_empty() {
                    self.dependents.remove(&owner);
                }
            }
        }
    }

    // ---------------------------------------------------------------- namespaces

    pub fn ensure_namespace(&mut self, ns: &str) {
        let key = (String::new(), "namespaces".to_string());
        if ns.is_empty() || self.get(&key, "", ns).is_some() {
            return;
        }
        let rv = self.next_rv();
        let obj = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "uid": new_uid(), "resourceVersion": rv.to_string(),
                "creationTimestamp": now_rfc3339(), "generation": 1,
                "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        self.store_obj(&key, "", ns, Arc::new(obj), None, rv);
    }

    // ---------------------------------------------------------------- writes

    /// POST.
    pub fn create(&mut self, rt: &ResourceType, ns: &str, mut obj: Value, ctx: &mut WriteCtx) -> Result<Obj> {
        let key = rt.key();
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be an object"));
        }
        let version = if ctx.version.is_empty() { rt.storage_version.clone() } else { ctx.version.clone() };
        obj["apiVersion"] = json!(rt.api_version(&version));
        obj["kind"] = json!(rt.kind);
        let body_ns = meta_str(&obj, "namespace").map(String::from);
        let m = meta_mut(&mut obj);
        if rt.namespaced {
            if let Some(bns) = body_ns.filter(|b| !b.is_empty() && b != ns) {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({bns}) does not match the namespace sent on the request ({ns})"
                )));
            }
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        let mut name = m.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        if name.is_empty() {
            match m.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    name = format!("{prefix}{}", random_suffix());
                    m.insert("name".into(), json!(name));
                }
                _ => {
                    let mut causes = vec![schema::Cause::new(
                        "FieldValueRequired",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )];
                    causes.truncate(1);
                    return Err(ApiError::invalid(rt, "", causes));
                }
            }
        }
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            m.remove(f);
        }
        for f in ["labels", "annotations", "finalizers", "ownerReferences"] {
            let empty = match m.get(f) {
                Some(Value::Object(o)) => o.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Null) => true,
                _ => false,
            };
            if empty {
                m.remove(f);
            }
        }
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        m.insert("generation".into(), json!(1));
        if rt.status {
            obj.as_object_mut().unwrap().remove("status");
        }
        if rt.group.is_empty() && rt.plural == "namespaces" {
            obj["status"] = json!({"phase": "Active"});
        }
        if (rt.group.as_str(), rt.plural.as_str()) == CRD_KEY {
            set_crd_status(&mut obj);
        }
        self.validate(rt, &mut obj, None, ctx, &name)?;
        if self.get(&key, ns, &name).is_some() {
            return Err(ApiError::already_exists(rt, &name));
        }
        if ctx.dry_run {
            return Ok(Arc::new(obj));
        }
        if rt.namespaced {
            self.ensure_namespace(ns);
        }
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = Arc::new(obj);
        self.store_obj(&key, ns, &name, obj.clone(), None, rv);
        if (rt.group.as_str(), rt.plural.as_str()) == CRD_KEY {
            self.sync_crd(&obj);
        }
        Ok(obj)
    }

    fn validate(
        &self,
        rt: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
        ctx: &mut WriteCtx,
        name: &str,
    ) -> Result<()> {
        if !rt.crd {
            return Ok(());
        }
        let version = if ctx.version.is_empty() || !rt.schemas.contains_key(&ctx.version) {
            &rt.storage_version
        } else {
            &ctx.version
        };
        let Some(schema) = rt.schemas.get(version) else {
            return Ok(());
        };
        let out = schema::validate_object(schema, obj, old, rt.cel.get(version).map(|c| &**c));
        if !out.unknown.is_empty() {
            match ctx.field_validation {
                FieldValidation::Strict => {
                    let msg =
                        out.unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect::<Vec<_>>().join(", ");
                    return Err(ApiError::bad_request(format!("strict decoding error: {msg}")));
                }
                FieldValidation::Warn => {
                    ctx.warnings.extend(out.unknown.iter().map(|f| format!("unknown field \"{f}\"")))
                }
                FieldValidation::Ignore => {}
            }
        }
        if !out.causes.is_empty() {
            return Err(ApiError::invalid(rt, name, out.causes));
        }
        Ok(())
    }

    /// PUT (and the common tail of every update): `cand` is the full desired object.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        cand: Value,
        status_sub: bool,
        ctx: &mut WriteCtx,
    ) -> Result<Obj> {
        let old = self.get(&rt.key(), ns, name).ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(n) = meta_str(&cand, "name")
            && !n.is_empty()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        self.finish_update(rt, ns, name, cand, &old, status_sub, ctx)
    }

    fn finish_update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut cand: Value,
        old: &Obj,
        status_sub: bool,
        ctx: &mut WriteCtx,
    ) -> Result<Obj> {
        let key = rt.key();
        if !cand.is_object() {
            return Err(ApiError::bad_request("the request body must be an object"));
        }
        // Optimistic concurrency: a resourceVersion in the candidate must match.
        if let Some(crv) = meta_str(&cand, "resourceVersion")
            && !crv.is_empty()
            && Some(crv) != meta_str(old, "resourceVersion")
        {
            return Err(ApiError::conflict(rt, name));
        }
        if rt.status {
            if status_sub {
                let st = cand.as_object_mut().unwrap().remove("status");
                cand = (**old).clone();
                let o = cand.as_object_mut().unwrap();
                match st {
                    Some(s) if !s.is_null() => {
                        o.insert("status".into(), s);
                    }
                    _ => {
                        o.remove("status");
                    }
                }
            } else {
                let o = cand.as_object_mut().unwrap();
                match old.get("status") {
                    Some(s) => {
                        o.insert("status".into(), s.clone());
                    }
                    None => {
                        o.remove("status");
                    }
                }
            }
        }
        cand["apiVersion"] = old["apiVersion"].clone();
        cand["kind"] = old["kind"].clone();
        {
            let om = old["metadata"].as_object().cloned().unwrap_or_default();
            let m = meta_mut(&mut cand);
            m.remove("managedFields");
            m.remove("selfLink");
            for f in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match om.get(f) {
                    Some(v) => {
                        m.insert(f.into(), v.clone());
                    }
                    None => {
                        m.remove(f);
                    }
                }
            }
            // Empty maps/lists in metadata are omitted, as the real server serializes them.
            for f in ["labels", "annotations", "finalizers", "ownerReferences"] {
                let empty = match m.get(f) {
                    Some(Value::Object(o)) => o.is_empty(),
                    Some(Value::Array(a)) => a.is_empty(),
                    Some(Value::Null) => true,
                    _ => false,
                };
                if empty {
                    m.remove(f);
                }
            }
        }
        if (rt.group.as_str(), rt.plural.as_str()) == CRD_KEY {
            set_crd_status(&mut cand);
        }
        self.validate(rt, &mut cand, Some(old), ctx, name)?;
        if cand == **old {
            return Ok(old.clone());
        }
        if spec_differs(old, &cand) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            cand["metadata"]["generation"] = json!(g + 1);
        }
        if ctx.dry_run {
            return Ok(Arc::new(cand));
        }
        let rv = self.next_rv();
        cand["metadata"]["resourceVersion"] = json!(rv.to_string());
        if cand["metadata"].get("deletionTimestamp").is_some() && finalizers_empty(&cand) {
            // Last finalizer removed: the object goes away.
            let obj = Arc::new(cand);
            self.finalize_removal(&key, ns, name, obj.clone(), rv, false);
            return Ok(obj);
        }
        let obj = Arc::new(cand);
        self.store_obj(&key, ns, name, obj.clone(), Some(old.clone()), rv);
        if (rt.group.as_str(), rt.plural.as_str()) == CRD_KEY {
            self.sync_crd(&obj);
        }
        Ok(obj)
    }

    /// PATCH with a non-apply patch type.
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        content_type: &str,
        body: &[u8],
        status_sub: bool,
        ctx: &mut WriteCtx,
    ) -> Result<Obj> {
        let old = self.get(&rt.key(), ns, name).ok_or_else(|| ApiError::not_found(rt, name))?;
        let mut cand = (*old).clone();
        let parse = |b: &[u8]| -> Result<Value> {
            serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("invalid patch body: {e}")))
        };
        match content_type {
            "application/merge-patch+json" => patch::merge_patch(&mut cand, &parse(body)?),
            "application/strategic-merge-patch+json" => patch::strategic_merge_patch(&mut cand, &parse(body)?),
            "application/json-patch+json" => {
                let ops = parse(body)?;
                patch::json_patch(&mut cand, &ops).map_err(|e| ApiError::new(422, "Invalid", e.message))?;
            }
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {other}"
                    ),
                ));
            }
        }
        // A patch that sets metadata.resourceVersion is a precondition; one that leaves it
        // unchanged is not.
        self.finish_update(rt, ns, name, cand, &old, status_sub, ctx)
    }

    /// PATCH with `application/apply-patch+yaml` (server-side apply, approximated).
    pub fn apply(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut cfg: Value,
        manager: &str,
        status_sub: bool,
        ctx: &mut WriteCtx,
    ) -> Result<Obj> {
        if !cfg.is_object() {
            return Err(ApiError::bad_request("apply configuration must be an object"));
        }
        if let Some(n) = meta_str(&cfg, "name")
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if meta_str(&cfg, "name").is_none() {
            meta_mut(&mut cfg).insert("name".into(), json!(name));
        }
        let key = rt.key();
        let okey = (ns.to_string(), name.to_string());
        let old = self.get(&key, ns, name);
        if let (Some(crv), Some(o)) = (meta_str(&cfg, "resourceVersion"), &old)
            && Some(crv) != meta_str(o, "resourceVersion")
        {
            return Err(ApiError::conflict(rt, name));
        }
        {
            let m = meta_mut(&mut cfg);
            for f in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(f);
            }
            if !rt.namespaced {
                m.remove("namespace");
            }
        }
        // What this manager owns through this endpoint.
        let owned: Value = if rt.status {
            if status_sub {
                let mut c = json!({"apiVersion": cfg["apiVersion"], "kind": cfg["kind"], "metadata": {"name": name}});
                if let Some(s) = cfg.get("status") {
                    c["status"] = s.clone();
                }
                c
            } else {
                let mut c = cfg.clone();
                c.as_object_mut().unwrap().remove("status");
                c
            }
        } else {
            cfg.clone()
        };
        let mkey = (manager.to_string(), status_sub);
        let result = match &old {
            None => {
                if status_sub {
                    return Err(ApiError::not_found(rt, name));
                }
                self.create(rt, ns, owned.clone(), ctx)?
            }
            Some(old) => {
                let mut base = (**old).clone();
                let applied = self.data.get(&key).and_then(|d| d.applied.get(&okey));
                let others: Vec<&Value> = applied
                    .map(|m| m.iter().filter(|(k, _)| **k != mkey).map(|(_, v)| v).collect())
                    .unwrap_or_default();
                if let Some(prev) = applied.and_then(|m| m.get(&mkey)) {
                    patch::remove_unapplied(&mut base, prev, &owned, &others);
                }
                patch::merge_apply(&mut base, &owned);
                if let Some(m) = base["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                self.finish_update(rt, ns, name, base, old, status_sub, ctx)?
            }
        };
        if !ctx.dry_run
            && let Some(d) = self.data.get_mut(&key)
            && d.objects.contains_key(&okey)
        {
            d.applied.entry(okey).or_default().insert(mkey, owned);
        }
        Ok(result)
    }

    /// DELETE. Returns the object as it is after the call (with deletionTimestamp, or as deleted).
    pub fn delete(&mut self, rt: &ResourceType, ns: &str, name: &str, opts: &DeleteOpts) -> Result<Obj> {
        let key = rt.key();
        let old = self.get(&key, ns, name).ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(p) = &opts.precondition_rv
            && Some(p.as_str()) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(rt, name));
        }
        if let Some(p) = &opts.precondition_uid
            && Some(p.as_str()) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(rt, name));
        }
        if opts.dry_run {
            return Ok(old);
        }
        let orphan = opts.propagation.as_deref() == Some("Orphan");
        if !finalizers_empty(&old) {
            if old["metadata"].get("deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut cand = (*old).clone();
            cand["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            cand["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let rv = self.next_rv();
            cand["metadata"]["resourceVersion"] = json!(rv.to_string());
            let obj = Arc::new(cand);
            self.store_obj(&key, ns, name, obj.clone(), Some(old), rv);
            return Ok(obj);
        }
        Ok(self.remove_object(&key, ns, name, orphan).unwrap_or(old))
    }

    /// Remove an object now (no finalizer check) and cascade. Returns the deleted object.
    fn remove_object(&mut self, key: &ResKey, ns: &str, name: &str, orphan: bool) -> Option<Obj> {
        let old = self.get(key, ns, name)?;
        let rv = self.next_rv();
        let mut obj = (*old).clone();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = Arc::new(obj);
        self.finalize_removal(key, ns, name, obj.clone(), rv, orphan);
        Some(obj)
    }

    fn finalize_removal(&mut self, key: &ResKey, ns: &str, name: &str, obj: Obj, rv: u64, orphan: bool) {
        let okey = (ns.to_string(), name.to_string());
        let prev = self.data.get_mut(key).and_then(|d| {
            d.applied.remove(&okey);
            d.objects.remove(&okey)
        });
        if let Some(p) = &prev {
            self.index_remove(key, ns, name, p);
        }
        let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
        self.uids.remove(&uid);
        self.emit(key, EvType::Deleted, ns, obj.clone(), prev, rv);
        if (key.0.as_str(), key.1.as_str()) == CRD_KEY {
            self.unregister_crd(&obj);
        }
        if key.0.is_empty() && key.1 == "namespaces" {
            self.delete_namespace_contents(name);
        }
        if orphan {
            self.orphan_dependents(&uid);
        } else {
            self.gc(uid);
        }
    }

    fn delete_namespace_contents(&mut self, ns: &str) {
        let keys: Vec<ResKey> = self.types.values().filter(|t| t.namespaced).map(|t| t.key()).collect();
        for key in keys {
            for obj in self.list(&key, Some(ns)) {
                let name = meta_str(&obj, "name").unwrap_or_default().to_string();
                self.delete_for_gc(&key, ns, &name, &obj);
            }
        }
    }

    /// Background deletion of one object on behalf of the garbage collector.
    fn delete_for_gc(&mut self, key: &ResKey, ns: &str, name: &str, obj: &Obj) {
        if finalizers_empty(obj) {
            self.remove_object(key, ns, name, false);
        } else if obj["metadata"].get("deletionTimestamp").is_none() {
            let mut cand = (**obj).clone();
            cand["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            cand["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let rv = self.next_rv();
            cand["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.store_obj(key, ns, name, Arc::new(cand), Some(obj.clone()), rv);
        }
    }

    /// Owner-reference GC: dependents whose owners are all gone are deleted (cascading).
    fn gc(&mut self, uid: String) {
        let Some(deps) = self.dependents.remove(&uid) else {
            return;
        };
        let mut deps: Vec<_> = deps.into_iter().collect();
        deps.sort();
        for (key, (ns, name)) in deps {
            let Some(obj) = self.get(&key, &ns, &name) else {
                continue;
            };
            if owner_uids(&obj).iter().all(|u| !self.uids.contains_key(u)) {
                // remove_object → finalize_removal → gc(dependent uid): cascades.
                self.delete_for_gc(&key, &ns, &name, &obj);
            }
        }
    }

    fn orphan_dependents(&mut self, uid: &str) {
        let Some(deps) = self.dependents.remove(uid) else {
            return;
        };
        for (key, (ns, name)) in deps {
            let Some(obj) = self.get(&key, &ns, &name) else {
                continue;
            };
            let mut cand = (*obj).clone();
            if let Some(refs) = cand["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(uid));
                if refs.is_empty() {
                    cand["metadata"].as_object_mut().unwrap().remove("ownerReferences");
                }
            }
            let rv = self.next_rv();
            cand["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.store_obj(&key, &ns, &name, Arc::new(cand), Some(obj), rv);
        }
    }

    /// Write `status` of an object (stand-ins). No-op when unchanged.
    pub fn write_status(&mut self, key: &ResKey, ns: &str, name: &str, status: Value) -> Option<Obj> {
        let rt = self.types.get(key)?.clone();
        let old = self.get(key, ns, name)?;
        if old.get("status") == Some(&status) {
            return Some(old);
        }
        let mut cand = (*old).clone();
        cand["status"] = status;
        if let Some(m) = cand["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let mut ctx = WriteCtx::default();
        self.finish_update(&rt, ns, name, cand, &old, true, &mut ctx).ok()
    }

    /// History events of a type with rv > `since`; `None` when they are no longer retained.
    pub fn history_since(&self, key: &ResKey, since: u64) -> Option<Vec<Arc<Event>>> {
        let d = self.data.get(key)?;
        if since < d.compacted {
            return None;
        }
        let start = d.history.partition_point(|e| e.rv <= since);
        Some(d.history.range(start..).cloned().collect())
    }
}

#[derive(Debug, Default)]
pub struct DeleteOpts {
    pub propagation: Option<String>,
    pub precondition_rv: Option<String>,
    pub precondition_uid: Option<String>,
    pub dry_run: bool,
}

fn set_crd_status(crd: &mut Value) {
    let ts = crd["metadata"]["creationTimestamp"].clone();
    let names = crd["spec"]["names"].clone();
    let mut accepted = names.clone();
    if accepted.get("listKind").is_none()
        && let Some(k) = names["kind"].as_str()
    {
        accepted["listKind"] = json!(format!("{k}List"));
    }
    if accepted.get("singular").is_none()
        && let Some(k) = names["kind"].as_str()
    {
        accepted["singular"] = json!(k.to_lowercase());
    }
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .map(|vs| vs.iter().filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect())
        .unwrap_or_default();
    crd["status"] = json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": ts},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": ts},
        ],
        "storedVersions": stored,
    });
}

/// Kubernetes version priority: v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > anything else.
fn version_priority(v: &str) -> (u8, u64, u64, String) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0, v.to_string());
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Ok(major) = digits.parse::<u64>() else {
        return (0, 0, 0, v.to_string());
    };
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        return (3, major, 0, String::new());
    }
    for (pre, rank) in [("beta", 2u8), ("alpha", 1u8)] {
        if let Some(n) = tail.strip_prefix(pre)
            && let Ok(minor) = n.parse::<u64>()
        {
            return (rank, major, minor, String::new());
        }
    }
    (0, 0, 0, v.to_string())
}

fn crd_to_type(crd: &Value) -> Option<ResourceType> {
    let spec = crd.get("spec")?;
    let group = spec["group"].as_str()?.to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str()?.to_string();
    let kind = names["kind"].as_str()?.to_string();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let mut versions = Vec::new();
    let mut schemas = HashMap::new();
    let mut columns = HashMap::new();
    let mut status = false;
    let mut storage_version = None;
    let mut cel = HashMap::new();
    for v in spec["versions"].as_array()? {
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        versions.push(name.to_string());
        if v["storage"].as_bool() == Some(true) {
            storage_version = Some(name.to_string());
        }
        if v["subresources"].get("status").is_some() {
            status = true;
        }
        if let Some(s) = v["schema"].get("openAPIV3Schema") {
            if s.to_string().contains("x-kubernetes-validations") {
                cel.insert(name.to_string(), Arc::new(kube_cel::compile_schema(s)));
            }
            schemas.insert(name.to_string(), s.clone());
        }
        if let Some(c) = v["additionalPrinterColumns"].as_array() {
            columns.insert(name.to_string(), c.clone());
        }
    }
    if versions.is_empty() {
        return None;
    }
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    let storage_version = storage_version.unwrap_or_else(|| versions[0].clone());
    Some(ResourceType {
        group,
        versions,
        storage_version,
        singular: names["singular"].as_str().map(String::from).unwrap_or_else(|| kind.to_lowercase()),
        list_kind: names["listKind"].as_str().map(String::from).unwrap_or_else(|| format!("{kind}List")),
        plural,
        kind,
        namespaced: spec["scope"].as_str() != Some("Cluster"),
        short_names: strs(&names["shortNames"]),
        categories: strs(&names["categories"]),
        status,
        schemas,
        columns,
        cel,
        crd: true,
    })
}

fn builtin_types() -> Vec<ResourceType> {
    // (group, version, plural, kind, namespaced, short names, status subresource, categories)
    let table: &[(&str, &str, &str, &str, bool, &[&str], bool, &[&str])] = &[
        ("", "v1", "namespaces", "Namespace", false, &["ns"], true, &[]),
        ("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], false, &[]),
        ("", "v1", "services", "Service", true, &["svc"], true, &["all"]),
        ("", "v1", "secrets", "Secret", true, &[], false, &[]),
        ("", "v1", "configmaps", "ConfigMap", true, &["cm"], false, &[]),
        ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, &["pvc"], true, &[]),
        ("", "v1", "pods", "Pod", true, &["po"], true, &["all"]),
        ("", "v1", "events", "Event", true, &["ev"], false, &[]),
        ("", "v1", "nodes", "Node", false, &["no"], true, &[]),
        ("apps", "v1", "deployments", "Deployment", true, &["deploy"], true, &["all"]),
        ("apps", "v1", "statefulsets", "StatefulSet", true, &["sts"], true, &["all"]),
        ("apps", "v1", "replicasets", "ReplicaSet", true, &["rs"], true, &["all"]),
        ("batch", "v1", "jobs", "Job", true, &[], true, &["all"]),
        ("batch", "v1", "cronjobs", "CronJob", true, &["cj"], true, &["all"]),
        ("networking.k8s.io", "v1", "ingresses", "Ingress", true, &["ing"], true, &[]),
        ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", true, &["netpol"], false, &[]),
        ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", true, &["hpa"], true, &["all"]),
        ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"], true, &[]),
        ("coordination.k8s.io", "v1", "leases", "Lease", true, &[], false, &[]),
        ("events.k8s.io", "v1", "events", "Event", true, &["ev"], false, &[]),
        ("storage.k8s.io", "v1", "storageclasses", "StorageClass", false, &["sc"], false, &[]),
        ("rbac.authorization.k8s.io", "v1", "roles", "Role", true, &[], false, &[]),
        ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, &[], false, &[]),
        ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, &[], false, &[]),
        ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", false, &[], false, &[]),
        (
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
            &[],
        ),
    ];
    table
        .iter()
        .map(|&(group, version, plural, kind, namespaced, short, status, cats)| ResourceType {
            group: group.into(),
            versions: vec![version.into()],
            storage_version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            list_kind: format!("{kind}List"),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: cats.iter().map(|s| s.to_string()).collect(),
            status,
            schemas: HashMap::new(),
            columns: HashMap::new(),
            cel: HashMap::new(),
            crd: false,
        })
        .collect()
}
