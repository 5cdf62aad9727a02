//! External tools some tests drive (Chromium, Redis, curl) and other preconditions a machine may
//! lack. Locally a missing one skips the test with a printed line; under `CI=true` it fails the
//! test, so CI never reports `ok` for something it did not test.

use std::path::{Path, PathBuf};

/// Whether this run must test everything: the `CI` environment variable is `true` or `1`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// The path of the executable `tool` (searched in `PATH`, then `/usr/bin`), or `None` after a
/// printed skip line. Panics under `CI=true` when it is missing.
pub fn require_tool(tool: &str) -> Option<PathBuf> {
    require_tool_in(tool, in_ci())
}

/// [`require_tool`] with the CI decision given, so both outcomes can be tested.
pub fn require_tool_in(tool: &str, ci: bool) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate));
    if found.is_none() {
        skip_in(&format!("{tool} is not installed"), ci);
    }
    found
}

/// Every tool in `tools`, or `None` (after a skip line; a failure under `CI=true`) when one is
/// missing.
pub fn require_tools(tools: &[&str]) -> Option<Vec<PathBuf>> {
    tools.iter().map(|tool| require_tool(tool)).collect()
}

/// Skips the rest of a test for `reason`: a printed line locally, a failure under `CI=true`.
/// The caller returns right after.
pub fn skip(reason: &str) {
    skip_in(reason, in_ci());
}

fn skip_in(reason: &str, ci: bool) {
    assert!(
        !ci,
        "CI=true and this test cannot run: {reason} (.ci/run installs what the tests need)"
    );
    println!("skipping: {reason}");
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
