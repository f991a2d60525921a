//! CRD structural-schema handling: pruning of unknown fields, defaults, dropping `null`s of
//! non-nullable fields, validation (type, required, enum, minimum/maximum with exclusive
//! bounds, minLength/maxLength, pattern, minItems/maxItems, uniqueItems, minProperties/
//! maxProperties, additionalProperties, x-kubernetes-int-or-string,
//! x-kubernetes-preserve-unknown-fields, x-kubernetes-embedded-resource), then CEL
//! `x-kubernetes-validations` through `kube-cel`. Not supported: allOf/anyOf/oneOf/not,
//! `format`, multipleOf, list-type map/set uniqueness.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{Map, Value};

#[derive(Clone, Debug)]
pub struct Cause {
    pub reason: String,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn new(reason: &str, field: &str, message: impl Into<String>) -> Self {
        Cause { reason: reason.into(), field: field.into(), message: message.into() }
    }
}

#[derive(Default)]
pub struct Outcome {
    pub causes: Vec<Cause>,
    /// Paths of pruned unknown fields.
    pub unknown: Vec<String>,
}

/// Prune, default and validate a whole custom resource against its openAPIV3Schema.
pub fn validate_object(
    schema: &Value,
    obj: &mut Value,
    old: Option<&Value>,
    cel: Option<&kube_cel::CompiledSchema>,
) -> Outcome {
    let mut out = Outcome::default();
    let Some(o) = obj.as_object_mut() else {
        out.causes.push(Cause::new("FieldValueInvalid", "", "object expected"));
        return out;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let keys: Vec<String> = o.keys().cloned().collect();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(&k)) {
            Some(sub) => {
                if o[&k].is_null() && !flag(sub, "nullable") {
                    o.remove(&k);
                    continue;
                }
                walk(sub, o.get_mut(&k).unwrap(), &k, &mut out);
            }
            None if preserve => {}
            None => {
                out.unknown.push(k.clone());
                o.remove(&k);
            }
        }
    }
    if let Some(p) = props {
        for (k, sub) in p {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if !o.contains_key(k)
                && let Some(d) = sub.get("default")
            {
                let mut d = d.clone();
                walk(sub, &mut d, k, &mut out);
                o.insert(k.clone(), d);
            }
        }
    }
    for r in required(schema) {
        if !o.contains_key(r) {
            out.causes.push(Cause::new("FieldValueRequired", r, "Required value"));
        }
    }
    if let Some(cel) = cel.filter(|_| out.causes.is_empty()) {
        // Status-only or metadata-only changes still run all rules, like the API server
        // (which ratchets unchanged fields; we do not).
        if let Err(errs) = kube_cel::validate_compiled(cel, obj, old) {
            for e in errs.into_vec() {
                let field = e.field_path.trim_start_matches('.').to_string();
                out.causes.push(Cause::new(
                    e.reason.as_deref().unwrap_or("FieldValueInvalid"),
                    &field,
                    format!("Invalid value: \"object\": {}", e.message),
                ));
            }
        }
    }
    out
}

fn flag(s: &Value, name: &str) -> bool {
    s.get(name).and_then(Value::as_bool) == Some(true)
}

fn required(s: &Value) -> impl Iterator<Item = &str> {
    s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

thread_local! {
    static REGEXES: RefCell<HashMap<String, Option<regex::Regex>>> = RefCell::new(HashMap::new());
}

fn regex_match(pattern: &str, s: &str) -> bool {
    REGEXES.with(|c| {
        let mut c = c.borrow_mut();
        let re = c.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).ok());
        re.as_ref().is_none_or(|r| r.is_match(s))
    })
}

