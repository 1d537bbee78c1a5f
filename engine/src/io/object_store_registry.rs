//! An object-store registry that creates a store on first use of a URL.
//!
//! DataFusion asks its registry for the store of every location it touches
//! (scans, `COPY ... TO`, `SELECT * FROM 's3://...'`). Kiln's registry answers
//! for any supported scheme without prior registration: the store is built
//! from the URL and the standard environment variables (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`), or from the options of a `CREATE EXTERNAL TABLE`, which take
//! precedence for that bucket. Stores are cached per `scheme://authority`.
//!
//! Every store is wrapped in [`FooterCheckedStore`] (a Parquet file whose
//! footer lies about its length is an error, not a panic in the reader) and
//! [`CommittedListingStore`] (listings show committed data only: no hidden
//! files, and in a directory Kiln committed, the files of its manifest).
//!
//! Network stores get bounded timeouts and retries, so an unreachable
//! endpoint is an error within seconds rather than a hang.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreRegistry;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use crate::error::{EngineError, Result};
use crate::io::committed::CommittedListingStore;
use crate::io::parquet_footer::FooterCheckedStore;
use crate::io::redact::{is_sensitive_name, register_env_secrets, register_secret};

/// Time allowed to open a connection to a store.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one request, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Retries of a failed request, and the time budget for all of them.
const MAX_RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);

/// The cloud a scheme belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cloud {
    Local,
    Memory,
    Aws,
    Google,
    Azure,
    Http,
}

impl Cloud {
    fn of(url: &Url) -> Result<Cloud> {
        Ok(match url.scheme() {
            "file" => Cloud::Local,
            "memory" => Cloud::Memory,
            "s3" | "s3a" => Cloud::Aws,
            "gs" | "gcs" => Cloud::Google,
            "az" | "azure" | "abfs" | "abfss" | "adl" => Cloud::Azure,
            "http" | "https" => Cloud::Http,
            other => {
                return Err(EngineError::UnsupportedScheme {
                    scheme: other.to_string(),
                });
            }
        })
    }

    /// The prefix of this cloud's options in `CREATE EXTERNAL TABLE ... OPTIONS`.
    fn option_prefix(self) -> Option<&'static str> {
        match self {
            Cloud::Aws => Some("aws."),
            Cloud::Google => Some("gcp."),
            Cloud::Azure => Some("azure."),
            _ => None,
        }
    }
}

/// Whether a `CREATE EXTERNAL TABLE` option configures the store rather than
/// the file format (`aws.*`, `gcp.*`, `google.*`, `azure.*`).
pub fn is_store_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["aws.", "gcp.", "google.", "azure."]
        .iter()
        .any(|p| key.starts_with(p))
}

/// How a user wrote an object of the store at `store_key` (a
/// [`store_url_key`]): a local path with its leading `/`, anything else as
/// its URL.
pub fn shown_location(store_key: &str, location: &object_store::path::Path) -> String {
    if store_key.starts_with("file:") {
        format!("/{location}")
    } else {
        format!("{}/{location}", store_key.trim_end_matches('/'))
    }
}

/// The cache key of a URL's store: `scheme://authority`, as DataFusion's own
/// registry keys them.
pub fn store_url_key(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: MAX_RETRIES,
        retry_timeout: RETRY_TIMEOUT,
    }
}

/// The configuration of one cloud's store: its environment variables (those
/// object_store knows; others are ignored, as every SDK does), then the
/// explicit `options`, which therefore win. An unknown option is an error.
fn config_pairs<K: std::str::FromStr>(
    cloud: Cloud,
    env_prefix: &str,
    options: &[(String, String)],
    location: &str,
) -> Result<Vec<(K, String)>> {
    let mut pairs: Vec<(K, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(env_prefix))
        .filter_map(|(k, v)| Some((k.to_ascii_lowercase().parse().ok()?, v)))
        .collect();
    for (key, value) in options {
        let k = parse_option::<K>(cloud, key).ok_or_else(|| EngineError::UnknownStoreOption {
            key: key.clone(),
            location: location.to_string(),
        })?;
        pairs.push((k, value.clone()));
    }
    Ok(pairs)
}

/// The object_store config key an option names: `aws.secret_access_key` is
/// `aws_secret_access_key`, `azure.account_name` is `account_name`; `google.x`
/// is accepted for `gcp.x`. `None` when the option is not for this cloud or
/// the key is unknown.
fn parse_option<K: std::str::FromStr>(cloud: Cloud, key: &str) -> Option<K> {
    let key = key.to_ascii_lowercase();
    let rest = match cloud {
        Cloud::Google => key
            .strip_prefix("gcp.")
            .or_else(|| key.strip_prefix("google."))?,
        _ => key.strip_prefix(cloud.option_prefix()?)?,
    };
    let prefix = match cloud {
        Cloud::Aws => "aws_",
        Cloud::Google => "google_",
        _ => "azure_",
    };
    format!("{prefix}{rest}")
        .parse()
        .ok()
        .or_else(|| rest.parse().ok())
}

