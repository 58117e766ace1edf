//! Turning typed values into stored leaves and leaves back into values.
//!
//! A value set at a path is encoded with MessagePack (`rmp-serde`, structs as maps). A map
//! whose keys are all valid path segments is a *table*: it is flattened into one leaf per
//! scalar or array below it, so `set("db", &Db { pool: Pool { size: 10 } })` stores the
//! leaf `db.pool.size`. Every other value (scalars, arrays, empty maps, maps with
//! non-string keys) is one leaf, stored as its encoded bytes.

use std::sync::Arc;

use bytes::Bytes;
use rmpv::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::path::{self, check_segment, join};
use super::Limits;
use crate::budget::Budget;
use crate::error::{Error, Limit, Result};

/// One stored value: its full path, encoded bytes and decoded form (for validators).
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub path: Arc<str>,
    pub raw: Bytes,
    pub value: Value,
}

/// Encodes a serde value into a dynamic MessagePack value (structs become maps).
pub(crate) fn to_value<T: Serialize + ?Sized>(path: &str, value: &T) -> Result<Value> {
    let bytes = rmp_serde::to_vec_named(value).map_err(|e| Error::Encode {
        path: path.to_string(),
        detail: e.to_string(),
    })?;
    decode_value(path, &bytes)
}

/// Decodes exactly one MessagePack value from `bytes`.
///
/// The bytes are walked first ([`check_wire`]), so a reserved marker or a length that
/// claims more than the input holds is an error rather than a silent `nil` or a huge
/// allocation.
pub(crate) fn decode_value(path: &str, bytes: &[u8]) -> Result<Value> {
    check_wire(bytes).map_err(|detail| Error::Encode {
        path: path.to_string(),
        detail: format!("not a MessagePack value: {detail}"),
    })?;
    let mut rd = bytes;
    let v = rmpv::decode::read_value(&mut rd).map_err(|e| Error::Encode {
        path: path.to_string(),
        detail: format!("not a MessagePack value: {e}"),
    })?;
    if !rd.is_empty() {
        return Err(Error::Encode {
            path: path.to_string(),
            detail: format!("{} trailing bytes after the value", rd.len()),
        });
    }
    Ok(v)
}

