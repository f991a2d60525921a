//! Validation of a custom resource against its CRD's OpenAPI schema and CEL rules, as the API
//! server does it, so that `berth render` rejects exactly what a cluster would reject (plus
//! unknown fields, which the API server would silently prune and a user almost always
//! misspelled).

use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `spec.autoscaling.minReplicas`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The openAPIV3Schema of the CRD's first version, as JSON.
pub fn crd_schema(crd: &CustomResourceDefinition) -> Value {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).expect("schema serializes"))
        .unwrap_or(Value::Null)
}

/// Checks `object` (a whole custom resource) against `schema`: structure first, and CEL rules
/// only when the structure is sound (rules assume well-typed input, as in the API server).
pub fn validate(schema: &Value, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    // Only spec is user input; metadata is checked by the API server's own rules.
    if let (Some(spec_schema), Some(spec)) = (schema.pointer("/properties/spec"), object.get("spec")) {
        check(spec_schema, spec, "spec", &mut errors);
    } else if object.get("spec").is_none() {
        errors.push(FieldError::new("spec", "is required"));
    }
    if errors.is_empty() {
        let mut spec_only = object.clone();
        if let Some(map) = spec_only.as_object_mut() {
            map.remove("status");
        }
        if let Err(cel) = kube::core::cel::Validator::new().validate(schema, &spec_only, None) {
            for e in cel.into_vec() {
                let field = e.field_path.trim_start_matches('.').to_string();
                errors.push(FieldError::new(if field.is_empty() { "spec".into() } else { field }, e.message));
            }
        }
    }
    errors
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

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let flag = |k: &str| schema.get(k).and_then(Value::as_bool).unwrap_or(false);
    if value.is_null() {
        if !flag("nullable") {
            errors.push(FieldError::new(path, "must not be null"));
        }
        return;
    }
    if flag("x-kubernetes-int-or-string") {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            errors.push(FieldError::new(
                path,
                format!("must be an integer or a string like \"25%\", not {}", type_name(value)),
            ));
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            errors.push(FieldError::new(
                path,
                format!("must be {} {expected}, not {actual} ({value})", article(expected)),
            ));
            return;
        }
    }
    if let Some(choices) = schema.get("enum").and_then(Value::as_array)
        && !choices.contains(value)
    {
        let list: Vec<String> = choices.iter().map(|c| c.to_string()).collect();
        errors.push(FieldError::new(path, format!("{value} is not allowed; use one of {}", list.join(", "))));
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            for req in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if let Some(req) = req.as_str()
                    && !map.contains_key(req)
                {
                    errors.push(FieldError::new(format!("{path}.{req}"), "is required"));
                }
            }
            let additional = schema.get("additionalProperties");
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                if let Some(prop) = props.and_then(|p| p.get(key)) {
                    check(prop, child, &child_path, errors);
                } else if let Some(add) = additional.filter(|a| a.is_object()) {
                    check(add, child, &child_path, errors);
                } else if !flag("x-kubernetes-preserve-unknown-fields") && props.is_some() {
                    let known: Vec<&String> = props.map(|p| p.keys().collect()).unwrap_or_default();
                    errors.push(FieldError::new(
                        child_path,
                        format!(
                            "unknown field; known fields here are {}",
                            known.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
        Value::Array(items) => {
            bound(schema, "minItems", "maxItems", items.len(), "items", path, errors);
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::String(s) => {
            bound(schema, "minLength", "maxLength", s.chars().count(), "characters", path, errors);
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && let Ok(re) = regex::Regex::new(pattern)
                && !re.is_match(s)
            {
                errors.push(FieldError::new(path, format!("{s:?} does not match the pattern {pattern}")));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                errors.push(FieldError::new(path, format!("{n} is below the minimum of {min}")));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                errors.push(FieldError::new(path, format!("{n} is above the maximum of {max}")));
            }
        }
        _ => {}
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

fn bound(
    schema: &Value,
    min_key: &str,
    max_key: &str,
    len: usize,
    unit: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Some(min) = schema.get(min_key).and_then(Value::as_u64)
        && (len as u64) < min
    {
        errors.push(FieldError::new(path, format!("needs at least {min} {unit}, has {len}")));
    }
    if let Some(max) = schema.get(max_key).and_then(Value::as_u64)
        && (len as u64) > max
    {
        errors.push(FieldError::new(path, format!("allows at most {max} {unit}, has {len}")));
    }
}
