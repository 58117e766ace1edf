//! Layered sources: TOML files and environment variables.
//!
//! Both are parsed completely into leaves, each remembering where it came from (file and
//! line, or variable name), before anything is applied; a malformed source is reported
//! with its source, key and line and changes nothing.
//!
//! **TOML**: top-level keys name namespaces and must be tables; everything below is
//! flattened into leaves exactly like a value given to `set`.
//!
//! ```toml
//! [app]
//! db.pool.size = 10        # app:db.pool.size
//! [app.http]
//! port = 8080              # app:http.port
//! ```
//!
//! **Environment**: a variable `FOUNDATION_<NAMESPACE>__<PATH>` with `__` between path
//! segments sets one leaf; names are lower-cased (`FOUNDATION_APP__DB__POOL_SIZE` sets
//! `app:db.pool_size`). Variables that start with the prefix but contain no `__` are not
//! configuration variables and are ignored. The value is read as a TOML value (`10`,
//! `true`, `1.5`, `[1, 2]`, `"quoted"`); anything else is taken as a plain string, except
//! that a value opening with `[`, `{`, `"` or `'` must parse.

use std::collections::BTreeMap;

use rmpv::Value;

use super::path::check_segment;
use super::value::{self, Leaf};
use super::Limits;
use crate::error::{Error, Result};

/// A leaf read from a source, with where it came from.
#[derive(Debug)]
pub(crate) struct SourcedLeaf {
    pub leaf: Leaf,
    /// 1-based line for file sources.
    pub line: Option<usize>,
    /// The variable name for environment sources.
    pub origin: Option<String>,
}

/// Leaves by namespace.
pub(crate) type Parsed = BTreeMap<String, Vec<SourcedLeaf>>;

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn source_error(
    source: &str,
    key: Option<String>,
    line: Option<usize>,
    reason: impl Into<String>,
) -> Error {
    Error::Source {
        source_name: source.to_string(),
        key,
        line,
        reason: reason.into(),
    }
}

/// Parses a TOML document into leaves per namespace.
pub(crate) fn parse_toml(source: &str, text: &str, limits: &Limits) -> Result<Parsed> {
    let doc = toml_edit::Document::parse(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        source_error(source, None, line, e.message().trim().to_string())
    })?;
    let mut out = Parsed::new();
    for (ns, item) in doc.as_table().iter() {
        let line = item.span().map(|s| line_of(text, s.start));
        check_segment(ns, limits.max_segment_len).map_err(|r| {
            source_error(
                source,
                Some(ns.to_string()),
                line,
                format!("bad namespace name: {r}"),
            )
        })?;
        let leaves = out.entry(ns.to_string()).or_default();
        match item {
            toml_edit::Item::Table(t) => walk_table(
                source,
                text,
                ns,
                "",
                t.iter().map(|(k, v)| (k, ItemRef::Item(v))),
                limits,
                leaves,
            )?,
            toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => walk_table(
                source,
                text,
                ns,
                "",
                t.iter().map(|(k, v)| (k, ItemRef::Value(v))),
                limits,
                leaves,
            )?,
            _ => {
                return Err(source_error(
                    source,
                    Some(ns.to_string()),
                    line,
                    "top-level keys name namespaces and must be tables",
                ))
            }
        }
    }
    Ok(out)
}

/// Borrowed view so that tables and inline tables walk the same way.
enum ItemRef<'a> {
    Item(&'a toml_edit::Item),
    Value(&'a toml_edit::Value),
}

#[allow(clippy::too_many_arguments)]
fn walk_table<'a>(
    source: &str,
    text: &str,
    ns: &str,
    prefix: &str,
    entries: impl Iterator<Item = (&'a str, ItemRef<'a>)>,
    limits: &Limits,
    out: &mut Vec<SourcedLeaf>,
) -> Result<()> {
    // Collected so that the recursion below is not generic over ever-deeper iterators.
    let entries: Vec<(&'a str, ItemRef<'a>)> = entries.collect();
    walk_entries(source, text, ns, prefix, entries, limits, out)
}

