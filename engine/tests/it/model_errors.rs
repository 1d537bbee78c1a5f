//! A missing or malformed model is an error naming the file at fault.

use std::path::{Path, PathBuf};

use kiln_engine::model::{EmbeddingModel, resolve_model};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert")
}

/// A copy of the tiny model's directory that a test may break.
fn copy_tiny() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&tiny(), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn load_err(dir: &Path) -> String {
    EmbeddingModel::load_dir(dir).unwrap_err().to_string()
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn no_config() {
    let dir = copy_tiny();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn malformed_config() {
    let dir = copy_tiny();
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn unknown_architecture() {
    let dir = copy_tiny();
    edit_config(dir.path(), |v| v["model_type"] = "gpt2".into());
    let err = load_err(dir.path());
    assert!(err.contains("config.json") && err.contains("gpt2"), "{err}");
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let dir = copy_tiny();
    edit_config(dir.path(), |v| v["intermediate_size"] = 96.into());
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("intermediate.dense.weight"),
        "{err}"
    );
}

#[test]
fn missing_tensor() {
    let dir = copy_tiny();
    edit_config(dir.path(), |v| v["num_hidden_layers"] = 3.into());
    let err = load_err(dir.path());
    assert!(err.contains("missing tensor 'encoder.layer.2."), "{err}");
}

#[test]
fn pickle_weights_are_refused() {
    let dir = copy_tiny();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("refusing to load pickle"), "{err}");
}

#[test]
fn corrupt_weights() {
    let dir = copy_tiny();
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
}

#[test]
fn missing_tokenizer() {
    let dir = copy_tiny();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("tokenizer.json"), "{err}");
}

/// A syntax error inside tokenizer.json's `decoder` made tokenizers 0.22
/// panic (an `expect` in its deserializer); now an error naming the file
/// and the place.
#[test]
fn malformed_tokenizer_json() {
    let dir = copy_tiny();
    let path = dir.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text
        .find("\"decoder\"")
        .expect("the tiny model has a decoder");
    let broken = format!(
        "{}\"decoder\": {{\"type\": \"WordPiece\", \"prefix\": }}}}",
        &text[..at]
    );
    std::fs::write(&path, broken).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("tokenizer.json") && err.contains("not valid JSON"),
        "{err}"
    );
}

#[test]
fn unknown_names_say_where_they_looked() {
    let err = resolve_model("no-such-model-kiln").unwrap_err().to_string();
    assert!(
        err.contains("model 'no-such-model-kiln' not found"),
        "{err}"
    );
    assert_eq!(resolve_model(tiny().to_str().unwrap()).unwrap(), tiny());
}
