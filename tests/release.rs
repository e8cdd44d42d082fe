//! The release: the production binary's hardening, the archive (the same
//! bytes twice), its CycloneDX SBOM against the binary's own embedded
//! dependency list, the krew manifest by krew's rules, the image built
//! from nothing, and the release workflow against GitHub's schema.

mod support;

use std::path::Path;

use support::*;

#[test]
fn the_production_binary_is_hardened() {
    let binary = production_binary();
    let readelf = |flag: &str| {
        let output = std::process::Command::new("readelf")
            .args([flag, "-W"])
            .arg(&binary)
            .output()
            .expect("readelf (binutils) runs; scripts/test installs it");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // Position-independent, so the kernel places it at a random address.
    assert!(readelf("-h").contains("DYN (Position-Independent Executable"));
    // Full RELRO: relocations made read-only, all of them at start.
    let segments = readelf("-l");
    assert!(segments.contains("GNU_RELRO"), "{segments}");
    let dynamic = readelf("-d");
    assert!(dynamic.contains("BIND_NOW"), "{dynamic}");
    // A stack that cannot be executed.
    let stack = segments
        .lines()
        .find(|line| line.trim_start().starts_with("GNU_STACK"))
        .expect("a GNU_STACK header");
    assert!(stack.contains(" RW ") && !stack.contains("RWE"), "{stack}");
}

#[test]
fn the_production_binary_holds_no_path_of_the_machine_that_built_it() {
    // What makes two checkouts build the same bytes: the source tree and
    // CARGO_HOME remapped (scripts/build-production), no time stamped in.
    let binary = std::fs::read(production_binary()).unwrap();
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap()));
    for path in [env!("CARGO_MANIFEST_DIR"), home.as_str()] {
        assert!(
            !binary.windows(path.len()).any(|w| w == path.as_bytes()),
            "{path} is in the binary"
        );
    }
    // Dependencies' panic locations name CARGO_HOME as remapped.
    assert!(
        binary
            .windows(b"/cargo/registry/".len())
            .any(|w| w == b"/cargo/registry/"),
        "no remapped dependency path in the binary"
    );
}

#[test]
fn the_release_archive_is_the_same_bytes_twice_and_holds_what_a_user_needs() {
    production_binary();
    let release = |out: &Path| {
        script("release", out);
        std::fs::read_to_string(out.join("SHA256SUMS")).unwrap()
    };
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sums = release(first.path());
    assert_eq!(
        sums,
        release(second.path()),
        "two runs, one commit, the same archive"
    );
    // cargo-binstall's default name, and a checksum `sha256sum -c` accepts
    // for every file a user downloads.
    let version = env!("CARGO_PKG_VERSION");
    let stem = format!("kubegate-{version}-x86_64-unknown-linux-gnu");
    let named: Vec<&str> = sums
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        named,
        [
            format!("kubegate-{version}-image.oci.tar"),
            format!("{stem}.cdx.json"),
            format!("{stem}.tar.gz"),
            "sidecar.yaml".to_string(),
        ]
    );
    let archive = &format!("{stem}.tar.gz");
    let check = std::process::Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(first.path())
        .output()
        .unwrap();
    assert!(check.status.success());
    let listing = std::process::Command::new("tar")
        .args(["-tvzf", archive])
        .current_dir(first.path())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in [
        "kubegate",
        "LICENSE",
        "README.md",
        "completions/kubegate.bash",
        "completions/kubegate.zsh",
        "completions/kubegate.fish",
        "man/kubegate.1",
    ] {
        assert!(
            listing.contains(&format!("{stem}/{file}")),
            "{file} missing: {listing}"
        );
    }
    assert!(
        listing.lines().all(|line| line.contains("0/0")),
        "{listing}"
    );
    // The binary in it is the production binary, byte for byte.
    let unpacked = tempfile::tempdir().unwrap();
    let untar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(first.path().join(archive))
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .unwrap();
    assert!(untar.success());
    let shipped = std::fs::read(unpacked.path().join(&stem).join("kubegate")).unwrap();
    assert!(shipped == std::fs::read(production_binary()).unwrap());
    let man = std::fs::read_to_string(unpacked.path().join(&stem).join("man/kubegate.1")).unwrap();
    assert!(
        man.contains(".TH kubegate 1") && man.contains("\\-\\-reject\\-paths"),
        "{man:.300}"
    );
}

/// Runs `scripts/NAME --no-build OUT` and returns the path it printed.
fn script(name: &str, out: &Path) -> std::path::PathBuf {
    script_with(name, &["--no-build"], out, &[])
}

