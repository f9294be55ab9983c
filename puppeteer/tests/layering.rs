//! The layers of ARCHITECTURE.md, checked on the source: every `crate::`
//! path a module names must be of its own layer or one below. From the top:
//! the binary and its settings (`main.rs`, `lib.rs`, `config.rs`), the edge
//! (`server`), the tonic services (`api`), the application layer (`app`),
//! the offline tools (`pki.rs`, `backup.rs`), the storage (`store`), and
//! the core (pure decisions and domain types: `scheduler.rs`, `domain/`,
//! ...). An upward `use` fails this test with the file and the line.

use std::path::{Path, PathBuf};

/// The layer of a module (its first path segment under `src/`), higher is
/// further from the data.
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "domain" | "ids" | "hub" | "bandwidth" | "blobs" | "memory" | "selector" | "artifact"
        | "presence" | "retention" | "scheduler" | "peers" | "versions" | "releases" => 0,
        "store" => 1,
        "pki" | "backup" => 2,
        "app" => 3,
        "api" => 4,
        "server" => 5,
        "lib" | "main" | "config" => 6,
        _ => return None,
    })
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a line names through `crate::` (`crate::a::b`, or each of
/// `crate::{a, b::c}`).
fn named(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        } else {
            found.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    found
}

#[test]
fn every_module_names_only_its_layer_and_those_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 40, "found {} sources", files.len());
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
        let Some(own) = layer(&module) else {
            panic!(
                "{}: not in any layer: add it to `layer`",
                relative.display()
            );
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for name in named(code) {
                match layer(&name) {
                    Some(theirs) if theirs > own => upward.push(format!(
                        "{}:{}: {module} (layer {own}) names crate::{name} (layer {theirs})",
                        relative.display(),
                        n + 1
                    )),
                    Some(_) => {}
                    None => panic!(
                        "{}:{}: crate::{name} is in no layer: add it to `layer`",
                        relative.display(),
                        n + 1
                    ),
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "arrows pointing up:\n{}",
        upward.join("\n")
    );
}

/// Only the store knows its engine: no other module names `sled`, so that
/// another engine (PostgreSQL, for a cluster) goes behind the same
/// interface without the layers above changing.
#[test]
fn only_the_store_names_its_engine() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut naming = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        if relative.starts_with("store") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("sled::") || code.contains("use sled") {
                naming.push(format!("{}:{}: {}", relative.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        naming.is_empty(),
        "sled named outside store/:\n{}",
        naming.join("\n")
    );
}

#[test]
fn the_check_reads_paths_and_groups() {
    assert_eq!(named("use crate::app::{AppState, Shared};"), vec!["app"]);
    assert_eq!(
        named("use crate::{api, store::Store}; crate::server::x()"),
        vec!["api", "store", "server"]
    );
    assert!(layer("server") > layer("api") && layer("api") > layer("app"));
    assert!(layer("app") > layer("store") && layer("store") > layer("scheduler"));
}
