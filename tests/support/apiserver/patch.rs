//! Patch algorithms: JSON merge patch (RFC 7386), an approximate strategic merge patch,
//! JSON patch (RFC 6902) and the merge used for server-side apply.

use serde_json::{Map, Value};

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Merge key of a list item, if the list is one we merge by key.
fn item_key(v: &Value) -> Option<&str> {
    v.get("name")?.as_str()
}

/// A list of objects that all carry a `name`: merged by name (containers, env, volumes, …).
fn keyed_by_name(a: &[Value]) -> bool {
    !a.is_empty() && a.iter().all(|i| item_key(i).is_some())
}

/// Strategic merge patch, approximated: merge patch, except that lists whose items all have
/// a `name` are merged item by item (by name). `$patch` directives are not supported.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch) {
        (Some(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                match (t.get_mut(k), v) {
                    (Some(Value::Array(ta)), Value::Array(pa))
                        if keyed_by_name(pa) && ta.iter().all(|i| item_key(i).is_some()) =>
                    {
                        for item in pa {
                            let key = item_key(item).unwrap().to_string();
                            match ta.iter_mut().find(|i| item_key(i) == Some(&key)) {
                                Some(existing) => strategic_merge_patch(existing, item),
                                None => ta.push(item.clone()),
                            }
                        }
                    }
                    (Some(tv), _) => strategic_merge_patch(tv, v),
                    (None, _) => {
                        let mut nv = Value::Null;
                        merge_patch(&mut nv, v);
                        t.insert(k.clone(), nv);
                    }
                }
            }
        }
        (_, Value::Object(_)) => {
            *target = Value::Null;
            merge_patch(target, patch);
        }
        _ => *target = patch.clone(),
    }
}

