//! The read side: immutable snapshots of a namespace and the reads on them.
//!
//! A namespace's state is a persistent (structurally shared) map from path to entry,
//! published through an `ArcSwap`. The writer builds the next state from the current one
//! (cloning a persistent map is O(1); each insert copies only the nodes on one path),
//! validates it, and publishes it with one atomic store. Readers load the current state
//! without locks and without ever waiting for the writer, and a reader always sees either
//! all of an update or none of it, even an update that touched many keys.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rmpv::Value;
use serde::de::DeserializeOwned;

use super::value;
use crate::error::{Error, Result};

type Hasher = foldhash::fast::RandomState;

/// Path → entry, for point reads.
pub(crate) type Entries =
    imbl::GenericHashMap<Arc<str>, Arc<Entry>, Hasher, imbl::shared_ptr::DefaultSharedPtr>;

/// One stored leaf value.
pub(crate) struct Entry {
    /// The key's version: 1 for its first value, +1 for every change.
    pub version: u64,
    /// The encoded value (MessagePack). Cloning it bumps a reference count.
    pub raw: Bytes,
    /// The value decoded as the first type it was read as. A later read as the same type
    /// takes it from here instead of decoding again.
    typed: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl Entry {
    pub(crate) fn new(version: u64, raw: Bytes) -> Self {
        Entry {
            version,
            raw,
            typed: OnceLock::new(),
        }
    }
}

/// A namespace's state at one instant.
#[derive(Clone)]
pub(crate) struct State {
    pub entries: Entries,
    /// The same paths, ordered, for prefix scans (tables, subscriptions, listings).
    pub keys: imbl::OrdSet<Arc<str>>,
}

impl State {
    pub(crate) fn empty() -> Self {
        State {
            entries: Entries::with_hasher(Hasher::default()),
            keys: imbl::OrdSet::new(),
        }
    }

    /// Leaf paths strictly under `prefix` (`prefix` itself excluded), in order.
    pub(crate) fn children<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        let start: Arc<str> = Arc::from(format!("{prefix}."));
        self.keys.range(start..).take_while(move |k| {
            k.len() > prefix.len() && k.starts_with(prefix) && k.as_bytes()[prefix.len()] == b'.'
        })
    }

    pub(crate) fn has_children(&self, prefix: &str) -> bool {
        self.children(prefix).next().is_some()
    }

    pub(crate) fn insert(&mut self, path: Arc<str>, entry: Arc<Entry>) {
        if self.entries.insert(path.clone(), entry).is_none() {
            self.keys.insert(path);
        }
    }

    pub(crate) fn remove(&mut self, path: &str) -> bool {
        if self.entries.remove(path).is_some() {
            self.keys.remove(path);
            true
        } else {
            false
        }
    }

    /// The dynamic value at `path`: the leaf, or the table rebuilt from the leaves below.
    pub(crate) fn value_at(&self, path: &str) -> Option<Value> {
        if let Some(e) = self.entries.get(path) {
            return value::decode_value(path, &e.raw).ok();
        }
        let mut leaves = self.children(path).peekable();
        leaves.peek()?;
        let pairs: Vec<(&str, Value)> = leaves
            .filter_map(|k| {
                let e = self.entries.get(k)?;
                Some((&**k, value::decode_value(k, &e.raw).ok()?))
            })
            .collect();
        Some(value::assemble(path, pairs))
    }

    fn not_found(namespace: &str, path: &str) -> Error {
        Error::KeyNotFound {
            namespace: namespace.to_string(),
            path: path.to_string(),
        }
    }

    /// Typed read returning a shared pointer (no clone of `T`).
    pub(crate) fn get_arc<T>(&self, namespace: &str, path: &str) -> Result<Arc<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        match self.entries.get(path) {
            Some(entry) => {
                if let Some(cached) = entry.typed.get() {
                    if let Ok(t) = Arc::clone(cached).downcast::<T>() {
                        return Ok(t);
                    }
                }
                let t: Arc<T> = Arc::new(value::decode(namespace, path, &entry.raw)?);
                // Only the first type read is cached; a race to fill it is harmless.
                let _ = entry.typed.set(t.clone());
                Ok(t)
            }
            None => self.decode_table(namespace, path).map(Arc::new),
        }
    }

    /// Typed read returning a clone of `T`.
    pub(crate) fn get<T>(&self, namespace: &str, path: &str) -> Result<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        match self.entries.get(path) {
            Some(entry) => {
                if let Some(t) = entry.typed.get().and_then(|c| c.downcast_ref::<T>()) {
                    return Ok(t.clone());
                }
                let t: T = value::decode(namespace, path, &entry.raw)?;
                let _ = entry.typed.set(Arc::new(t.clone()));
                Ok(t)
            }
            None => self.decode_table(namespace, path),
        }
    }

    fn decode_table<T: DeserializeOwned>(&self, namespace: &str, path: &str) -> Result<T> {
        let raw = self
            .table_raw(path)
            .ok_or_else(|| Self::not_found(namespace, path))?;
        value::decode(namespace, path, &raw)
    }

    fn table_raw(&self, path: &str) -> Option<Bytes> {
        if !self.has_children(path) {
            return None;
        }
        self.value_at(path).map(|v| value::encode(&v))
    }

    /// The stored bytes of a leaf (a reference-count bump, never a copy), or the encoding
    /// of a table rebuilt from its leaves.
    pub(crate) fn get_raw(&self, namespace: &str, path: &str) -> Result<Bytes> {
        match self.entries.get(path) {
            Some(e) => Ok(e.raw.clone()),
            None => self
                .table_raw(path)
                .ok_or_else(|| Self::not_found(namespace, path)),
        }
    }

    pub(crate) fn version(&self, path: &str) -> Option<u64> {
        self.entries.get(path).map(|e| e.version)
    }
}