#[allow(clippy::too_many_arguments)]
fn walk_entries<'a>(
    source: &str,
    text: &str,
    ns: &str,
    prefix: &str,
    entries: Vec<(&'a str, ItemRef<'a>)>,
    limits: &Limits,
    out: &mut Vec<SourcedLeaf>,
) -> Result<()> {
    for (key, item) in entries {
        let path = super::path::join(prefix, key);
        let span = match &item {
            ItemRef::Item(i) => i.span(),
            ItemRef::Value(v) => v.span(),
        };
        let line = span.map(|s| line_of(text, s.start));
        let key_name = format!("{ns}:{path}");
        let err = |e: Error| source_error(source, Some(key_name.clone()), line, e.to_string());
        check_segment(key, limits.max_segment_len).map_err(|reason| {
            err(Error::InvalidPath {
                path: path.clone(),
                reason,
            })
        })?;
        match item {
            ItemRef::Item(toml_edit::Item::Table(t)) => {
                let children = t.iter().map(|(k, v)| (k, ItemRef::Item(v))).collect();
                walk_entries(source, text, ns, &path, children, limits, out)?
            }
            ItemRef::Item(toml_edit::Item::Value(toml_edit::Value::InlineTable(t)))
            | ItemRef::Value(toml_edit::Value::InlineTable(t))
                if !t.is_empty() =>
            {
                let children = t.iter().map(|(k, v)| (k, ItemRef::Value(v))).collect();
                walk_entries(source, text, ns, &path, children, limits, out)?
            }
            ItemRef::Item(toml_edit::Item::Value(v)) | ItemRef::Value(v) => {
                let leaf = value::leaf(path.clone(), to_value(v), limits).map_err(err)?;
                check_depth(&path, limits).map_err(err)?;
                out.push(SourcedLeaf {
                    leaf,
                    line,
                    origin: None,
                });
            }
            ItemRef::Item(toml_edit::Item::ArrayOfTables(a)) => {
                let v = Value::Array(a.iter().map(|t| table_value(t.iter())).collect());
                let leaf = value::leaf(path.clone(), v, limits).map_err(err)?;
                check_depth(&path, limits).map_err(err)?;
                out.push(SourcedLeaf {
                    leaf,
                    line,
                    origin: None,
                });
            }
            ItemRef::Item(toml_edit::Item::None) => {}
        }
    }
    Ok(())
}

fn check_depth(path: &str, limits: &Limits) -> Result<()> {
    super::path::parse(path, limits).map(|_| ())
}

fn table_value<'a>(entries: impl Iterator<Item = (&'a str, &'a toml_edit::Item)>) -> Value {
    Value::Map(
        entries
            .filter_map(|(k, item)| {
                let v = match item {
                    toml_edit::Item::Value(v) => to_value(v),
                    toml_edit::Item::Table(t) => table_value(t.iter()),
                    toml_edit::Item::ArrayOfTables(a) => {
                        Value::Array(a.iter().map(|t| table_value(t.iter())).collect())
                    }
                    toml_edit::Item::None => return None,
                };
                Some((Value::from(k), v))
            })
            .collect(),
    )
}

/// Converts a TOML value to a MessagePack value. Datetimes become their TOML text.
fn to_value(v: &toml_edit::Value) -> Value {
    match v {
        toml_edit::Value::String(s) => Value::from(s.value().as_str()),
        toml_edit::Value::Integer(i) => Value::from(*i.value()),
        toml_edit::Value::Float(f) => Value::from(*f.value()),
        toml_edit::Value::Boolean(b) => Value::from(*b.value()),
        toml_edit::Value::Datetime(d) => Value::from(d.value().to_string()),
        toml_edit::Value::Array(a) => Value::Array(a.iter().map(to_value).collect()),
        toml_edit::Value::InlineTable(t) => Value::Map(
            t.iter()
                .map(|(k, v)| (Value::from(k), to_value(v)))
                .collect(),
        ),
    }
}

