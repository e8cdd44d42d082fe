//! The manual, checked against the code: `docs/flags.md` has a row for
//! every flag `kubegate --help` shows, with the default `--help` prints,
//! and `docs/architecture.md` lists the modules of the map in `src/lib.rs`,
//! in its order.
//!
//! `cargo test --test docs` runs just these.

use std::path::Path;
use std::process::{Command, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path))
        .unwrap_or_else(|error| panic!("cannot read {path}: {error}"))
}

/// One option of clap's long help: its long name (`--port`), if it has
/// one, and the value of its `[default: …]`, if it shows one.
#[derive(Debug, PartialEq)]
struct HelpFlag {
    long: Option<String>,
    default: Option<String>,
}

/// Every option entry of `kubegate --help` (the long help).
///
/// An entry starts with a line indented at most six spaces and beginning
/// with a dash (`  -p, --port <PORT>`, `      --address <ADDRESS>`); its
/// description, possible values and `[default: …]` follow, indented ten, and
/// a wrapped description line may begin with `--` too. A line that is not
/// indented (a heading such as `Options:` or `Examples:`) ends the entry.
fn help_flags(help: &str) -> Vec<HelpFlag> {
    let mut entries: Vec<(Option<String>, Vec<&str>)> = Vec::new();
    let mut open = false;
    for line in help.lines() {
        let text = line.trim();
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            // A heading, an empty line between sections, or the text
            // before them. Empty lines inside an entry are indented.
            if !text.is_empty() {
                open = false;
            }
            continue;
        }
        if indent <= 6 && text.starts_with('-') {
            entries.push((long_name(text), Vec::new()));
            open = true;
        } else if open && let Some((_, body)) = entries.last_mut() {
            body.push(text);
        }
    }
    entries
        .into_iter()
        .map(|(long, body)| HelpFlag {
            long,
            default: default_of(&body),
        })
        .collect()
}

/// `--port` from `-p, --port <PORT>`, `--disable-filter` from
/// `--disable-filter[=<DISABLE_FILTER>]`.
fn long_name(header: &str) -> Option<String> {
    let at = header.find("--")?;
    let name: String = header[at + 2..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!name.is_empty()).then(|| format!("--{name}"))
}

