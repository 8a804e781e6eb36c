//! Stamps the build with the commit it was made from: `SEGMENT_AGENT_VERSION`
//! is the package version plus `+g<commit>` when built from a git checkout
//! (an operator's fleet runs many builds of one version; GetHost, the health
//! reports, the metrics and `--version` say which). Without git (a source
//! tarball) it is the package version alone.

use std::{path::Path, process::Command};

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    let commit = git(&["rev-parse", "--short=12", "HEAD"])
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let stamped = match commit {
        Some(c) => format!("{version}+g{c}"),
        None => version,
    };
    println!("cargo:rustc-env=SEGMENT_AGENT_VERSION={stamped}");
    // Run again when HEAD moves: a checkout (HEAD, the worktree's) or a
    // commit on the branch (its ref, in the repository's common dir).
    if let (Some(dir), Some(common)) = (
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) {
        let (dir, common) = (Path::new(&dir), Path::new(&common));
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        if let Ok(head) = std::fs::read_to_string(dir.join("HEAD"))
            && let Some(reference) = head.trim().strip_prefix("ref: ")
        {
            println!(
                "cargo:rerun-if-changed={}",
                common.join(reference).display()
            );
            println!(
                "cargo:rerun-if-changed={}",
                common.join("packed-refs").display()
            );
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// What `git ARGS` prints, trimmed; None without git or outside a checkout.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
}
