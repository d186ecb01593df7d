//! The repository builds and tests from a clone anywhere: nothing in it may
//! read files from outside its own tree (such as a `shared` folder beside it).

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Every file of the repository, except build output and Git's own data.
fn files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if matches!(name.to_str(), Some("target" | ".git" | ".cluster")) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[test]
fn nothing_refers_to_a_folder_outside_the_repository() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Built at run time so this file does not match itself.
    let needles = [["..", "shared"].join("/"), ["..", "..", "shared"].join("/")];
    let mut all = Vec::new();
    files(root, &mut all)?;
    let offenders: Vec<String> = all
        .iter()
        .filter_map(|path| {
            let text = fs::read(path).ok()?;
            let text = String::from_utf8_lossy(&text);
            needles.iter().any(|needle| text.contains(needle.as_str())).then(|| path.display().to_string())
        })
        .collect();
    assert!(all.len() > 50, "walked only {} files from {}", all.len(), root.display());
    assert!(offenders.is_empty(), "these files refer to a folder outside the repository: {offenders:#?}");
    Ok(())
}
