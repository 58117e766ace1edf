//! The workspace's architecture test: the layering rule holds on the real manifests, and
//! the checker does catch each kind of violation.

use std::collections::BTreeMap;
use std::path::Path;

use foundation_testkit::layers::{check, check_manifests};

#[test]
fn workspace_respects_the_layering_rule() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let problems = check(root);
    assert!(
        problems.is_empty(),
        "layering violated:\n{}",
        problems.join("\n")
    );
}

fn manifests(extra: &[(&str, &str)]) -> BTreeMap<String, toml::Table> {
    let base = [
        ("foundation-core", ""),
        (
            "foundation-beam",
            "[dependencies]\nfoundation-core = { path = \"x\" }\n",
        ),
        (
            "foundation-distributed",
            "[dependencies]\nfoundation-beam = \"0.1\"\n",
        ),
        (
            "foundation-intelligence",
            "[dependencies]\nfoundation-distributed = \"0.1\"\n",
        ),
        (
            "foundation-testkit",
            "[dependencies]\nfoundation-core = \"0.1\"\nfoundation-intelligence = \"0.1\"\n",
        ),
    ];
    let mut out = BTreeMap::new();
    for (name, deps) in base.iter().chain(extra) {
        let text = format!("[package]\nname = \"{name}\"\n{deps}");
        let table: toml::Table = text.parse().unwrap();
        out.insert(name.to_string(), table);
    }
    out
}

#[test]
fn a_clean_chain_passes() {
    assert_eq!(check_manifests(&manifests(&[])), Vec::<String>::new());
}

#[test]
fn skipping_a_layer_is_caught() {
    let m = manifests(&[(
        "foundation-distributed",
        "[dependencies]\nfoundation-beam = \"0.1\"\nfoundation-core = \"0.1\"\n",
    )]);
    let p = check_manifests(&m);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("only foundation-beam"), "{p:?}");
}

#[test]
fn depending_upward_is_caught_even_in_dev_dependencies() {
    let m = manifests(&[(
        "foundation-core",
        "[dev-dependencies]\nfoundation-beam = \"0.1\"\n",
    )]);
    let p = check_manifests(&m);
    assert!(p.iter().any(|l| l.contains("a layer above it")), "{p:?}");
}

#[test]
fn renamed_and_target_specific_dependencies_are_caught() {
    let m = manifests(&[(
        "foundation-beam",
        "[dependencies]\nfoundation-core = \"0.1\"\n[target.'cfg(unix)'.dependencies]\nkit = { package = \"foundation-testkit\", version = \"0.1\" }\n",
    )]);
    let p = check_manifests(&m);
    assert!(
        p.iter().any(|l| l.contains("sits above every layer")),
        "{p:?}"
    );
}

#[test]
fn a_missing_layer_is_caught() {
    let mut m = manifests(&[]);
    m.remove("foundation-beam");
    let p = check_manifests(&m);
    assert!(
        p.iter()
            .any(|l| l.contains("foundation-beam: crate not found")),
        "{p:?}"
    );
}
