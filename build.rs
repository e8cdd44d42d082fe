//! Names the commit kubegate is built from, for `kubegate --version`:
//! `git rev-parse` where the source is a checkout, `unknown` elsewhere (a
//! source archive, a container build without `.git`).
//!
//! It re-runs only when the commit can have changed. Cargo re-runs a build
//! script on every build when a file it names does not exist, so only the
//! git files that exist in this checkout are named: `HEAD`, the branch's
//! loose ref and `packed-refs` where there are such files (git asked where
//! they are, so worktrees work too).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KUBEGATE_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    // `refs/heads/main` where HEAD names a branch; nothing when detached.
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]).map(PathBuf::from)
            && path.exists()
        {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// What `git ARGS` prints, trimmed, when it succeeds and prints something.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_string())
}
