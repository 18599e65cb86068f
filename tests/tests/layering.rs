//! The architecture is the crate graph: each Hypergate crate may depend only on
//! the crates below it (core <- {upstream, edge} <- proxy <- llm <- runtime <-
//! hypercare <- admin <- the `hypergate` binary; the pure crates `ai`,
//! `analysis` and `ebpf-common` on none of ours, the mock provider on `ai` only). This test reads `cargo
//! metadata` and fails on any other edge, and on a new crate that nobody
//! placed in the graph. A second test reads each crate's sources and fails on
//! a cycle between its top-level modules.

use hypergate_tests::process::workspace_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each crate and the Hypergate crates its (non-dev) dependencies may name.
const ALLOWED: &[(&str, &[&str])] = &[
    ("hypergate-ai", &[]),
    ("hypergate-analysis", &[]),
    ("hypergate-ebpf-common", &[]),
    // The mock reads the Responses API through the pure wire-format crate.
    ("hypergate-mock-llm", &["hypergate-ai"]),
    ("hypergate-otel", &[]),
    ("hypergate-core", &["hypergate-analysis", "hypergate-otel"]),
    ("hypergate-upstream", &["hypergate-core"]),
    ("hypergate-edge", &["hypergate-core"]),
    (
        "hypergate-proxy",
        &[
            "hypergate-core",
            "hypergate-upstream",
            "hypergate-edge",
            "hypergate-otel",
        ],
    ),
    (
        "hypergate-llm",
        &[
            "hypergate-core",
            "hypergate-upstream",
            "hypergate-edge",
            "hypergate-proxy",
            "hypergate-ai",
        ],
    ),
    (
        "hypergate-runtime",
        &[
            "hypergate-core",
            "hypergate-upstream",
            "hypergate-edge",
            "hypergate-proxy",
            "hypergate-llm",
            "hypergate-ai",
            "hypergate-ebpf-common",
            "hypergate-otel",
        ],
    ),
    (
        "hypergate-hypercare",
        &[
            "hypergate-core",
            "hypergate-upstream",
            "hypergate-edge",
            "hypergate-llm",
            "hypergate-runtime",
            "hypergate-analysis",
        ],
    ),
    (
        "hypergate-admin",
        &["hypergate-core", "hypergate-runtime", "hypergate-hypercare"],
    ),
    (
        "hypergate",
        &[
            "hypergate-core",
            "hypergate-upstream",
            "hypergate-edge",
            "hypergate-proxy",
            "hypergate-llm",
            "hypergate-runtime",
            "hypergate-hypercare",
            "hypergate-admin",
            "hypergate-mock-llm",
        ],
    ),
];

/// Tooling, free to use any crate (nothing depends on them).
const TOOLING: &[&str] = &["hypergate-tests", "hypergate-bench", "xtask"];

#[test]
fn crates_depend_only_on_the_layers_below() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(workspace_root())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(k, v)| (*k, v.iter().copied().collect()))
        .collect();
    let ours: BTreeSet<String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    let mut problems = Vec::new();
    for package in meta["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("name");
        if TOOLING.contains(&name) {
            continue;
        }
        let Some(may) = allowed.get(name) else {
            problems.push(format!(
                "{name}: a crate that is not placed in the layering (add it to ALLOWED)"
            ));
            continue;
        };
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let dep_name = dep["name"].as_str().expect("dependency name");
            let is_dev = dep["kind"].as_str() == Some("dev");
            if is_dev || !ours.contains(dep_name) {
                continue;
            }
            if !may.contains(dep_name) {
                problems.push(format!("{name} depends on {dep_name}, which it may not"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "forbidden dependency edges:\n{}",
        problems.join("\n")
    );
}

/// The top-level module each `.rs` file of `src` belongs to (`None`: the crate root).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    if rel.components().count() == 1 {
        let stem = first.strip_suffix(".rs")?;
        (stem != "lib" && stem != "main").then(|| stem.to_string())
    } else {
        Some(first)
    }
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `text` names through `crate::` (also inside `use crate::{a, b}`).
/// The top-level modules a source file names: `crate::x` anywhere, and
/// `super::x` in a top-level module's own file (where `super` is the crate
/// root). Unit tests (from `#[cfg(test)]` on) may use any sibling and are
/// left out: they are not part of the module graph the code ships with.
fn crate_refs(text: &str, top_level_file: bool) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    let prefixes: &[&str] = if top_level_file {
        &["crate::", "super::"]
    } else {
        &["crate::"]
    };
    let starts = prefixes
        .iter()
        .flat_map(|p| text.match_indices(p).map(move |(i, _)| i + p.len()));
    for start in starts {
        let rest = &text[start..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name = ident(part.trim());
                if !name.is_empty() {
                    refs.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                refs.insert(name);
            }
        }
    }
    refs
}

#[test]
fn no_crate_has_a_cycle_between_its_modules() {
    let root = workspace_root();
    let mut problems = Vec::new();
    for dir in std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .flatten()
    {
        let src = dir.path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
        for f in &files {
            let Some(from) = top_module(&src, f) else {
                continue;
            };
            let text = std::fs::read_to_string(f).expect("read source");
            let rel = f.strip_prefix(&src).expect("under src");
            let top_level_file = rel.components().count() == 1
                || (rel.components().count() == 2 && rel.ends_with("mod.rs"));
            for to in crate_refs(&text, top_level_file) {
                if to != from && modules.contains(&to) {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
        // Depth-first search for a back edge.
        fn visit(
            m: &str,
            edges: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
            found: &mut Vec<Vec<String>>,
        ) {
            if done.contains(m) {
                return;
            }
            if let Some(at) = path.iter().position(|p| p == m) {
                let mut cycle = path[at..].to_vec();
                cycle.push(m.to_string());
                found.push(cycle);
                return;
            }
            path.push(m.to_string());
            for next in edges.get(m).into_iter().flatten() {
                visit(next, edges, path, done, found);
            }
            path.pop();
            done.insert(m.to_string());
        }
        let mut done = BTreeSet::new();
        let mut found = Vec::new();
        for m in &modules {
            visit(m, &edges, &mut Vec::new(), &mut done, &mut found);
        }
        let name = dir.file_name().to_string_lossy().to_string();
        for cycle in found {
            problems.push(format!("crates/{name}: {}", cycle.join(" -> ")));
        }
    }
    assert!(
        problems.is_empty(),
        "module cycles:\n{}",
        problems.join("\n")
    );
}
