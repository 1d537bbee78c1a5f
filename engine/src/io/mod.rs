//! I/O for execution: object stores (with Parquet footers checked on the
//! way out) and credential redaction.

pub mod arrow_schema_check;
pub mod committed;
pub mod object_store_registry;
pub mod parquet_footer;
pub mod parquet_metadata;
pub mod redact;

pub use object_store_registry::{
    KilnObjectStoreRegistry, is_store_option, shown_location, store_url_key,
};
pub use redact::{redact, register_secret};
