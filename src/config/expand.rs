//! `${VAR}` expansion in every string of the configuration tree.
//!
//! Secrets (API keys, Redis passwords) stay out of the file: `headers:
//! { x-api-key: "${ALPHA_KEY}" }`. `$${` writes a literal `${`. A reference to an
//! unset variable is an error naming the field, not a silent empty string.

use serde_yaml_ng::Value;

/// Where `${VAR}` values come from: the process environment in `main`, a map in tests.
pub trait Lookup {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Lookup for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Lookup for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// Expands every string below `value`; on error returns `(field path, message)`.
pub fn expand_tree(value: &mut Value, lookup: &dyn Lookup) -> Result<(), (String, String)> {
    walk(value, &mut Vec::new(), lookup)
}

fn walk(value: &mut Value, path: &mut Vec<String>, lookup: &dyn Lookup) -> Result<(), (String, String)> {
    match value {
        Value::String(s) => {
            *s = expand(s, lookup).map_err(|m| (path.join("."), m))?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                walk(item, path, lookup)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push(key.as_str().unwrap_or("?").to_owned());
                walk(item, path, lookup)?;
                path.pop();
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, path, lookup)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Expands `${NAME}` references in one string.
pub fn expand(text: &str, lookup: &dyn Lookup) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{text}`"))?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{name}}}` is not a valid variable name"));
            }
            let value = lookup
                .get(name)
                .ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([("KEY".to_owned(), "s3cret".to_owned())])
    }

    #[test]
    fn expands_known_variables() {
        assert_eq!(expand("Bearer ${KEY}!", &env()).as_deref(), Ok("Bearer s3cret!"));
        assert_eq!(expand("no vars $5", &env()).as_deref(), Ok("no vars $5"));
        assert_eq!(expand("$${KEY}", &env()).as_deref(), Ok("${KEY}"));
    }

    #[test]
    fn rejects_unset_and_malformed() {
        assert!(expand("${NOPE}", &env()).unwrap_err().contains("NOPE"));
        assert!(expand("${KEY", &env()).is_err());
        assert!(expand("${A-B}", &env()).is_err());
    }
}
