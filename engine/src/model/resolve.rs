//! Where a model named by the user is found: an explicit directory; a name
//! under `KILN_MODEL_DIR` (default: the per-user cache, `~/.cache/kiln/models`);
//! or the Hugging Face cache (`~/.cache/huggingface/hub/models--ORG--NAME/snapshots/*`).

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// The default model of `embed(text)`.
pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// The directory `kiln model fetch` installs into and names are looked up in.
pub fn model_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KILN_MODEL_DIR") {
        return Some(PathBuf::from(dir));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".cache")))?;
    Some(cache.join("kiln").join("models"))
}

fn hf_hub() -> Option<PathBuf> {
    if let Some(hub) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(hub));
    }
    if let Some(hf) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(hf).join("hub"));
    }
    home().map(|h| h.join(".cache").join("huggingface").join("hub"))
}

fn is_model_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file()
}

/// Resolves a model name or path to its directory.
pub fn resolve_model(name_or_path: &str) -> Result<PathBuf> {
    let mut searched = Vec::new();
    let as_path = Path::new(name_or_path);
    if as_path.is_dir() {
        if is_model_dir(as_path) {
            return Ok(as_path.to_path_buf());
        }
        return Err(EngineError::Model {
            path: as_path.display().to_string(),
            reason: "no config.json in this directory".to_string(),
        });
    }
    searched.push(format!("path {name_or_path}"));
    let short = name_or_path.rsplit('/').next().unwrap_or(name_or_path);
    if let Some(dir) = model_dir() {
        for candidate in [dir.join(name_or_path), dir.join(short)] {
            if is_model_dir(&candidate) {
                return Ok(candidate);
            }
        }
        searched.push(dir.display().to_string());
    }
    if let Some(hub) = hf_hub() {
        let repo = if name_or_path.contains('/') {
            name_or_path.to_string()
        } else {
            format!("sentence-transformers/{name_or_path}")
        };
        let snapshots = hub
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("snapshots");
        if let Ok(entries) = std::fs::read_dir(&snapshots) {
            let mut dirs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_model_dir(p))
                .collect();
            dirs.sort();
            if let Some(dir) = dirs.pop() {
                return Ok(dir);
            }
        }
        searched.push(hub.display().to_string());
    }
    Err(EngineError::ModelNotFound {
        name: name_or_path.to_string(),
        searched: searched.join(", "),
    })
}
