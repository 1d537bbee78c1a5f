//! Models loaded once per process and shared by every query that names them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::model::{EmbeddingModel, resolve_model};

static MODELS: Mutex<BTreeMap<PathBuf, Arc<EmbeddingModel>>> = Mutex::new(BTreeMap::new());

/// The model `name_or_path` resolves to, loaded on first use.
pub fn shared_model(name_or_path: &str) -> Result<Arc<EmbeddingModel>> {
    let dir = resolve_model(name_or_path)?;
    let mut models = MODELS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(model) = models.get(&dir) {
        return Ok(Arc::clone(model));
    }
    let model = Arc::new(EmbeddingModel::load_dir(&dir)?);
    models.insert(dir, Arc::clone(&model));
    Ok(model)
}
