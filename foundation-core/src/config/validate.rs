//! Validation rules registered per path.
//!
//! A rule registered at a path checks the value that an update would leave at that path:
//! the leaf itself, or — for a rule on a table such as `db.pool` — the whole table as
//! rebuilt from its leaves, so cross-field rules (`min <= max`) see a consistent value.
//! Rules run in the namespace's writer before anything is applied; a failing rule
//! rejects the whole update.

use std::fmt;
use std::sync::Arc;

use rmpv::Value;

/// The kind of a configuration value, for [`Rule::Type`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// `true` / `false`.
    Bool,
    /// A signed or unsigned integer.
    Integer,
    /// A floating-point number.
    Float,
    /// An integer or a float.
    Number,
    /// A UTF-8 string.
    String,
    /// Raw bytes.
    Binary,
    /// An array.
    Array,
    /// A table (a map with string keys, or a struct).
    Table,
}

impl Kind {
    /// Whether `value` is of this kind.
    pub fn matches(self, value: &Value) -> bool {
        match self {
            Kind::Bool => value.is_bool(),
            Kind::Integer => value.is_i64() || value.is_u64(),
            Kind::Float => value.is_f32() || value.is_f64(),
            Kind::Number => value.is_number(),
            Kind::String => value.is_str(),
            Kind::Binary => value.is_bin(),
            Kind::Array => value.is_array(),
            Kind::Table => value.is_map(),
        }
    }
}

/// A custom validator: returns `Err(reason)` to reject a value.
pub type CustomFn = dyn Fn(&Value) -> Result<(), String> + Send + Sync;

/// A validation rule. Register with [`Namespace::add_rule`](super::Namespace::add_rule).
#[derive(Clone)]
#[non_exhaustive]
pub enum Rule {
    /// The value must be of this kind.
    Type(Kind),
    /// The value must be a number within `min..=max` (either bound may be open).
    Range {
        /// Smallest allowed value.
        min: Option<f64>,
        /// Largest allowed value.
        max: Option<f64>,
    },
    /// A string, binary or array whose length lies within `min..=max`.
    Length {
        /// Shortest allowed length.
        min: Option<usize>,
        /// Longest allowed length.
        max: Option<usize>,
    },
    /// A named custom check.
    Custom {
        /// Name shown in errors.
        name: String,
        /// The check.
        check: Arc<CustomFn>,
    },
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn bound<T: fmt::Display>(b: &Option<T>) -> String {
            b.as_ref().map_or_else(String::new, ToString::to_string)
        }
        match self {
            Rule::Type(k) => write!(f, "type {k:?}"),
            Rule::Range { min, max } => write!(f, "range {}..={}", bound(min), bound(max)),
            Rule::Length { min, max } => write!(f, "length {}..={}", bound(min), bound(max)),
            Rule::Custom { name, .. } => write!(f, "custom {name}"),
        }
    }
}

impl Rule {
    /// A rule with a custom check.
    ///
    /// ```
    /// use foundation_core::config::Rule;
    /// let even = Rule::custom("even", |v| match v.as_u64() {
    ///     Some(n) if n % 2 == 0 => Ok(()),
    ///     _ => Err("must be an even unsigned integer".into()),
    /// });
    /// assert!(even.check(&4u64.into()).is_ok());
    /// assert!(even.check(&3u64.into()).is_err());
    /// ```
    pub fn custom(
        name: impl Into<String>,
        check: impl Fn(&Value) -> Result<(), String> + Send + Sync + 'static,
    ) -> Rule {
        Rule::Custom {
            name: name.into(),
            check: Arc::new(check),
        }
    }

    /// A numeric range rule with both bounds.
    pub fn range(min: f64, max: f64) -> Rule {
        Rule::Range {
            min: Some(min),
            max: Some(max),
        }
    }

    /// Checks a value; `Err` carries the reason.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        match self {
            Rule::Type(kind) => {
                if kind.matches(value) {
                    Ok(())
                } else {
                    Err(format!("expected {kind:?}, got {}", describe(value)))
                }
            }
            Rule::Range { min, max } => {
                let n = value
                    .as_f64()
                    .or_else(|| value.as_i64().map(|i| i as f64))
                    .or_else(|| value.as_u64().map(|u| u as f64))
                    .ok_or_else(|| format!("expected a number, got {}", describe(value)))?;
                if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                    Err(format!("{n} is outside {}", self))
                } else {
                    Ok(())
                }
            }
            Rule::Length { min, max } => {
                let len = match value {
                    Value::String(s) => s.as_bytes().len(),
                    Value::Binary(b) => b.len(),
                    Value::Array(a) => a.len(),
                    other => {
                        return Err(format!(
                            "expected a string, binary or array, got {}",
                            describe(other)
                        ))
                    }
                };
                if min.is_some_and(|m| len < m) || max.is_some_and(|m| len > m) {
                    Err(format!("length {len} is outside {}", self))
                } else {
                    Ok(())
                }
            }
            Rule::Custom { check, .. } => check(value),
        }
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::String(_) => "a string",
        Value::Binary(_) => "binary",
        Value::Array(_) => "an array",
        Value::Map(_) => "a table",
        Value::Ext(..) => "an extension value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_check_values() {
        assert!(Rule::Type(Kind::Integer).check(&Value::from(3)).is_ok());
        assert!(Rule::Type(Kind::Integer).check(&Value::from("3")).is_err());
        assert!(Rule::range(1.0, 10.0).check(&Value::from(10)).is_ok());
        assert!(Rule::range(1.0, 10.0).check(&Value::from(11)).is_err());
        assert!(Rule::range(1.0, 10.0).check(&Value::from("x")).is_err());
        let len = Rule::Length {
            min: Some(1),
            max: Some(3),
        };
        assert!(len.check(&Value::from("abc")).is_ok());
        assert!(len.check(&Value::from("abcd")).is_err());
        assert_eq!(Rule::range(1.0, 2.0).to_string(), "range 1..=2");
    }
}