fn store_error(url: &Url, source: object_store::Error) -> EngineError {
    EngineError::ObjectStore {
        location: store_url_key(url),
        source,
    }
}

/// Builds the store for `url` from the environment, then `options` (the
/// `aws.*` / `gcp.*` / `azure.*` options of a table), which win.
fn build_store(url: &Url, options: &[(String, String)]) -> Result<Arc<dyn ObjectStore>> {
    let cloud = Cloud::of(url)?;
    let location = store_url_key(url);
    // Options given for another cloud, or unknown keys, are user errors: a
    // silently ignored typo in a credential option is a miserable thing to debug.
    for (key, value) in options {
        if is_sensitive_name(key) {
            register_secret(value);
        }
    }
    if cloud.option_prefix().is_none()
        && let Some((key, _)) = options.first()
    {
        return Err(EngineError::UnknownStoreOption {
            key: key.clone(),
            location,
        });
    }
    let store: Arc<dyn ObjectStore> = match cloud {
        Cloud::Local => Arc::new(LocalFileSystem::new()),
        Cloud::Memory => Arc::new(InMemory::new()),
        Cloud::Aws => {
            let mut b = AmazonS3Builder::new()
                .with_client_options(client_options())
                .with_retry(retry_config());
            let allow_http = AmazonS3ConfigKey::Client(object_store::ClientConfigKey::AllowHttp);
            let mut http_said = false;
            for (k, value) in config_pairs::<AmazonS3ConfigKey>(cloud, "AWS_", options, &location)?
            {
                http_said |= k == allow_http;
                b = b.with_config(k, value);
            }
            // An http:// endpoint (MinIO, moto, a local gateway) is only
            // reachable with plain HTTP allowed; asking for the endpoint is
            // asking for that, unless AWS_ALLOW_HTTP says otherwise. (The
            // builder always has a value for it, from the client options.)
            if b.get_config_value(&AmazonS3ConfigKey::Endpoint)
                .is_some_and(|e| e.starts_with("http://"))
                && !http_said
            {
                b = b.with_allow_http(true);
            }
            Arc::new(
                b.with_url(url.as_str())
                    .build()
                    .map_err(|e| store_error(url, e))?,
            )
        }
        Cloud::Google => {
            let mut b = GoogleCloudStorageBuilder::new()
                .with_client_options(client_options())
                .with_retry(retry_config());
            for (k, value) in config_pairs::<GoogleConfigKey>(cloud, "GOOGLE_", options, &location)?
            {
                b = b.with_config(k, value);
            }
            Arc::new(
                b.with_url(url.as_str())
                    .build()
                    .map_err(|e| store_error(url, e))?,
            )
        }
        Cloud::Azure => {
            let mut b = MicrosoftAzureBuilder::new()
                .with_client_options(client_options())
                .with_retry(retry_config());
            for (k, value) in config_pairs::<AzureConfigKey>(cloud, "AZURE_", options, &location)? {
                b = b.with_config(k, value);
            }
            Arc::new(
                b.with_url(url.as_str())
                    .build()
                    .map_err(|e| store_error(url, e))?,
            )
        }
        Cloud::Http => Arc::new(
            HttpBuilder::new()
                .with_client_options(client_options().with_allow_http(true))
                .with_retry(retry_config())
                .with_url(location.as_str())
                .build()
                .map_err(|e| store_error(url, e))?,
        ),
    };
    Ok(store)
}

/// Kiln's [`ObjectStoreRegistry`]: stores made on first use, cached per
/// `scheme://authority`.
#[derive(Debug)]
pub struct KilnObjectStoreRegistry {
    stores: RwLock<HashMap<String, Layers>>,
}

/// A store behind Kiln's layers: `checked` (Parquet footers and oversized
/// reads checked) and `listed` (that, with listings showing committed data
/// only: [`CommittedListingStore`]), which is what DataFusion is given.
#[derive(Debug, Clone)]
struct Layers {
    checked: Arc<dyn ObjectStore>,
    listed: Arc<dyn ObjectStore>,
}

impl Layers {
    fn over(store: Arc<dyn ObjectStore>, key: &str) -> Layers {
        let checked = FooterCheckedStore::wrap(store, key);
        Layers {
            listed: CommittedListingStore::wrap(Arc::clone(&checked)),
            checked,
        }
    }
}

impl Default for KilnObjectStoreRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl KilnObjectStoreRegistry {
    pub fn new() -> Self {
        register_env_secrets();
        let mut stores: HashMap<String, Layers> = HashMap::new();
        stores.insert(
            "file://".to_string(),
            Layers::over(Arc::new(LocalFileSystem::new()), "file://"),
        );
        KilnObjectStoreRegistry {
            stores: RwLock::new(stores),
        }
    }