/// Checks that `buf` holds exactly one well-formed MessagePack value: every marker is
/// defined, and every declared length fits in the bytes that remain. Runs in constant
/// memory whatever the input claims.
pub(crate) fn check_wire(buf: &[u8]) -> std::result::Result<(), String> {
    use rmp::Marker as M;
    let mut rd = buf;
    let mut pending: u64 = 1;
    let take = |rd: &mut &[u8], n: u64| -> std::result::Result<u64, String> {
        let n = usize::try_from(n).map_err(|_| "length overflows".to_string())?;
        if rd.len() < n {
            return Err(format!("value claims {n} bytes, {} remain", rd.len()));
        }
        let (head, tail) = rd.split_at(n);
        *rd = tail;
        Ok(head.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    while pending > 0 {
        pending -= 1;
        let marker =
            rmp::decode::read_marker(&mut rd).map_err(|_| "unexpected end of input".to_string())?;
        match marker {
            M::Reserved => return Err("reserved marker 0xc1".into()),
            M::FixPos(_) | M::FixNeg(_) | M::Null | M::True | M::False => {}
            M::U8 | M::I8 => _ = take(&mut rd, 1)?,
            M::U16 | M::I16 => _ = take(&mut rd, 2)?,
            M::U32 | M::I32 | M::F32 => _ = take(&mut rd, 4)?,
            M::U64 | M::I64 | M::F64 => _ = take(&mut rd, 8)?,
            M::FixStr(n) => _ = take(&mut rd, u64::from(n))?,
            M::Str8 | M::Bin8 => {
                let n = take(&mut rd, 1)?;
                take(&mut rd, n)?;
            }
            M::Str16 | M::Bin16 => {
                let n = take(&mut rd, 2)?;
                take(&mut rd, n)?;
            }
            M::Str32 | M::Bin32 => {
                let n = take(&mut rd, 4)?;
                take(&mut rd, n)?;
            }
            M::FixArray(n) => pending += u64::from(n),
            M::Array16 => pending += take(&mut rd, 2)?,
            M::Array32 => pending += take(&mut rd, 4)?,
            M::FixMap(n) => pending += 2 * u64::from(n),
            M::Map16 => pending += 2 * take(&mut rd, 2)?,
            M::Map32 => pending += 2 * take(&mut rd, 4)?,
            M::FixExt1 => _ = take(&mut rd, 2)?,
            M::FixExt2 => _ = take(&mut rd, 3)?,
            M::FixExt4 => _ = take(&mut rd, 5)?,
            M::FixExt8 => _ = take(&mut rd, 9)?,
            M::FixExt16 => _ = take(&mut rd, 17)?,
            M::Ext8 => {
                let n = take(&mut rd, 1)?;
                take(&mut rd, n + 1)?;
            }
            M::Ext16 => {
                let n = take(&mut rd, 2)?;
                take(&mut rd, n + 1)?;
            }
            M::Ext32 => {
                let n = take(&mut rd, 4)?;
                take(&mut rd, n + 1)?;
            }
        }
        // Every pending item needs at least one byte: a claim beyond that is a lie.
        if pending > rd.len() as u64 {
            return Err(format!(
                "{pending} items claimed, {} bytes remain",
                rd.len()
            ));
        }
    }
    if !rd.is_empty() {
        return Err(format!("{} trailing bytes after the value", rd.len()));
    }
    Ok(())
}

/// Encodes a dynamic value to bytes.
pub(crate) fn encode(value: &Value) -> Bytes {
    let mut buf = Vec::new();
    // Writing into a Vec cannot fail.
    rmpv::encode::write_value(&mut buf, value).expect("encoding into a Vec never fails");
    Bytes::from(buf)
}

/// Decodes stored bytes as `T`.
pub(crate) fn decode<T: DeserializeOwned>(namespace: &str, path: &str, raw: &[u8]) -> Result<T> {
    rmp_serde::from_slice(raw).map_err(|e| Error::TypeMismatch {
        namespace: namespace.to_string(),
        path: path.to_string(),
        expected: std::any::type_name::<T>(),
        detail: e.to_string(),
    })
}

/// Whether a value is a table (flattened into leaves) rather than one leaf.
pub(crate) fn is_table(value: &Value) -> bool {
    match value {
        Value::Map(entries) => !entries.is_empty() && entries.iter().all(|(k, _)| k.is_str()),
        _ => false,
    }
}

/// Nesting depth of a value: 0 for scalars, 1 + deepest child for arrays and maps.
pub(crate) fn nesting_depth(value: &Value) -> usize {
    // Iterative so that a hostile, deeply nested value cannot overflow the stack.
    let mut max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Map(entries) => {
                max = max.max(d + 1);
                for (k, v) in entries {
                    stack.push((k, d + 1));
                    stack.push((v, d + 1));
                }
            }
            _ => {}
        }
    }
    max
}

/// Flattens `value` set at `base` into leaves, checking path, size and nesting limits.
/// Spends one budget unit per leaf, so flattening a very large value yields to the
/// scheduler.
pub(crate) async fn flatten(
    base: &str,
    value: Value,
    limits: &Limits,
    budget: &mut Budget,
    out: &mut Vec<Leaf>,
) -> Result<()> {
    let mut stack = vec![(base.to_string(), value)];
    while let Some((at, v)) = stack.pop() {
        if is_table(&v) {
            let Value::Map(entries) = v else {
                unreachable!("is_table checked a map")
            };
            // Reverse so that leaves come out in the map's own order.
            for (k, child) in entries.into_iter().rev() {
                let key = k.as_str().unwrap_or_default();
                let child_path = join(&at, key);
                check_segment(key, limits.max_segment_len).map_err(|reason| {
                    Error::InvalidPath {
                        path: child_path.clone(),
                        reason,
                    }
                })?;
                if path::depth(&child_path) > limits.max_path_depth {
                    return Err(Error::LimitExceeded {
                        limit: Limit::PathDepth,
                        max: limits.max_path_depth,
                        actual: path::depth(&child_path),
                        path: child_path,
                    });
                }
                stack.push((child_path, child));
            }
        } else {
            out.push(leaf(at, v, limits)?);
            budget.tick().await;
        }
    }
    Ok(())
}

/// Makes one leaf, checking its nesting depth and encoded size.
pub(crate) fn leaf(path: String, value: Value, limits: &Limits) -> Result<Leaf> {
    let depth = nesting_depth(&value);
    if depth > limits.max_nesting_depth {
        return Err(Error::LimitExceeded {
            limit: Limit::NestingDepth,
            max: limits.max_nesting_depth,
            actual: depth,
            path,
        });
    }
    let raw = encode(&value);
    if raw.len() > limits.max_value_size {
        return Err(Error::LimitExceeded {
            limit: Limit::ValueSize,
            max: limits.max_value_size,
            actual: raw.len(),
            path,
        });
    }
    Ok(Leaf {
        path: Arc::from(path),
        raw,
        value,
    })
}

