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

    // --- resources: the store itself ---
    /// The object store could not be configured or reached.
    #[error("{location}: {source}")]
    ObjectStore {
        location: String,
        #[source]
        source: object_store::Error,
    },
}
