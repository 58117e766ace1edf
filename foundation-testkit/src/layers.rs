//! The layering rule of the workspace, checked from the crate manifests.
//!
//! A layer crate names, among the workspace's own crates, only the crate directly below it
//! in its `[dependencies]` and `[build-dependencies]` (target-specific tables included),
//! and never a crate above it, not even as a dev-dependency. The test kit and the benches
//! crate may depend on every layer. The workspace's architecture test runs [`check`] on
//! the real manifests; `.ci/run` runs that test.

use std::collections::BTreeMap;
use std::path::Path;

/// The layer crates, bottom first.
pub const LAYERS: [&str; 4] = [
    "foundation-core",
    "foundation-beam",
    "foundation-distributed",
    "foundation-intelligence",
];

/// Crates that may depend on every layer.
pub const FREE: [&str; 2] = ["foundation-testkit", "foundation-benches"];

/// Reads every `*/Cargo.toml` under `root` and returns one line per violation of the rule
/// (empty when it holds). Errors reading or parsing a manifest are violations too.
pub fn check(root: &Path) -> Vec<String> {
    let mut manifests = BTreeMap::new();
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) => return vec![format!("cannot read {}: {e}", root.display())],
    };
    for entry in entries.flatten() {
        let path = entry.path().join("Cargo.toml");
        if !path.is_file() {
            continue;
        }
        match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|s| s.parse::<toml::Table>().map_err(|e| e.to_string()))
        {
            Ok(table) => {
                if let Some(name) = table
                    .get("package")
                    .and_then(|p| p.get("name"))
                    .and_then(|n| n.as_str())
                {
                    manifests.insert(name.to_string(), table);
                }
            }
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    problems.extend(check_manifests(&manifests));
    problems
}

/// The rule applied to parsed manifests, keyed by package name.
pub fn check_manifests(members: &BTreeMap<String, toml::Table>) -> Vec<String> {
    let mut problems = Vec::new();
    for layer in LAYERS {
        if !members.contains_key(layer) {
            problems.push(format!("{layer}: crate not found at the workspace root"));
        }
    }
    for (name, manifest) in members {
        let Some(level) = LAYERS.iter().position(|l| l == name) else {
            continue;
        };
        let below = level.checked_sub(1).map(|i| LAYERS[i]);
        for (kind, table) in dependency_tables(manifest) {
            for (key, spec) in table {
                let dep = spec
                    .get("package")
                    .and_then(|p| p.as_str())
                    .unwrap_or(key.as_str());
                if dep == name || !members.contains_key(dep) {
                    continue;
                }
                let dev = kind.ends_with("dev-dependencies");
                if FREE.contains(&dep) {
                    problems.push(format!(
                        "{name}: {kind} names {dep}, which sits above every layer"
                    ));
                } else if let Some(dl) = LAYERS.iter().position(|l| *l == dep) {
                    if dl > level {
                        problems.push(format!("{name}: {kind} names {dep}, a layer above it"));
                    } else if !dev && Some(dep) != below {
                        problems.push(format!(
                            "{name}: {kind} names {dep}; only {} (directly below) may be named",
                            below.unwrap_or("nothing")
                        ));
                    }
                } else if !dev {
                    problems.push(format!(
                        "{name}: {kind} names workspace crate {dep}, which is outside the layer chain"
                    ));
                }
            }
        }
    }
    problems
}

fn dependency_tables(manifest: &toml::Table) -> Vec<(String, &toml::Table)> {
    const KINDS: [&str; 3] = ["dependencies", "build-dependencies", "dev-dependencies"];
    let mut out = Vec::new();
    for kind in KINDS {
        if let Some(t) = manifest.get(kind).and_then(|v| v.as_table()) {
            out.push((kind.to_string(), t));
        }
    }
    if let Some(targets) = manifest.get("target").and_then(|v| v.as_table()) {
        for (target, body) in targets {
            for kind in KINDS {
                if let Some(t) = body.get(kind).and_then(|v| v.as_table()) {
                    out.push((format!("target.{target}.{kind}"), t));
                }
            }
        }
    }
    out
}
