//! Configuration paths: dot-separated segments such as `db.pool.size`.

use std::sync::Arc;

use super::Limits;
use crate::error::{Error, Limit, Result};

/// Checks one path segment (or namespace name): non-empty, ASCII letters, digits, `_`
/// or `-`, at most `max_len` bytes.
pub(crate) fn check_segment(segment: &str, max_len: usize) -> std::result::Result<(), String> {
    if segment.is_empty() {
        return Err("empty segment".into());
    }
    if segment.len() > max_len {
        return Err(format!(
            "segment of {} bytes exceeds {max_len}",
            segment.len()
        ));
    }
    if let Some(c) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "character {c:?} not allowed in `{segment}` (use ASCII letters, digits, `_`, `-`)"
        ));
    }
    Ok(())
}

/// Validates a full path against the limits and returns it as a shared string.
pub(crate) fn parse(path: &str, limits: &Limits) -> Result<Arc<str>> {
    let mut depth = 0;
    for segment in path.split('.') {
        depth += 1;
        if segment.len() > limits.max_segment_len {
            return Err(Error::LimitExceeded {
                limit: Limit::SegmentLength,
                max: limits.max_segment_len,
                actual: segment.len(),
                path: path.to_string(),
            });
        }
        check_segment(segment, usize::MAX).map_err(|reason| Error::InvalidPath {
            path: path.to_string(),
            reason,
        })?;
    }
    if depth > limits.max_path_depth {
        return Err(Error::LimitExceeded {
            limit: Limit::PathDepth,
            max: limits.max_path_depth,
            actual: depth,
            path: path.to_string(),
        });
    }
    Ok(Arc::from(path))
}

/// Joins a parent path and a child segment (`""` is the root).
pub(crate) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        let mut s = String::with_capacity(parent.len() + 1 + child.len());
        s.push_str(parent);
        s.push('.');
        s.push_str(child);
        s
    }
}

/// Whether `path` equals `prefix` or lies under it (`db.pool.size` under `db.pool`, but
/// `db.pool2` is not under `db.pool`). The empty prefix covers everything.
pub(crate) fn is_under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix)
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'.'))
}

/// The proper ancestors of a path, nearest first: `a.b.c` → `a.b`, `a`.
pub(crate) fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut end = path.len();
    std::iter::from_fn(move || {
        let idx = path[..end].rfind('.')?;
        end = idx;
        Some(&path[..idx])
    })
}

/// Number of segments of a path.
pub(crate) fn depth(path: &str) -> usize {
    if path.is_empty() {
        0
    } else {
        path.bytes().filter(|b| *b == b'.').count() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let l = Limits::default();
        assert_eq!(&*parse("db.pool.size", &l).unwrap(), "db.pool.size");
        assert!(matches!(parse("", &l), Err(Error::InvalidPath { .. })));
        assert!(matches!(parse("a..b", &l), Err(Error::InvalidPath { .. })));
        assert!(matches!(parse("a.b c", &l), Err(Error::InvalidPath { .. })));
        let deep = vec!["x"; l.max_path_depth + 1].join(".");
        assert!(matches!(
            parse(&deep, &l),
            Err(Error::LimitExceeded {
                limit: Limit::PathDepth,
                ..
            })
        ));
    }

    #[test]
    fn prefixes_respect_segment_boundaries() {
        assert!(is_under("db.pool.size", "db.pool"));
        assert!(is_under("db.pool", "db.pool"));
        assert!(!is_under("db.pool2", "db.pool"));
        assert!(is_under("anything", ""));
        assert_eq!(ancestors("a.b.c").collect::<Vec<_>>(), vec!["a.b", "a"]);
        assert_eq!(ancestors("a").count(), 0);
        assert_eq!(depth("a.b.c"), 3);
    }
}
