//! Errors of the execution layer, grouped by who is at fault.

/// The result type of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Everything that can go wrong in kiln-engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    // --- the user's input ---
    /// A location whose scheme Kiln has no store for.
    #[error(
        "unsupported location scheme '{scheme}://' (supported: local paths, file://, s3://, s3a://, \
         gs://, az://, abfs://, abfss://, http://, https://, memory://)"
    )]
    UnsupportedScheme { scheme: String },

    /// A store option Kiln does not know, e.g. `OPTIONS ('aws.regoin' ...)`.
    #[error("unknown storage option '{key}' for {location}")]
    UnknownStoreOption { key: String, location: String },

    /// A location that is not a URL or path.
    #[error("invalid location '{location}': {source}")]
    InvalidLocation {
        location: String,
        #[source]
        source: url::ParseError,
    },

    /// `kiln.embed_precision` names a mode the device cannot run.
    #[error("kiln.embed_precision = '{requested}' cannot run on {device}: {reason}")]
    Precision {
        requested: &'static str,
        device: String,
        reason: String,
    },

    /// A model directory that is incomplete or malformed.
    #[error("model {path}: {reason}")]
    Model { path: String, reason: String },

    /// A model file that could not be parsed.
    #[error("model {path}: {source}")]
    ModelJson {
        path: String,
        #[source]
        source: serde_json::Error,
    },

    /// A tensor the architecture needs is not in the weights.
    #[error("model {path}: missing tensor '{name}'")]
    MissingTensor { path: String, name: String },

    /// A tensor whose shape disagrees with config.json.
    #[error("model {path}: tensor '{name}' has shape {found:?}, config.json implies {expected:?}")]
    TensorShape {
        path: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// Pickle weights can run arbitrary code when loaded; Kiln never loads them.
    #[error(
        "model {path}: refusing to load pickle weights (pytorch_model.bin); \
         convert them to model.safetensors"
    )]
    PickleRefused { path: String },

    /// No model by that name in any of the places searched.
    #[error("model '{name}' not found (looked in {searched})")]
    ModelNotFound { name: String, searched: String },

    /// tokenizer.json could not be loaded or applied.
    #[error("tokenizer {path}: {source}")]
    Tokenizer {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    // --- resources: the store itself ---
    /// A local file could not be read.
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The object store could not be configured or reached.
    #[error("{location}: {source}")]
    ObjectStore {
        location: String,
        #[source]
        source: object_store::Error,
    },

    /// A device kernel failed (wgpu, CUDA) or refused its input.
    #[error("{0}")]
    Kernel(#[from] kiln_kernels::KernelError),

    /// The parquet crate panicked decoding a scan's page data (corrupt
    /// pages it cannot check before decoding them); see
    /// [`crate::exec::DecodeGuardExec`].
    #[error(
        "{files} is not a valid Parquet file: its page data cannot be decoded (the Parquet reader failed: {panic})"
    )]
    Undecodable { files: String, panic: String },
}
