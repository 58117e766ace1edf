//! Rewrites `docs/ASSUMPTIONS.md` from the evidence the assumption tests wrote under
//! `target/assumptions/`:
//!
//! ```text
//! cargo test -p foundation-testkit --features assumptions --release
//! cargo run -p foundation-testkit --bin update-assumptions [-- --from DIR]
//! ```
//!
//! Exits with status 1 (and leaves the file alone) when there is no evidence.

use foundation_testkit::assumptions::{
    assumptions_file, evidence_dir, read_evidence, render_markdown, Verdict, REGISTRY,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir = evidence_dir();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--from" => match args.next() {
                Some(d) => dir = d.into(),
                None => fail("--from needs a directory"),
            },
            "-h" | "--help" => {
                println!("usage: update-assumptions [--from DIR]\nRewrites docs/ASSUMPTIONS.md from DIR (default: target/assumptions).");
                return;
            }
            other => fail(&format!("unknown argument {other:?} (try --help)")),
        }
    }
    let evidence = match read_evidence(&dir) {
        Ok(e) => e,
        Err(e) => fail(&format!(
            "cannot read evidence in {}: {e}\nrun `cargo test -p foundation-testkit --features assumptions` first",
            dir.display()
        )),
    };
    if evidence.is_empty() {
        fail(&format!("no evidence in {}", dir.display()));
    }
    let out = assumptions_file();
    if let Err(e) = std::fs::write(&out, render_markdown(&evidence)) {
        fail(&format!("cannot write {}: {e}", out.display()));
    }
    let refuted = evidence
        .iter()
        .filter(|e| e.verdict == Verdict::Refuted)
        .count();
    let surprises = evidence.iter().filter(|e| e.verdict != e.expected).count();
    let missing = REGISTRY
        .iter()
        .filter(|a| !evidence.iter().any(|e| e.id == a.id))
        .count();
    println!(
        "wrote {}: {} assumptions ({} refuted, {} not the expected verdict, {} of the registry not measured)",
        out.display(),
        evidence.len(),
        refuted,
        surprises,
        missing
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("update-assumptions: {msg}");
    std::process::exit(1);
}