/// Server-side apply merge: maps merge recursively, lists of objects keyed by `name` merge by
/// name, other lists (and scalars) are replaced by the applied value.
pub fn merge_apply(base: &mut Value, cfg: &Value) {
    match (base, cfg) {
        (Value::Object(b), Value::Object(c)) => {
            for (k, v) in c {
                if v.is_null() {
                    b.remove(k);
                    continue;
                }
                match b.get_mut(k) {
                    Some(bv) => merge_apply(bv, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(c)) if keyed_by_name(c) && b.iter().all(|i| item_key(i).is_some()) => {
            for item in c {
                let key = item_key(item).unwrap().to_string();
                match b.iter_mut().find(|i| item_key(i) == Some(&key)) {
                    Some(existing) => merge_apply(existing, item),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, c) => *b = c.clone(),
    }
}

/// Remove from `base` what `prev` (this manager's last applied configuration) set but `new`
/// no longer sets, unless another manager's configuration (`others`) still sets it.
pub fn remove_unapplied(base: &mut Value, prev: &Value, new: &Value, others: &[&Value]) {
    match (base, prev) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, pv) in p {
                let nv = new.get(k);
                let ov: Vec<&Value> = others.iter().filter_map(|o| o.get(k)).collect();
                match nv {
                    None => {
                        if ov.is_empty() {
                            b.remove(k);
                        } else if let Some(bv) = b.get_mut(k) {
                            // Partly owned by others: remove only what nobody applies.
                            let empty = match pv {
                                Value::Object(_) => Value::Object(Map::new()),
                                Value::Array(_) => Value::Array(vec![]),
                                _ => continue,
                            };
                            remove_unapplied(bv, pv, &empty, &ov);
                        }
                    }
                    Some(nv) => {
                        if let Some(bv) = b.get_mut(k) {
                            remove_unapplied(bv, pv, nv, &ov);
                        }
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p)) if keyed_by_name(p) => {
            let names_in = |v: &Value| -> Vec<String> {
                v.as_array()
                    .map(|a| a.iter().filter_map(|i| item_key(i).map(String::from)).collect())
                    .unwrap_or_default()
            };
            let new_names = names_in(new);
            let other_names: Vec<String> = others.iter().flat_map(|o| names_in(o)).collect();
            for pitem in p {
                let key = item_key(pitem).unwrap();
                let in_new = new_names.iter().any(|n| n == key);
                let in_other = other_names.iter().any(|n| n == key);
                if !in_new && !in_other {
                    b.retain(|i| item_key(i) != Some(key));
                } else if let Some(bitem) = b.iter_mut().find(|i| item_key(i) == Some(key)) {
                    let find = |v: &Value| -> Option<Value> {
                        v.as_array()?.iter().find(|i| item_key(i) == Some(key)).cloned()
                    };
                    let nitem = find(new).unwrap_or(Value::Object(Map::new()));
                    let oitems: Vec<Value> = others.iter().filter_map(|o| find(o)).collect();
                    let orefs: Vec<&Value> = oitems.iter().collect();
                    remove_unapplied(bitem, pitem, &nitem, &orefs);
                }
            }
        }
        _ => {}
    }
}

pub struct PatchError {
    pub message: String,
    pub test_failed: bool,
}

fn perr(message: impl Into<String>) -> PatchError {
    PatchError { message: message.into(), test_failed: false }
}

fn parse_pointer(p: &str) -> Result<Vec<String>, PatchError> {
    if p.is_empty() {
        return Ok(vec![]);
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(perr(format!("invalid JSON pointer {p:?}")));
    };
    Ok(rest.split('/').map(|s| s.replace("~1", "/").replace("~0", "~")).collect())
}

fn get_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(seg)?,
            Value::Array(a) => a.get_mut(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove_at(v: &mut Value, path: &[String]) -> Result<Value, PatchError> {
    let (last, parent) = path.split_last().ok_or_else(|| perr("cannot remove the root"))?;
    let missing = || perr(format!("path /{} does not exist", path.join("/")));
    match get_mut(v, parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i < a.len() { Ok(a.remove(i)) } else { Err(missing()) }
        }
        _ => Err(missing()),
    }
}

fn add_at(v: &mut Value, path: &[String], value: Value, replace: bool) -> Result<(), PatchError> {
    let Some((last, parent)) = path.split_last() else {
        *v = value;
        return Ok(());
    };
    let missing = || perr(format!("path /{} does not exist", parent.join("/")));
    match get_mut(v, parent).ok_or_else(missing)? {
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(perr(format!("path /{} does not exist", path.join("/"))));
            }
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
            } else {
                let i: usize = last.parse().map_err(|_| perr(format!("invalid array index {last}")))?;
                if replace {
                    *a.get_mut(i).ok_or_else(missing)? = value;
                } else if i <= a.len() {
                    a.insert(i, value);
                } else {
                    return Err(perr(format!("array index {i} out of bounds")));
                }
            }
        }
        _ => return Err(missing()),
    }
    Ok(())
}

/// RFC 6902. As in the Kubernetes API server, `test` with `null` passes for a missing path.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), PatchError> {
    let ops = ops.as_array().ok_or_else(|| perr("json patch must be an array of operations"))?;
    let mut work = target.clone();
    for op in ops {
        let kind = op["op"].as_str().unwrap_or_default();
        let path = parse_pointer(op["path"].as_str().unwrap_or_default())?;
        match kind {
            "add" => add_at(&mut work, &path, op["value"].clone(), false)?,
            "replace" => add_at(&mut work, &path, op["value"].clone(), true)?,
            "remove" => {
                remove_at(&mut work, &path)?;
            }
            "move" => {
                let from = parse_pointer(op["from"].as_str().unwrap_or_default())?;
                let v = remove_at(&mut work, &from)?;
                add_at(&mut work, &path, v, false)?;
            }
            "copy" => {
                let from = parse_pointer(op["from"].as_str().unwrap_or_default())?;
                let v = get_mut(&mut work, &from).ok_or_else(|| perr("copy: from path does not exist"))?.clone();
                add_at(&mut work, &path, v, false)?;
            }
            "test" => {
                let expected = &op["value"];
                let actual = get_mut(&mut work, &path).map(|v| v.clone());
                let ok = match actual {
                    Some(a) => &a == expected,
                    None => expected.is_null(),
                };
                if !ok {
                    return Err(PatchError {
                        message: format!(
                            "the server rejected our request due to an error in our request: testing value /{} failed: test failed",
                            path.join("/")
                        ),
                        test_failed: true,
                    });
                }
            }
            other => return Err(perr(format!("unknown json patch op {other:?}"))),
        }
    }
    *target = work;
    Ok(())
}
