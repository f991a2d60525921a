//! Compose variable interpolation and `.env`/`env_file` parsing, as `docker compose` does them:
//! `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`,
//! `${VAR:+replacement}`, `${VAR+replacement}` (defaults may nest), `$$` for a literal `$`.
//! Variables come from the process environment first, then the project's `.env` file.

use std::collections::BTreeMap;

/// Where interpolated variables come from.
#[derive(Clone, Debug, Default)]
pub struct Variables {
    /// The process environment (wins, as in compose).
    pub process: BTreeMap<String, String>,
    /// The project's `.env` file.
    pub dotenv: BTreeMap<String, String>,
}

impl Variables {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.process.get(name).or_else(|| self.dotenv.get(name)).map(String::as_str)
    }
}

/// Interpolates `text`; the error says which variable is required and why.
pub fn interpolate(text: &str, vars: &Variables) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = closing_brace(r).ok_or_else(|| format!("unclosed \"${{\" in {text:?}"))?;
            out.push_str(&braced(&r[..end], vars)?);
            rest = &r[end + 1..];
        } else {
            let len = rest.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
            if len == 0 {
                // A lone `$` stays, as in compose.
                out.push('$');
            } else {
                out.push_str(vars.get(&rest[..len]).unwrap_or_default());
                rest = &rest[len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Index of the `}` that closes a `${`, skipping nested `${…}`.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0;
    let bytes = s.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'{' if i > 0 && bytes[i - 1] == b'$' => depth += 1,
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn braced(inner: &str, vars: &Variables) -> Result<String, String> {
    let len = inner.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
    let (name, op) = inner.split_at(len);
    if name.is_empty() {
        return Err(format!("\"${{{inner}}}\" names no variable"));
    }
    let value = vars.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let word = |w: &str| interpolate(w, vars);
    match op {
        "" => Ok(value.unwrap_or_default().to_string()),
        _ if op.starts_with(":-") => {
            if set_nonempty {
                Ok(value.unwrap().into())
            } else {
                word(&op[2..])
            }
        }
        _ if op.starts_with('-') => match value {
            Some(v) => Ok(v.into()),
            None => word(&op[1..]),
        },
        _ if op.starts_with(":?") => {
            if set_nonempty {
                Ok(value.unwrap().into())
            } else {
                Err(format!("required variable {name} is missing a value: {}", word(&op[2..])?))
            }
        }
        _ if op.starts_with('?') => match value {
            Some(v) => Ok(v.into()),
            None => Err(format!("required variable {name} is missing a value: {}", word(&op[1..])?)),
        },
        _ if op.starts_with(":+") => {
            if set_nonempty {
                word(&op[2..])
            } else {
                Ok(String::new())
            }
        }
        _ if op.starts_with('+') => {
            if value.is_some() {
                word(&op[1..])
            } else {
                Ok(String::new())
            }
        }
        _ => Err(format!("\"${{{inner}}}\": unsupported substitution (use :-, -, :?, ?, :+ or +)")),
    }
}

/// Parses a `.env` or `env_file` file: `KEY=VALUE` lines, `#` comments, an optional `export `,
/// single quotes literal, double quotes with `\n` escapes, unquoted values cut at ` #`.
/// Values in double quotes or unquoted are interpolated with `vars` and earlier keys. Returns
/// the pairs in order, or `(line, message)`.
pub fn parse_env_file(text: &str, vars: &Variables) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            // A bare name takes its value from the environment (compose's behaviour).
            if let Some(v) = vars.get(line) {
                out.push((line.to_string(), v.to_string()));
            }
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
            return Err((i + 1, format!("{key:?} is not a variable name")));
        }
        let value = value.trim_start();
        let mut scope = vars.clone();
        scope.dotenv.extend(out.iter().cloned());
        let value = if let Some(v) = value.strip_prefix('\'') {
            v.rsplit_once('\'').map(|(v, _)| v.to_string()).ok_or((i + 1, "unclosed single quote".to_string()))?
        } else if let Some(v) = value.strip_prefix('"') {
            let v = v.rsplit_once('"').map(|(v, _)| v).ok_or((i + 1, "unclosed double quote".to_string()))?;
            interpolate(&v.replace("\\n", "\n").replace("\\\"", "\""), &scope).map_err(|e| (i + 1, e))?
        } else {
            let v = value.split(" #").next().unwrap_or_default().trim_end();
            interpolate(v, &scope).map_err(|e| (i + 1, e))?
        };
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Variables {
        Variables {
            process: BTreeMap::from([("TAG".into(), "2.1".into()), ("EMPTY".into(), String::new())]),
            dotenv: BTreeMap::from([("TAG".into(), "ignored".into()), ("DB_USER".into(), "shop".into())]),
        }
    }

    #[test]
    fn substitutions_follow_compose() {
        let v = vars();
        let i = |s: &str| interpolate(s, &v);
        assert_eq!(i("app:${TAG}").unwrap(), "app:2.1", "the process environment wins over .env");
        assert_eq!(i("$DB_USER@db").unwrap(), "shop@db");
        assert_eq!(i("${MISSING:-8080}").unwrap(), "8080");
        assert_eq!(i("${EMPTY:-x}|${EMPTY-x}").unwrap(), "x|");
        assert_eq!(i("${MISSING:-${DB_USER:-none}}").unwrap(), "shop", "defaults nest");
        assert_eq!(i("${TAG:+set}|${MISSING:+set}").unwrap(), "set|");
        assert_eq!(i("$$HOME and 5$").unwrap(), "$HOME and 5$");
        assert_eq!(i("${MISSING}").unwrap(), "");
        let e = i("${SECRET_KEY:?set SECRET_KEY in .env}").unwrap_err();
        assert_eq!(e, "required variable SECRET_KEY is missing a value: set SECRET_KEY in .env");
        assert!(i("${TAG").unwrap_err().contains("unclosed"));
        assert!(i("${TAG/x/y}").unwrap_err().contains("unsupported substitution"));
    }

    #[test]
    fn env_files_parse_like_compose() {
        let text = "# comment\nexport A=1\nB = 'single $A'\nC=\"double $A\\n\"\nD=plain ${B} # note\nDB_USER\n";
        let pairs = parse_env_file(text, &vars()).unwrap();
        assert_eq!(
            pairs,
            [
                ("A".to_string(), "1".to_string()),
                ("B".into(), "single $A".into()),
                ("C".into(), "double 1\n".into()),
                ("D".into(), "plain single $A".into()),
                ("DB_USER".into(), "shop".into()),
            ]
        );
        assert_eq!(parse_env_file("ok=1\n=2\n", &vars()).unwrap_err().0, 2);
    }
}