fn walk(s: &Value, v: &mut Value, path: &str, out: &mut Outcome) {
    if v.is_null() {
        if !flag(s, "nullable") {
            out.causes.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    s.get("type").and_then(Value::as_str).unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = flag(s, "x-kubernetes-int-or-string");
    let ty = s.get("type").and_then(Value::as_str);
    if int_or_string {
        if !matches!(type_name(v), "integer" | "string") {
            out.causes.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: {}: {path} in body must be of type integer or string: \"{}\"",
                    show(v),
                    type_name(v)
                ),
            ));
            return;
        }
    } else if let Some(t) = ty {
        let actual = type_name(v);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            out.causes.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!("Invalid value: {}: {path} in body must be of type {t}: \"{actual}\"", show(v)),
            ));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        let supported: Vec<String> = e.iter().map(show).collect();
        out.causes.push(Cause::new(
            "FieldValueNotSupported",
            path,
            format!("Unsupported value: {}: supported values: {}", show(v), supported.join(", ")),
        ));
    }
    match &*v {
        Value::String(st) => {
            let len = st.chars().count() as u64;
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                out.causes.push(Cause::new(
                    "FieldValueTooLong",
                    path,
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                out.causes.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!("Invalid value: {}: {path} in body should be at least {min} chars long", show(v)),
                ));
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str)
                && !regex_match(p, st)
            {
                out.causes.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!("Invalid value: {}: {path} in body should match '{p}'", show(v)),
                ));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
                let excl = flag(s, "exclusiveMinimum");
                if x < min || (excl && x == min) {
                    let rel = if excl { "greater than" } else { "greater than or equal to" };
                    out.causes.push(Cause::new(
                        "FieldValueInvalid",
                        path,
                        format!("Invalid value: {n}: {path} in body should be {rel} {}", num(min)),
                    ));
                }
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
                let excl = flag(s, "exclusiveMaximum");
                if x > max || (excl && x == max) {
                    let rel = if excl { "less than" } else { "less than or equal to" };
                    out.causes.push(Cause::new(
                        "FieldValueInvalid",
                        path,
                        format!("Invalid value: {n}: {path} in body should be {rel} {}", num(max)),
                    ));
                }
            }
        }
        _ => {}
    }
    match v {
        Value::Array(a) => {
            let len = a.len() as u64;
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && len > max
            {
                out.causes.push(Cause::new(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {len}: must have at most {max} items"),
                ));
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && len < min
            {
                out.causes.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!("Invalid value: {len}: {path} in body should have at least {min} items"),
                ));
            }
            if flag(s, "uniqueItems") {
                for i in 0..a.len() {
                    if a[..i].contains(&a[i]) {
                        out.causes.push(Cause::new(
                            "FieldValueDuplicate",
                            &format!("{path}[{i}]"),
                            format!("Duplicate value: {}", show(&a[i])),
                        ));
                    }
                }
            }
            if let Some(items) = s.get("items") {
                let mut i = 0;
                while i < a.len() {
                    walk(items, &mut a[i], &format!("{path}[{i}]"), out);
                    i += 1;
                }
            }
        }
        Value::Object(o) => walk_object(s, o, path, out),
        _ => {}
    }
}

fn num(x: f64) -> String {
    if x.fract() == 0.0 { format!("{}", x as i64) } else { x.to_string() }
}

fn walk_object(s: &Value, o: &mut Map<String, Value>, path: &str, out: &mut Outcome) {
    let props = s.get("properties").and_then(Value::as_object);
    let addl = s.get("additionalProperties");
    let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
    let embedded = flag(s, "x-kubernetes-embedded-resource");
    let keys: Vec<String> = o.keys().cloned().collect();
    for k in keys {
        let child_path = format!("{path}.{k}");
        if let Some(sub) = props.and_then(|p| p.get(&k)) {
            if o[&k].is_null() && !flag(sub, "nullable") {
                o.remove(&k);
                continue;
            }
            walk(sub, o.get_mut(&k).unwrap(), &child_path, out);
        } else if let Some(a) = addl.filter(|a| a.is_object()) {
            walk(a, o.get_mut(&k).unwrap(), &format!("{path}[{k}]"), out);
        } else if preserve
            || addl.and_then(Value::as_bool) == Some(true)
            || (embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        {
            // kept as is
        } else {
            out.unknown.push(child_path);
            o.remove(&k);
        }
    }
    if let Some(p) = props {
        for (k, sub) in p {
            if !o.contains_key(k)
                && let Some(d) = sub.get("default")
            {
                let mut d = d.clone();
                walk(sub, &mut d, &format!("{path}.{k}"), out);
                o.insert(k.clone(), d);
            }
        }
    }
    for r in required(s) {
        if !o.contains_key(r) {
            out.causes.push(Cause::new("FieldValueRequired", &format!("{path}.{r}"), "Required value"));
        }
    }
    let n = o.len() as u64;
    if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
        && n > max
    {
        out.causes.push(Cause::new("FieldValueTooMany", path, format!("Too many: {n}: must have at most {max} items")));
    }
    if let Some(min) = s.get("minProperties").and_then(Value::as_u64)
        && n < min
    {
        out.causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {n}: {path} in body should have at least {min} properties"),
        ));
    }
}
