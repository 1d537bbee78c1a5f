//! Runs the Python package's pytest suite (python/tests/) against the
//! extension module this build produced, so `cargo test --workspace` (and
//! so CI) tests the Python API. Needs `KILN_TEST_PYTHON`, an interpreter with
//! pytest, pyarrow, polars and pandas (scripts/test installs them); without
//! it the suite is skipped with a note, unless `KILN_TEST_REQUIRE_PYTHON`
//! is set.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The extension module cargo built for this test: `lib_kiln.so` beside the
/// test binary's `deps/` folder.
fn extension() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("deps/");
    for dir in [deps, deps.parent().expect("the profile's folder")] {
        let candidate = dir.join("lib_kiln.so");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("lib_kiln.so not found beside {}", deps.display());
}

/// A package folder `kiln/` that imports: the Python sources of
/// python/kiln/ and the built extension as `_kiln.abi3.so`.
fn package(root: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("kiln");
    let site = root.join("site");
    let dest = site.join("kiln");
    std::fs::create_dir_all(&dest).expect("create the package folder");
    for entry in std::fs::read_dir(&source).expect("python/kiln/") {
        let entry = entry.expect("a package file");
        let path = entry.path();
        if path.is_file() {
            std::fs::copy(&path, dest.join(entry.file_name())).expect("copy a package file");
        }
    }
    std::fs::copy(extension(), dest.join("_kiln.abi3.so")).expect("copy the extension");
    site
}

#[test]
fn python_suite() {
    let Some(python) = std::env::var_os("KILN_TEST_PYTHON") else {
        assert!(
            std::env::var_os("KILN_TEST_REQUIRE_PYTHON").is_none(),
            "KILN_TEST_REQUIRE_PYTHON is set but KILN_TEST_PYTHON is not"
        );
        eprintln!(
            "skipped: set KILN_TEST_PYTHON to an interpreter with pytest, pyarrow, polars and pandas"
        );
        return;
    };
    let root = tempfile::tempdir().expect("a temporary folder");
    let site = package(root.path());
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut command = Command::new(&python);
    command
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"])
        .arg(&tests)
        // Not the package's folder: its kiln/ has no extension in it.
        .current_dir(root.path())
        .env("PYTHONPATH", &site)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    // The `kiln` binary of the same build, for the cluster test (built when
    // the workspace's tests are; absent after `cargo test -p kiln-python`).
    let profile_dir = extension()
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    if let Some(kiln) = profile_dir.map(|d| d.join("kiln")).filter(|k| k.is_file()) {
        command.env("KILN_TEST_KILN_BIN", kiln);
    }
    let status = command.status().expect("start pytest");
    assert!(status.success(), "the Python suite failed: {status}");
}
