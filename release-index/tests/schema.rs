//! The committed JSON Schema of index.json is generated from the Rust types; this fails when
//! they drift apart, and checks real published indexes against it.
//!
//! After changing the index types: `UPDATE_SCHEMA=1 cargo test -p release-index --test schema`.

mod common;

use common::*;

fn generated() -> String {
    let schema = schemars::schema_for!(release_index::index::Index);
    let mut text = serde_json::to_string_pretty(&schema).unwrap();
    text.push('\n');
    text
}

fn committed_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("index.schema.json")
}

#[test]
fn committed_schema_matches_the_types() {
    let want = generated();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(committed_path(), &want).unwrap();
    }
    let have = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        have == want,
        "release-index/index.schema.json is out of date with the index types; regenerate it with\n  UPDATE_SCHEMA=1 cargo test -p release-index --test schema\nand review the diff"
    );
}

#[test]
fn published_indexes_satisfy_the_schema() {
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(committed_path()).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let s = Scratch::new();
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", ""), s.image("containerd-2.0.4-arm64.raw", "")]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.release().join("index.json")).unwrap()).unwrap();
    let errors: Vec<String> =
        validator.iter_errors(&index).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:#?}");

    // And the schema is not vacuous: the schema refuses malformed indexes.
    type Mutation = (&'static str, fn(&mut serde_json::Value));
    let mutations: [Mutation; 4] = [
        ("uppercase digest", |v| {
            let art = &mut v["extensions"]["kubernetes"]["v1.31.3"]["x86-64"];
            let up = art["sha256"].as_str().unwrap().to_uppercase();
            art["sha256"] = up.into();
        }),
        ("unknown field", |v| v["surprise"] = 1.into()),
        ("missing serial", |v| {
            v.as_object_mut().unwrap().remove("serial");
        }),
        ("arch key", |v| {
            let k = v["extensions"]["kubernetes"]["v1.31.3"].as_object_mut().unwrap();
            let art = k.remove("x86-64").unwrap();
            k.insert("amd64".into(), art);
        }),
    ];
    for (what, mutate) in mutations {
        let mut bad = index.clone();
        mutate(&mut bad);
        assert!(!validator.is_valid(&bad), "the schema accepts an index with {what}");
        // The parser reads digests case-insensitively (same digest); the rest it refuses too.
        if what != "uppercase digest" {
            assert!(
                release_index::index::Index::parse(bad.to_string().as_bytes()).is_err(),
                "the parser accepts {what}"
            );
        }
    }
}