/// The value inside `[default: …]` in an entry's lines. clap wraps long
/// lines at spaces, so the lines are joined with one space first. A
/// default may itself hold `]` (`^\[::1\]$`): the bracket that ends it is
/// the one at the end of the entry or before the next `[…]`
/// (`[possible values: …]`).
fn default_of(body: &[&str]) -> Option<String> {
    let text = body
        .iter()
        .filter(|line| !line.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let rest = &text[text.find("[default: ")? + "[default: ".len()..];
    let end = rest.match_indices(']').map(|(at, _)| at).find(|&at| {
        let after = &rest[at + 1..];
        after.is_empty() || after.starts_with(" [")
    })?;
    Some(rest[..end].to_string())
}

/// The cells of every table row (a line starting with `|`) of a Markdown
/// page, trimmed. An escaped `\|` stays inside its cell.
fn table_rows(page: &str) -> Vec<Vec<String>> {
    page.lines()
        .map(str::trim)
        .filter(|line| line.starts_with('|'))
        .map(|line| {
            line.replace("\\|", "\u{0}")
                .trim_matches('|')
                .split('|')
                .map(|cell| cell.replace('\u{0}', "\\|").trim().to_string())
                .collect::<Vec<String>>()
        })
        .collect()
}

/// Whether `cell` names the flag `long` as a whole word: `--as` is not
/// named by `--as-group`, nor `--v` by `--vmodule`.
fn names(cell: &str, long: &str) -> bool {
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || c == '-';
    cell.match_indices(long).any(|(at, _)| {
        let before = cell[..at].chars().next_back();
        let after = cell[at + long.len()..].chars().next();
        !before.is_some_and(part_of_name) && !after.is_some_and(part_of_name)
    })
}

#[test]
fn the_help_reader_finds_each_flag_and_its_default() {
    let help = "\
Usage: kubegate [OPTIONS] [COMMAND]

Options:
  -p, --port <PORT>
          The port on which to run the proxy

          [default: 8001]

      --accept-hosts <ACCEPT_HOSTS>
          Regular expressions for hosts

          [default: ^localhost$,^127\\.0\\.0\\.1$,^\\[::1\\]$]

      --generate-access-token
          kubegate: make a random access token, print it once, and require it (written to
          --access-token-file too, if given)

      --disable-filter[=<DISABLE_FILTER>]
          If true, disable request filtering

          [default: false]
          [possible values: true, false]

      --service-account-dir <DIR>
          kubegate: where the in-cluster service-account token is read

          [env: KUBEGATE_SERVICE_ACCOUNT_DIR=]
          [default: /var/run/secrets/kubernetes.io/serviceaccount]

      --wrapped <X>
          A default too long for its line

          [default:
          a b]

  -h, --help
          Print help

Examples:
  kubegate --port=0
";
    let found: Vec<(String, Option<String>)> = help_flags(help)
        .into_iter()
        .map(|flag| (flag.long.unwrap_or_default(), flag.default))
        .collect();
    let expected = [
        ("--port", Some("8001")),
        (
            "--accept-hosts",
            Some(r"^localhost$,^127\.0\.0\.1$,^\[::1\]$"),
        ),
        ("--generate-access-token", None),
        ("--disable-filter", Some("false")),
        (
            "--service-account-dir",
            Some("/var/run/secrets/kubernetes.io/serviceaccount"),
        ),
        ("--wrapped", Some("a b")),
        ("--help", None),
    ]
    .map(|(long, default)| (long.to_string(), default.map(str::to_string)));
    assert_eq!(found, expected);
    assert!(names("| `-p, --port` | `8001` |", "--port"));
    assert!(!names("| `--as-group` | none |", "--as"));
    assert!(!names("`--vmodule`", "--v"));
    assert_eq!(
        table_rows("| `--a` | `x\\|y` | z |\ntext"),
        [["`--a`", "`x\\|y`", "z"]]
    );
}

#[test]
fn every_long_flag_of_help_is_in_docs_flags_with_its_default() {
    // The width and colours of help are fixed, so that the layout read
    // above is the layout clap writes here: no terminal (stdin null, the
    // rest captured), 100 columns, no ANSI styles.
    let output = Command::new(env!("CARGO_BIN_EXE_kubegate"))
        .arg("--help")
        .env("COLUMNS", "100")
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("KUBEGATE_SERVICE_ACCOUNT_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("kubegate --help runs");
    assert!(
        output.status.success(),
        "kubegate --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let help = String::from_utf8(output.stdout).expect("--help writes UTF-8");
    let flags: Vec<HelpFlag> = help_flags(&help)
        .into_iter()
        .filter(|flag| {
            !matches!(
                flag.long.as_deref(),
                None | Some("--help") | Some("--version")
            )
        })
        .collect();
    assert!(
        flags.len() >= 10,
        "only {} flags read from kubegate --help; has clap's layout changed?\n{help}",
        flags.len()
    );

    let rows = table_rows(&read("docs/flags.md"));
    let mut missing = Vec::new();
    for flag in &flags {
        let long = flag.long.as_deref().unwrap_or_default();
        // The flag column names it; the default column gives the default
        // as `--help` prints it, in backticks.
        let named: Vec<&Vec<String>> = rows
            .iter()
            .filter(|row| row.first().is_some_and(|cell| names(cell, long)))
            .collect();
        if named.is_empty() {
            missing.push(format!("{long}: no table row of docs/flags.md names it"));
            continue;
        }
        if let Some(default) = &flag.default {
            let wanted = format!("`{default}`");
            let given = named
                .iter()
                .any(|row| row.get(1).is_some_and(|cell| cell.contains(&wanted)));
            if !given {
                missing.push(format!(
                    "{long}: its row in docs/flags.md does not give its default {wanted} (in the second column), as --help prints it"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/flags.md is behind kubegate --help:\n{}",
        missing.join("\n")
    );
}

/// The modules of a numbered map, in order: each line `N. [`name`]: …`.
/// Items that are not modules of the map (`27. `fuzz` (tests only)`) have
/// no brackets and are skipped.
fn numbered_modules<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<String> {
    lines
        .filter_map(|line| {
            let (number, rest) = line.split_once(". [`")?;
            number.parse::<u32>().ok()?;
            Some(rest.split_once('`')?.0.to_string())
        })
        .collect()
}

#[test]
fn the_architecture_page_lists_the_modules_of_lib_rs_in_order() {
    let lib = read("src/lib.rs");
    // As tests/layout.rs reads it: the `# Layout` section of the crate doc,
    // whose numbered lines are `//! N. [`name`]: …`.
    let stated = numbered_modules(
        lib.lines()
            .skip_while(|line| *line != "//! # Layout")
            .skip(1)
            .take_while(|line| !line.starts_with("//! # "))
            .filter_map(|line| line.strip_prefix("//! "))
            .map(str::trim_start),
    );
    let page = read("docs/architecture.md");
    // The `## Module map` section; the page's other sections may name
    // modules in numbered lists too, in the order a request meets them.
    let listed = numbered_modules(
        page.lines()
            .skip_while(|line| *line != "## Module map")
            .skip(1)
            .take_while(|line| !line.starts_with("## ")),
    );
    assert!(!stated.is_empty(), "no module map read from src/lib.rs");
    assert_eq!(
        listed, stated,
        "the numbered list under `## Module map` in docs/architecture.md names the modules of src/lib.rs's `# Layout` map, in the same order"
    );
}
