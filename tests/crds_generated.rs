//! The committed `crds/`, and the Helm chart's copy, must be exactly what the
//! Rust types generate.

use std::path::Path;

use redeploy_operator::cli::{crd_file_name, crd_yaml};

const REGENERATE: &str = "regenerate them with `make crds` and commit the result";

#[test]
fn committed_crds_match_the_types() {
    check(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"));
}

#[test]
fn the_charts_crds_match_the_types() {
    check(Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/redeploy-operator/crds"));
}

fn check(dir: std::path::PathBuf) {
    let mut expected_files = Vec::new();
    for crd in redeploy_operator::api::crds() {
        let file = crd_file_name(&crd);
        let generated = crd_yaml(&crd).expect("CRDs serialize to YAML");
        let committed = std::fs::read_to_string(dir.join(&file))
            .unwrap_or_else(|e| panic!("{}/{file} cannot be read ({e}): {REGENERATE}", dir.display()));
        assert!(committed == generated, "{}/{file} differs from what src/api generates: {REGENERATE}", dir.display());
        expected_files.push(file);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(present, expected_files, "{} holds files no type generates: {REGENERATE}", dir.display());
}