/// Rebuilds the table at `base` from its leaves (`(full path, value)` in any order).
pub(crate) fn assemble<'a>(
    base: &str,
    leaves: impl IntoIterator<Item = (&'a str, Value)>,
) -> Value {
    let mut root = Value::Map(Vec::new());
    let skip = if base.is_empty() { 0 } else { base.len() + 1 };
    for (full, value) in leaves {
        let rel = &full[skip..];
        let mut node = &mut root;
        let mut segments = rel.split('.').peekable();
        while let Some(seg) = segments.next() {
            let Value::Map(entries) = node else { break };
            let pos = entries.iter().position(|(k, _)| k.as_str() == Some(seg));
            let idx = match pos {
                Some(i) => i,
                None => {
                    entries.push((Value::from(seg), Value::Map(Vec::new())));
                    entries.len() - 1
                }
            };
            if segments.peek().is_none() {
                entries[idx].1 = value;
                break;
            }
            node = &mut entries[idx].1;
        }
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Pool {
        size: u32,
        name: String,
    }

    #[tokio::test]
    async fn structs_flatten_into_leaves_and_assemble_back() {
        let v = to_value(
            "db.pool",
            &Pool {
                size: 3,
                name: "p".into(),
            },
        )
        .unwrap();
        let mut out = Vec::new();
        flatten(
            "db.pool",
            v,
            &Limits::default(),
            &mut Budget::default(),
            &mut out,
        )
        .await
        .unwrap();
        let paths: Vec<&str> = out.iter().map(|l| &*l.path).collect();
        assert_eq!(paths, vec!["db.pool.size", "db.pool.name"]);
        let back = assemble("db.pool", out.iter().map(|l| (&*l.path, l.value.clone())));
        let pool: Pool = decode("ns", "db.pool", &encode(&back)).unwrap();
        assert_eq!(
            pool,
            Pool {
                size: 3,
                name: "p".into()
            }
        );
    }

    #[test]
    fn nesting_depth_counts_containers() {
        assert_eq!(nesting_depth(&Value::from(1)), 0);
        let v = Value::Array(vec![Value::Array(vec![Value::from(1)])]);
        assert_eq!(nesting_depth(&v), 2);
        let mut deep = Value::from(0);
        for _ in 0..40 {
            deep = Value::Array(vec![deep]);
        }
        let err = leaf("x".into(), deep, &Limits::default()).unwrap_err();
        assert!(matches!(
            err,
            Error::LimitExceeded {
                limit: Limit::NestingDepth,
                ..
            }
        ));
    }

    #[test]
    fn malformed_wire_bytes_are_rejected_without_allocating() {
        assert!(check_wire(&[0xc1]).is_err(), "reserved marker");
        assert!(check_wire(&[0x92, 0x01]).is_err(), "array short of items");
        assert!(
            check_wire(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err(),
            "4G-item array"
        );
        assert!(
            check_wire(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']).is_err(),
            "4 GiB string"
        );
        assert!(check_wire(&[]).is_err());
        assert!(check_wire(&encode(&Value::Array(vec![
            Value::from("a"),
            Value::from(1.5)
        ])))
        .is_ok());
    }

    proptest::proptest! {
        #[test]
        fn check_wire_agrees_with_the_decoder(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if check_wire(&bytes).is_ok() {
                let mut rd = &bytes[..];
                proptest::prop_assert!(rmpv::decode::read_value(&mut rd).is_ok());
                proptest::prop_assert!(rd.is_empty());
            }
        }

        #[test]
        fn encoded_values_pass_check_wire(n in proptest::num::i64::ANY, s in ".{0,40}", f in proptest::num::f64::ANY) {
            let v = Value::Map(vec![(Value::from("n"), Value::from(n)), (Value::from("s"), Value::from(s)), (Value::from("f"), Value::from(f))]);
            proptest::prop_assert!(check_wire(&encode(&v)).is_ok());
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut raw = encode(&Value::from(5)).to_vec();
        raw.push(0xc0);
        assert!(matches!(decode_value("p", &raw), Err(Error::Encode { .. })));
    }
}