    /// (Re)builds the store for `url` with explicit `options` (keys such as
    /// `aws.access_key_id`), replacing any store cached for its bucket.
    pub fn configure(&self, url: &Url, options: &[(String, String)]) -> Result<()> {
        let store = build_store(url, options)?;
        self.insert(url, store);
        Ok(())
    }

    /// The store of `url` with every listing unfiltered (hidden files and
    /// files of no commit included): for Kiln's own commits, which must see
    /// and clean what readers do not.
    pub fn unfiltered_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        Ok(self.layers(url)?.checked)
    }

    /// Caches `store` for `url`'s bucket, behind Kiln's layers. A store
    /// taken from this registry and registered again is kept as it is.
    fn insert(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        let key = store_url_key(url);
        let mut stores = self.stores.write().unwrap_or_else(|p| p.into_inner());
        let ours = stores
            .values()
            .find(|l| Arc::ptr_eq(&l.listed, &store) || Arc::ptr_eq(&l.checked, &store))
            .cloned();
        let layers = ours.unwrap_or_else(|| Layers::over(store, &key));
        stores.insert(key, layers).map(|l| l.listed)
    }

    fn layers(&self, url: &Url) -> datafusion::error::Result<Layers> {
        let key = store_url_key(url);
        if let Some(layers) = self
            .stores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(layers.clone());
        }
        let mut stores = self.stores.write().unwrap_or_else(|p| p.into_inner());
        // Another thread may have built it while we waited for the lock.
        if let Some(layers) = stores.get(&key) {
            return Ok(layers.clone());
        }
        let store = build_store(url, &[]).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let layers = Layers::over(store, &key);
        stores.insert(key, layers.clone());
        Ok(layers)
    }
}

impl ObjectStoreRegistry for KilnObjectStoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.insert(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.write().unwrap_or_else(|p| p.into_inner());
        stores
            .remove(&store_url_key(url))
            .map(|l| l.listed)
            .ok_or_else(|| {
                DataFusionError::Execution(format!("no object store registered for {url}"))
            })
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        Ok(self.layers(url)?.listed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_keys_map_to_object_store_keys() {
        assert_eq!(
            parse_option::<AmazonS3ConfigKey>(Cloud::Aws, "aws.secret_access_key"),
            Some(AmazonS3ConfigKey::SecretAccessKey)
        );
        assert_eq!(
            parse_option::<AmazonS3ConfigKey>(Cloud::Aws, "AWS.Region"),
            Some(AmazonS3ConfigKey::Region)
        );
        assert_eq!(
            parse_option::<GoogleConfigKey>(Cloud::Google, "google.service_account_path"),
            Some(GoogleConfigKey::ServiceAccount)
        );
        assert_eq!(
            parse_option::<AzureConfigKey>(Cloud::Azure, "azure.account_name"),
            Some(AzureConfigKey::AccountName)
        );
        assert_eq!(
            parse_option::<AmazonS3ConfigKey>(Cloud::Aws, "gcp.bucket"),
            None
        );
    }

    #[test]
    fn unknown_schemes_and_options_are_errors() {
        let reg = KilnObjectStoreRegistry::new();
        let err = reg
            .get_store(&Url::parse("ftp://host/x").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsupported location scheme 'ftp://'"),
            "{err}"
        );
        let err = reg
            .configure(
                &Url::parse("s3://bucket/x").unwrap(),
                &[("aws.regoin".into(), "eu-west-1".into())],
            )
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unknown storage option 'aws.regoin' for s3://bucket");
    }

    #[test]
    fn memory_stores_persist_per_authority() {
        let reg = KilnObjectStoreRegistry::new();
        let a = reg
            .get_store(&Url::parse("memory://one/x").unwrap())
            .unwrap();
        let b = reg
            .get_store(&Url::parse("memory://one/y").unwrap())
            .unwrap();
        let c = reg
            .get_store(&Url::parse("memory://two/y").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn every_documented_scheme_builds_a_store() {
        let reg = KilnObjectStoreRegistry::new();
        for url in [
            "file:///tmp",
            "memory://m/",
            "s3://bucket/key",
            "s3a://bucket/key",
            "gs://bucket/key",
            "az://container/key",
            "abfss://container@account.dfs.core.windows.net/key",
            "https://example.com/data/",
        ] {
            let url = Url::parse(url).unwrap();
            // Azure needs an account name before it can build a client.
            let options: Vec<(String, String)> = if url.scheme() == "az" {
                vec![("azure.account_name".into(), "kilntest".into())]
            } else {
                vec![]
            };
            reg.configure(&url, &options)
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            reg.get_store(&url).unwrap();
        }
    }
}
