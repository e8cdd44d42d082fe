//! The shape of the code, checked: kubegate's modules depend on each other
//! only in the order the map in `src/lib.rs` gives (leaves first, so no
//! cycles), and the production build links none of the apiserver double.
//!
//! `cargo test --test layout` runs just these.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The modules in the order `src/lib.rs` states, from its numbered map
/// (`//! 1. [`error`]: …`).
fn stated_order(lib: &str) -> Vec<String> {
    // The map is the `# Layout` section; the numbered steps of the next
    // section name modules too, but in the order a request meets them.
    lib.lines()
        .skip_while(|line| *line != "//! # Layout")
        .skip(1)
        .take_while(|line| !line.starts_with("//! # "))
        .filter_map(|line| line.strip_prefix("//! "))
        .filter_map(|line| {
            let (number, rest) = line.split_once(". [`")?;
            number.trim().parse::<u32>().ok()?;
            Some(rest.split_once('`')?.0.to_string())
        })
        .collect()
}

/// The modules `src/lib.rs` declares, but for test-only ones (after
/// `#[cfg(test)]`), which are no part of the layout.
fn declared(lib: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = lib.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || lines[i - 1].trim() != "#[cfg(test)]")
        .filter_map(|(_, line)| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').to_string())
        })
        .collect()
}

/// Every `.rs` file of a top-level module: `src/NAME.rs` and `src/NAME/**`.
fn files_of(module: &str) -> Vec<PathBuf> {
    let src = root().join("src");
    let mut files = vec![src.join(format!("{module}.rs"))];
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.into_iter().filter(|f| f.exists()).collect()
}

/// The top-level names a file reaches through `crate::` (comments aside),
/// including each name in `use crate::{a, b::c}`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The names at the group's top level: `{a::{x, y}, b}` is a, b.
            let (mut depth, mut start) = (0usize, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        top_level_name(&group[start..i], &mut names);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        top_level_name(&group[start..i], &mut names);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

fn top_level_name(item: &str, names: &mut BTreeSet<String>) {
    let name = item.trim().split("::").next().unwrap_or_default();
    if !name.is_empty() {
        names.insert(name.to_string());
    }
}

#[test]
fn modules_depend_only_on_modules_below_them_in_the_map() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let order = stated_order(&lib);
    let declared = declared(&lib);
    assert_eq!(
        order.iter().cloned().collect::<BTreeSet<_>>(),
        declared,
        "the map in src/lib.rs lists exactly the modules it declares"
    );
    let mut wrong = Vec::new();
    for (position, module) in order.iter().enumerate() {
        for file in files_of(module) {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in crate_references(&text) {
                let below = order[..position].contains(&name);
                if name != *module && !below {
                    wrong.push(format!(
                        "{} uses crate::{name}, which src/lib.rs's map does not list before {module}",
                        file.strip_prefix(root()).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_every_form_of_a_crate_path() {
    let text = "use crate::error::StartupError;\n\
                // crate::ignored in a comment\n\
                use crate::{audit::{Record, Audit}, body};\n\
                let x = crate::request::read();";
    let names: Vec<String> = crate_references(text).into_iter().collect();
    assert_eq!(names, ["audit", "body", "error", "request"]);
}

#[test]
fn the_production_build_links_none_of_the_double() {
    let output = std::process::Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "tree",
            "-e",
            "normal",
            "--no-default-features",
            "-p",
            "kubegate",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && tree.contains("hyper"),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The double's own crate and what only it needs: certificate
    // generation and pseudo-terminals. (WebSocket frames and SPDY's zlib
    // are kubegate's own too, for multiplexed port-forward.)
    for crate_name in ["kubegate-double", "rcgen", "pty-process"] {
        assert!(
            !tree
                .lines()
                .any(|line| line.split(' ').next() == Some(crate_name)),
            "the production build links {crate_name}:\n{tree}"
        );
    }
}
