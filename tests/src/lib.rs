//! Small helpers shared by the end-to-end tests: locating built binaries, a private X display,
//! a WebDriver session against the real desktop window, and a place for test artifacts.

pub mod campaign;
pub mod kit;
pub mod webdriver;
pub mod xvfb;

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Directory for artifacts a test keeps (screenshots, logs): `artifacts/` at the workspace root,
/// or `FIELDPATCH_ARTIFACTS`.
pub fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("FIELDPATCH_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("artifacts"));
    std::fs::create_dir_all(&dir).expect("cannot create the artifacts directory");
    dir
}

/// Path of a binary built in the same target directory as the running test
/// (`target/<profile>/NAME`).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().and_then(|p| p.parent()).expect("test binary lives in deps/");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo nextest run --workspace` (or build it first)",
        path.display()
    );
    path
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