/// Parses configuration variables (`FOUNDATION_<NAMESPACE>__<PATH>`) into leaves per
/// namespace. `prefix` is `FOUNDATION_` unless configured otherwise.
pub(crate) fn parse_env<I>(prefix: &str, vars: I, limits: &Limits) -> Result<Parsed>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut out = Parsed::new();
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let source = format!("env {name}");
        let mut parts = rest.split("__").map(str::to_ascii_lowercase);
        let ns = parts.next().unwrap_or_default();
        let path = parts.collect::<Vec<_>>().join(".");
        let key = format!("{ns}:{path}");
        check_segment(&ns, limits.max_segment_len).map_err(|r| {
            source_error(
                &source,
                Some(key.clone()),
                None,
                format!("bad namespace name: {r}"),
            )
        })?;
        super::path::parse(&path, limits)
            .map_err(|e| source_error(&source, Some(key.clone()), None, e.to_string()))?;
        let value =
            env_value(&raw).map_err(|r| source_error(&source, Some(key.clone()), None, r))?;
        let leaf = value::leaf(path, value, limits)
            .map_err(|e| source_error(&source, Some(key.clone()), None, e.to_string()))?;
        out.entry(ns).or_default().push(SourcedLeaf {
            leaf,
            line: None,
            origin: Some(name),
        });
    }
    Ok(out)
}

fn env_value(raw: &str) -> std::result::Result<Value, String> {
    let trimmed = raw.trim();
    match trimmed.parse::<toml_edit::Value>() {
        Ok(v) => Ok(to_value(&v)),
        Err(e) if trimmed.starts_with(['[', '{', '"', '\'']) => Err(format!(
            "`{raw}` is not a valid TOML value: {}",
            e.to_string().trim()
        )),
        Err(_) => Ok(Value::from(raw)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_leaves_carry_lines() {
        let text = "[app]\ndb.pool.size = 10\n\n[app.http]\nport = 8080\nhosts = [\"a\", \"b\"]\n";
        let p = parse_toml("file t.toml", text, &Limits::default()).unwrap();
        let leaves: Vec<(String, Option<usize>)> = p["app"]
            .iter()
            .map(|l| (l.leaf.path.to_string(), l.line))
            .collect();
        assert_eq!(
            leaves,
            vec![
                ("db.pool.size".to_string(), Some(2)),
                ("http.port".to_string(), Some(5)),
                ("http.hosts".to_string(), Some(6)),
            ]
        );
    }

    #[test]
    fn malformed_toml_names_the_line() {
        let err = parse_toml(
            "file t.toml",
            "[app]\nport = 80\nbad = = 1\n",
            &Limits::default(),
        )
        .unwrap_err();
        match err {
            Error::Source {
                source_name, line, ..
            } => {
                assert_eq!(source_name, "file t.toml");
                assert_eq!(line, Some(3));
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = parse_toml("file t.toml", "port = 80\n", &Limits::default()).unwrap_err();
        assert!(matches!(err, Error::Source { key: Some(k), line: Some(1), .. } if k == "port"));
    }

    #[test]
    fn env_names_and_values() {
        let vars = vec![
            (
                "FOUNDATION_APP__DB__POOL_SIZE".to_string(),
                "12".to_string(),
            ),
            (
                "FOUNDATION_APP__NAME".to_string(),
                "hello world".to_string(),
            ),
            ("FOUNDATION_APP__LIST".to_string(), "[1, 2]".to_string()),
            ("FOUNDATION_LOG".to_string(), "debug".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let p = parse_env("FOUNDATION_", vars, &Limits::default()).unwrap();
        let app: Vec<(String, Value)> = p["app"]
            .iter()
            .map(|l| (l.leaf.path.to_string(), l.leaf.value.clone()))
            .collect();
        assert_eq!(app[0], ("db.pool_size".to_string(), Value::from(12)));
        assert_eq!(app[1], ("name".to_string(), Value::from("hello world")));
        assert_eq!(app[2].1, Value::Array(vec![Value::from(1), Value::from(2)]));
        assert_eq!(p.len(), 1);

        let bad = vec![("FOUNDATION_APP__LIST".to_string(), "[1, 2".to_string())];
        let err = parse_env("FOUNDATION_", bad, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, Error::Source { ref source_name, .. } if source_name == "env FOUNDATION_APP__LIST"),
            "{err}"
        );
        let bad = vec![("FOUNDATION_APP____X".to_string(), "1".to_string())];
        assert!(parse_env("FOUNDATION_", bad, &Limits::default()).is_err());
    }
}
