//! Environment overrides: `RAGWAY__SECTION__KEY=value` sets `[section] key = value`
//! on top of the file, so a container can change one setting without a new file.

use std::collections::BTreeMap;

use toml::{Table, Value};

pub const PREFIX: &str = "RAGWAY__";

/// A snapshot of the environment variables config loading reads: overrides and the
/// secrets that `*_env` keys name. Tests build their own instead of touching the
/// process environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Applies every `RAGWAY__…` variable to the parsed file. Returns the keys that
    /// could not be applied (e.g. a path through a non-table value).
    pub fn apply_overrides(&self, table: &mut Table) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (name, raw) in &self.vars {
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            if path.iter().any(String::is_empty) {
                problems.push((name.clone(), "empty key segment".to_owned()));
                continue;
            }
            if let Err(message) = set_path(table, &path, parse_value(raw)) {
                problems.push((path.join("."), format!("{message} (from {name})")));
            }
        }
        problems
    }
}

/// A value is read as TOML when it parses as one (`30`, `true`, `["a:b"]`), and as a
/// plain string otherwise (`127.0.0.1:8080`, a URL).
fn parse_value(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty path")?;
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{key}` is not a table"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_nest_and_parse_types() {
        let mut table: Table = toml::from_str("[server]\nlisten = \"127.0.0.1:1\"").unwrap();
        let env = Env::from_pairs([
            ("RAGWAY__SERVER__LISTEN", "0.0.0.0:9000"),
            ("RAGWAY__SERVER__MAX_BODY_BYTES", "1024"),
            ("RAGWAY__MODELS__CHAT__TARGETS", r#"["a:b", "c:d"]"#),
            ("UNRELATED", "x"),
        ]);
        assert!(env.apply_overrides(&mut table).is_empty());
        assert_eq!(table["server"]["listen"].as_str(), Some("0.0.0.0:9000"));
        assert_eq!(table["server"]["max_body_bytes"].as_integer(), Some(1024));
        assert_eq!(
            table["models"]["chat"]["targets"].as_array().map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn an_override_through_a_scalar_is_reported() {
        let mut table: Table = toml::from_str("server = 1").unwrap();
        let env = Env::from_pairs([("RAGWAY__SERVER__LISTEN", "x")]);
        let problems = env.apply_overrides(&mut table);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "server.listen");
    }
}
