//! The README's feature table names every feature of `Cargo.toml`, and no other, with the
//! right default.

use std::collections::BTreeMap;

/// `feature -> on by default`, from the README's table.
fn readme_features() -> BTreeMap<String, bool> {
    let readme = include_str!("../../README.md");
    let table = readme
        .split("| feature | default | what it adds |")
        .nth(1)
        .expect("the README has a feature table");
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2] == "yes")
        })
        .collect()
}

/// `feature -> on by default`, from `Cargo.toml` (the `[features]` table, `default` aside).
fn cargo_features() -> BTreeMap<String, bool> {
    let manifest = include_str!("../../Cargo.toml");
    let features = manifest
        .split("[features]")
        .nth(1)
        .expect("Cargo.toml has features");
    let features = features.split("\n[").next().unwrap_or_default();
    let default_line = features
        .lines()
        .find(|line| line.starts_with("default ="))
        .unwrap_or_default();
    features
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with("default ="))
        .filter_map(|line| {
            line.split_once(" = ")
                .map(|(name, _)| name.trim().to_owned())
        })
        .map(|name| {
            let default = default_line.contains(&format!("\"{name}\""));
            (name, default)
        })
        .collect()
}

#[test]
fn the_readme_feature_table_matches_cargo_toml() {
    let cargo = cargo_features();
    assert!(cargo.len() >= 9, "parsed {cargo:?}");
    assert_eq!(readme_features(), cargo);
}
