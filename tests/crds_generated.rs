//! The committed `crds/` must be exactly what the Rust types generate.

use std::path::Path;

use redeploy_operator::cli::{crd_file_name, crd_yaml};

const REGENERATE: &str = "regenerate them with `make crds` (cargo run -- crds --dir crds) and commit the result";

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected_files = Vec::new();
    for crd in redeploy_operator::api::crds() {
        let file = crd_file_name(&crd);
        let generated = crd_yaml(&crd).expect("CRDs serialize to YAML");
        let committed = std::fs::read_to_string(dir.join(&file))
            .unwrap_or_else(|e| panic!("crds/{file} cannot be read ({e}): {REGENERATE}"));
        assert!(committed == generated, "crds/{file} differs from what src/api generates: {REGENERATE}");
        expected_files.push(file);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(present, expected_files, "crds/ holds files no type generates: {REGENERATE}");
}
