//! The node's configuration: file < environment < flags, relative secret paths, and the
//! guide's example files (docs/examples/three-nodes) load.

use std::path::{Path, PathBuf};

use foundation_intelligence::distributed::topology::TopologyKind;
use foundation_intelligence::node_config::{load, Overrides};

fn file(name: &str, text: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("foundation-node-config-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn flags_beat_environment_beat_file_beat_defaults() {
    let f = file(
        "layers.toml",
        "[node]\nname = \"from-file\"\nlisten = \"127.0.0.1:1001\"\nmetrics = \"127.0.0.1:2001\"\nworkers = 2\nsecret_file = \"s.secret\"\n",
    );
    let vars = env(&[
        ("FOUNDATION_NODE__LISTEN", "127.0.0.1:1002"),
        ("FOUNDATION_NODE__METRICS", "127.0.0.1:2002"),
        ("FOUNDATION_OTHER__IGNORED", "x"),
    ]);
    let flags = Overrides {
        metrics: Some("127.0.0.1:2003".into()),
        seeds: vec!["127.0.0.1:3000".into()],
        ..Overrides::default()
    };
    let c = load(Some(&f), vars, &flags).await.unwrap();
    assert_eq!(c.name, "from-file"); // file
    assert_eq!(c.listen, "127.0.0.1:1002"); // env over file
    assert_eq!(c.metrics, Some("127.0.0.1:2003".parse().unwrap())); // flag over env
    assert_eq!(c.seeds, vec!["127.0.0.1:3000".to_string()]);
    assert_eq!(c.workers, 2);
    assert_eq!(c.cluster, "foundation"); // default
    assert_eq!(c.topology, TopologyKind::FullMesh);
    // A relative secret path in the file is relative to the file.
    assert_eq!(c.secret_file.unwrap(), f.parent().unwrap().join("s.secret"));
}

#[tokio::test]
async fn no_file_is_needed() {
    let flags = Overrides {
        name: Some("solo".into()),
        topology: Some("client_server".into()),
        metrics: Some("off".into()),
        ..Overrides::default()
    };
    let c = load(None, env(&[]), &flags).await.unwrap();
    assert_eq!(c.name, "solo");
    assert_eq!(c.metrics, None);
    assert_eq!(
        c.topology,
        TopologyKind::ClientServer {
            servers_per_client: 2
        }
    );
    let flags = Overrides {
        name: Some("big".into()),
        topology: Some("hyparview".into()),
        metrics: Some("off".into()),
        ..Overrides::default()
    };
    let c = load(None, env(&[]), &flags).await.unwrap();
    assert_eq!(c.topology, TopologyKind::hyparview());
}

#[tokio::test]
async fn errors_name_the_layer_that_gave_the_bad_value() {
    let f = file(
        "bad-metrics.toml",
        "[node]\nname = \"a\"\nmetrics = \"localhost\"\n",
    );
    let e = load(Some(&f), env(&[]), &Overrides::default())
        .await
        .unwrap_err();
    assert!(e.source_name.contains("bad-metrics.toml"), "{e}");
    assert!(e.problem.contains("node.metrics"), "{e}");
    let e = load(
        Some(&f),
        env(&[("FOUNDATION_NODE__METRICS", "nope")]),
        &Overrides::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.source_name, "env FOUNDATION_NODE__METRICS", "{e}");
    let e = load(
        Some(&f),
        env(&[]),
        &Overrides {
            role: Some("king".into()),
            metrics: Some("off".into()),
            ..Overrides::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.source_name, "flag --role", "{e}");
}

#[tokio::test]
async fn the_guide_examples_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/three-nodes");
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let path = dir.join(format!("{name}.toml"));
        let c = load(Some(&path), env(&[]), &Overrides::default())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(c.name, *name);
        assert_eq!(c.listen, format!("127.0.0.1:710{}", i + 1));
        assert_eq!(c.seeds.is_empty(), i == 0);
        assert_eq!(c.secret_file.unwrap(), dir.join("cluster.secret"));
    }
}