/// Runs `scripts/NAME FLAGS… OUT` with `env` added and returns the path it
/// printed.
fn script_with(name: &str, flags: &[&str], out: &Path, env: &[(&str, &str)]) -> std::path::PathBuf {
    let output = std::process::Command::new(repository().join("scripts").join(name))
        .args(flags)
        .arg(out)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("scripts/{name} runs: {e}"));
    assert!(
        output.status.success(),
        "scripts/{name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A blob of an unpacked OCI layout, as JSON.
fn blob(layout: &Path, digest: &str) -> serde_json::Value {
    let path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn the_image_is_built_from_nothing_with_four_files_for_user_65532() {
    let binary = production_binary();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let archive = script("image", first.path());
    let layout = first.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let unpack = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(unpack.success());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = blob(&layout, &digest);
    let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/kubegate"])
    );
    assert!(
        config["config"]["ExposedPorts"]["8002/tcp"].is_object(),
        "{config}"
    );
    // One layer, from nothing: the binary, a CA bundle, passwd and group.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let size: u64 = layers.iter().map(|l| l["size"].as_u64().unwrap()).sum();
    assert!(size < 20 << 20, "the image is {size} bytes");
    let layer = layout.join("blobs/sha256").join(
        layers[0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&layer)
        .output()
        .unwrap();
    let mut files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|name| !name.ends_with('/'))
        .map(|name| name.trim_start_matches("./").to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "etc/group",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "usr/local/bin/kubegate"
        ]
    );
    // Owned by root, readable by all, the binary runnable by user 65532.
    let long = std::process::Command::new("tar")
        .arg("-tvf")
        .arg(&layer)
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&long.stdout).lines() {
        let mode = line.split_whitespace().next().unwrap();
        let wanted = match mode.starts_with('d') || line.ends_with("/kubegate") {
            true => "rwxr-xr-x",
            false => "rw-r--r--",
        };
        assert_eq!(&mode[1..], wanted, "{line}");
        assert!(line.contains(" 0/0 "), "{line}");
    }
    let shipped = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(&layer)
        .arg("usr/local/bin/kubegate")
        .output()
        .unwrap();
    assert!(
        shipped.stdout == std::fs::read(&binary).unwrap(),
        "the production binary, byte for byte"
    );
    // Built again from the same commit: the same bytes.
    let again = script("image", second.path());
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&archive).unwrap());
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a checker from tests/clients/ with the test tools' Python (on
/// PATH from scripts/test) and fails with what it printed.
fn python_check(script: &str, args: &[&Path]) -> String {
    let output = std::process::Command::new("python3")
        .arg(repository().join("tests/clients").join(script))
        .args(args)
        .output()
        .expect("python3 runs");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script}: {printed}\n(scripts/test installs its Python packages into target/test-venv)"
    );
    printed
}

/// `scripts/release --no-build --archive-only OUT`: the archive (its path)
/// and its SBOM.
fn archive_only(out: &Path) -> std::path::PathBuf {
    script_with("release", &["--no-build", "--archive-only"], out, &[])
}

#[test]
fn the_sbom_names_every_crate_the_binary_says_it_is_built_from() {
    let binary = production_binary();
    let out = tempfile::tempdir().unwrap();
    let archive = archive_only(out.path());
    let sbom = archive.with_file_name(
        archive
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".tar.gz", ".cdx.json"),
    );
    let printed = python_check("check_sbom.py", &[&binary, &sbom]);
    assert!(printed.contains("crates in the binary"), "{printed}");
    // No path of the machine that made it, as in the binary.
    let text = std::fs::read_to_string(&sbom).unwrap();
    assert!(
        !text.contains(env!("CARGO_MANIFEST_DIR")),
        "a build path in the SBOM"
    );
}

#[test]
fn the_krew_manifest_is_valid_by_krews_rules_and_matches_the_archive() {
    production_binary();
    let out = tempfile::tempdir().unwrap();
    let archive = archive_only(out.path());
    let release_url = "https://releases.example/kubegate/v0.1.0";
    let manifest = script_with(
        "krew-manifest",
        &[],
        out.path(),
        &[("RELEASE_URL", release_url)],
    );
    let printed = python_check(
        "check_krew.py",
        &[
            &repository().join("deploy/krew/plugin.schema.json"),
            &manifest,
            out.path(),
        ],
    );
    assert!(printed.contains("1 platform(s) valid"), "{printed}");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        text.contains(&format!("uri: {release_url}/{name}")),
        "{text}"
    );
    assert!(text.contains(&format!("version: v{}", env!("CARGO_PKG_VERSION"))));
    // The template alone is not installable: it has no platform.
    let template = std::process::Command::new("python3")
        .arg(repository().join("tests/clients/check_krew.py"))
        .arg(repository().join("deploy/krew/plugin.schema.json"))
        .arg(repository().join("deploy/krew/gate.yaml"))
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!template.status.success());
}

#[test]
fn the_release_workflow_is_valid_and_runs_scripts_that_exist() {
    let workflow = repository().join(".github/workflows/release.yml");
    let output = std::process::Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.github-workflows"])
        .arg(&workflow)
        .output()
        .expect("check-jsonschema runs (scripts/test installs it into target/test-venv)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&workflow).unwrap();
    let krew = std::fs::read_to_string(repository().join("scripts/krew-manifest")).unwrap();
    for target in text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- target: "))
    {
        assert!(
            krew.contains(&format!("*-{target})")),
            "krew-manifest knows no {target}"
        );
    }
    for script in text.split("scripts/").skip(1) {
        let name: String = script
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let path = repository().join("scripts").join(&name);
        assert!(
            path.is_file(),
            "the workflow runs scripts/{name}, which is missing"
        );
    }
}
