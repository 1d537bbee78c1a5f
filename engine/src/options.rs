//! The `kiln.*` session options, settable with `SET kiln.device = 'cpu'` and
//! read by Kiln's rules (kiln-planner) and operators (here). They live in
//! the engine so that the operators read them as a type, not by scanning
//! the session's option strings.

use std::any::Any;

use datafusion::common::config::{
    ConfigEntry, ConfigExtension, ConfigField, ExtensionOptions, Visit,
};
use datafusion::common::{Result, config_namespace, plan_datafusion_err};
use datafusion::execution::SessionState;
use kiln_kernels::codegen::MAX_GROUPS;

config_namespace! {
    /// Kiln's session options.
    pub struct KilnOptions {
        /// The device Kiln's operators run on: auto, cpu, wgpu, wgpu:N, cuda or cuda:N.
        pub device: String, default = "auto".to_string()
        /// Device memory one vector-search tile may use (its corpus vectors and
        /// its score matrix), e.g. 256MiB or 1GiB. The corpus streams through
        /// tiles of this size, so it may be far larger than the budget.
        pub vector_memory_budget: String, default = "256MiB".to_string()
        /// The device memory Kiln's allocations on a device may take
        /// together (model weights, encoder activations, stage buffers,
        /// search tiles): auto (90% of a GPU's memory where the device
        /// reports it, as CUDA does; no limit for wgpu, which does not, and
        /// for the CPU), none, a share such as 75%, or a size such as 20GiB.
        /// A batch that does not fit is split and retried, then run on the
        /// CPU. One budget per device and process: the last session to use
        /// a device sets it.
        pub device_memory_limit: String, default = "auto".to_string()
        /// Queries scored per pass over the corpus in knn_join.
        pub knn_query_batch: usize, default = 1024
        /// Rewrite ORDER BY <similarity>(column, <constant>) LIMIT k into one
        /// vector top-k operator.
        pub vector_topk: bool, default = true
        /// Lower filters and projections into fused GPU stages when kiln.device
        /// is a GPU; false keeps every relational operator on the CPU.
        pub gpu_transforms: bool, default = true
        /// Let filters run in GPU stages.
        pub gpu_filter: bool, default = true
        /// Let projections run in GPU stages.
        pub gpu_projection: bool, default = true
        /// Let partial aggregates (sum, count, min, max, avg, with or without
        /// GROUP BY) run in GPU stages.
        pub gpu_aggregate: bool, default = true
        /// Let ORDER BY ... LIMIT k (k at most 128) run in GPU stages.
        pub gpu_sort: bool, default = true
        /// A GROUP BY on the GPU folds a device batch of at most this many
        /// distinct key combinations (1 to 256) per tile of rows in shared
        /// memory; a batch with more is folded with per-group atomics (see
        /// kiln.gpu_group_atomics) or, where the device cannot, on the CPU.
        pub gpu_max_groups: usize, default = 64
        /// Fold device batches with more GROUP BY key combinations than
        /// kiln.gpu_max_groups with per-group atomics on the device (any
        /// number of groups; float sums only on CUDA). Off: such batches are
        /// aggregated on the CPU.
        pub gpu_group_atomics: bool, default = true
        /// Number GROUP BY keys on the device (a hash table of row indices)
        /// when the GPU computes every key; off, or for other keys
        /// (strings, dictionaries), the host numbers each device batch's keys.
        pub gpu_group_numbering: bool, default = true
        /// The cost model keeps a stage on the CPU when its input is estimated
        /// below this many rows (moving the data would cost more than it saves).
        pub gpu_min_rows: usize, default = 100_000
        /// Rows a GPU stage gathers into one device batch.
        pub gpu_batch_rows: usize, default = 1_048_576
        /// Rows embed() in a projection gathers across input batches before
        /// the encoder runs (grouped by length into token-budget batches).
        pub embed_batch_rows: usize, default = 16_384
        /// The salt of mask_pii(text, types, 'hash'): the same salt gives the
        /// same hashes (so joins on masked values work across jobs that share
        /// it). Read when the function runs, so it is in no plan, EXPLAIN,
        /// error or log; SHOW and information_schema list it like any setting.
        pub pii_salt: String, default = String::new()
        /// The arithmetic of the encoder's dense layers: f32 (the default),
        /// int8 (dynamic quantization on the CPU: cosine >= 0.995 with f32),
        /// bf16, f16 (CUDA) or auto (the fastest mode whose accuracy
        /// contract holds on the device). A mode the device cannot run is
        /// refused with the reason.
        pub embed_precision: String, default = "f32".to_string()
        /// Where embed() keeps the embeddings it computed, as Parquet
        /// (`s3://bucket/cache/`, a local directory), and looks them up
        /// before it embeds; empty: no cache (the default).
        pub embed_cache: String, default = String::new()
        /// A job's `COPY` whose rows are computed row by row from files
        /// runs in parts over slices of its input of about this size (a
        /// Parquet file larger is cut into byte ranges, each holding whole
        /// row groups); each part done is checkpointed, and a resumed job
        /// (`kiln run --resume`) skips the parts done.
        pub job_part_size: String, default = "64MiB".to_string()
        /// The most outputs of a job that run at once: consecutive `COPY`
        /// steps that do not read what another writes (nor write what
        /// another reads) run together; 1 runs every step alone.
        pub job_concurrent_outputs: usize, default = 4
        /// An as-of join whose right (feature) side has at most this many
        /// rows by its statistics (Parquet's row counts) reads that side
        /// into memory and looks each event up in it, without sorting the
        /// events; a larger or uncounted side is sorted and merged with the
        /// events (spilling). 0 always sorts and merges.
        pub asof_probe_rows: usize, default = 10_000_000
        /// The deepest nesting of expressions (`1+1+...`, `a AND b AND ...`)
        /// and set operations (`UNION ALL` chains) a statement may have;
        /// deeper statements are refused before planning, whose time grows
        /// with the square of the depth.
        pub max_expression_depth: usize, default = 2_000
        /// Cancel a statement that runs longer than this (e.g. 30s, 5min,
        /// 1h); 0 or empty: no limit.
        pub statement_timeout: String, default = "0".to_string()
    }
}

impl ConfigExtension for KilnOptions {
    const PREFIX: &'static str = "kiln";
}

/// Written by hand rather than by `extensions_options!`, whose entries carry
/// no prefix (`device`, not `kiln.device`): a Ballista client ships a
/// session's options to the scheduler and executors as `entries()`, which
/// they `set` back by key, so an unprefixed key would be dropped there and
/// every `SET kiln.*` lost on a cluster.
impl ExtensionOptions for KilnOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    /// Sets one option and checks it at once, so a bad value is refused by
    /// the `SET` that gives it rather than by a later statement.
    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let mut next = self.clone();
        ConfigField::set(&mut next, key, value)?;
        next.validate()?;
        *self = next;
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        struct Entries(Vec<ConfigEntry>);
        impl Visit for Entries {
            fn some<V: std::fmt::Display>(
                &mut self,
                key: &str,
                value: V,
                description: &'static str,
            ) {
                self.0.push(ConfigEntry {
                    key: key.to_string(),
                    value: Some(value.to_string()),
                    description,
                });
            }

            fn none(&mut self, key: &str, description: &'static str) {
                self.0.push(ConfigEntry {
                    key: key.to_string(),
                    value: None,
                    description,
                });
            }
        }
        let mut entries = Entries(Vec::new());
        ConfigField::visit(self, &mut entries, Self::PREFIX, "");
        entries.0
    }
}

/// The range `kiln.gpu_batch_rows` may take: below, every device launch
/// carries a few rows and the transfers dominate.
pub const GPU_BATCH_ROWS: std::ops::RangeInclusive<usize> = 1024..=(1 << 30);

/// The largest size `kiln.vector_memory_budget` takes (1 PiB).
const MAX_BUDGET_BYTES: u64 = 1 << 50;

impl KilnOptions {
    /// Checks every option's value; the error names the option.
    pub fn validate(&self) -> Result<()> {
        self.device
            .parse::<kiln_kernels::DeviceRequest>()
            .map_err(|e| plan_datafusion_err!("kiln.device: {e}"))?;
        parse_bytes(&self.vector_memory_budget)
            .and_then(|b| {
                if b > MAX_BUDGET_BYTES {
                    Err(format!(
                        "'{}' is more than the 1PiB Kiln accepts",
                        self.vector_memory_budget
                    ))
                } else {
                    Ok(b)
                }
            })
            .map_err(|e| plan_datafusion_err!("kiln.vector_memory_budget: {e}"))?;
        parse_duration(&self.statement_timeout)
            .map_err(|e| plan_datafusion_err!("kiln.statement_timeout: {e}"))?;
        self.embed_precision()?;
        self.job_part_bytes()?;
        parse_memory_limit(&self.device_memory_limit)
            .map_err(|e| plan_datafusion_err!("kiln.device_memory_limit: {e}"))?;
        let at_least_one = [
            ("kiln.knn_query_batch", self.knn_query_batch),
            ("kiln.embed_batch_rows", self.embed_batch_rows),
            ("kiln.max_expression_depth", self.max_expression_depth),
            ("kiln.job_concurrent_outputs", self.job_concurrent_outputs),
        ];
        for (name, value) in at_least_one {
            if value == 0 {
                return Err(plan_datafusion_err!("{name} must be at least 1, not 0"));
            }
        }
        if !GPU_BATCH_ROWS.contains(&self.gpu_batch_rows) {
            return Err(plan_datafusion_err!(
                "kiln.gpu_batch_rows must be between {} and {}, not {}",
                GPU_BATCH_ROWS.start(),
                GPU_BATCH_ROWS.end(),
                self.gpu_batch_rows
            ));
        }
        if self.gpu_max_groups == 0 || self.gpu_max_groups > MAX_GROUPS {
            return Err(plan_datafusion_err!(
                "kiln.gpu_max_groups must be between 1 and {MAX_GROUPS}, not {}",
                self.gpu_max_groups
            ));
        }
        Ok(())
    }

    /// `kiln.device_memory_limit` for the device `info`: its budget in
    /// bytes, `None` for no limit.
    pub fn device_memory_limit(&self, info: &kiln_kernels::DeviceInfo) -> Result<Option<u64>> {
        let limit = parse_memory_limit(&self.device_memory_limit)
            .map_err(|e| plan_datafusion_err!("kiln.device_memory_limit: {e}"))?;
        Ok(match limit {
            MemoryLimit::Auto if info.backend == kiln_kernels::BackendKind::Cpu => None,
            MemoryLimit::Auto => {
                kiln_kernels::memory::MemoryBudget::default_limit(info.memory_bytes)
            }
            MemoryLimit::None => None,
            MemoryLimit::Share(share) => info.memory_bytes.map(|m| (m as f64 * share) as u64),
            MemoryLimit::Bytes(bytes) => Some(bytes),
        })
    }

    /// `kiln.embed_precision` as requested (before the device resolves it).
    pub fn embed_precision(&self) -> Result<crate::model::precision::Precision> {
        self.embed_precision
            .parse()
            .map_err(|e| plan_datafusion_err!("kiln.embed_precision: {e}"))
    }

    /// `kiln.job_part_size` in bytes (at least 1).
    pub fn job_part_bytes(&self) -> Result<u64> {
        match parse_bytes(&self.job_part_size) {
            Ok(0) => Err(plan_datafusion_err!(
                "kiln.job_part_size must be at least 1 byte, not '{}'",
                self.job_part_size
            )),
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(plan_datafusion_err!("kiln.job_part_size: {e}")),
        }
    }

    /// `kiln.statement_timeout` as a duration; `None` for no limit.
    pub fn statement_timeout(&self) -> Result<Option<std::time::Duration>> {
        parse_duration(&self.statement_timeout)
            .map_err(|e| plan_datafusion_err!("kiln.statement_timeout: {e}"))
    }

    /// The options of a session (the defaults if it has none).
    pub fn of(state: &SessionState) -> KilnOptions {
        state
            .config()
            .options()
            .extensions
            .get::<KilnOptions>()
            .cloned()
            .unwrap_or_default()
    }
}

/// `text` as a number and the unit after it (`"1.5 GB"`: 1.5 and `"gb"`).
fn number_and_unit(text: &str, what: &str) -> std::result::Result<(f64, String), String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number = number
        .parse()
        .map_err(|_| format!("'{text}' is not {what}"))?;
    Ok((number, unit.trim().to_ascii_lowercase()))
}

/// Parses a byte size: a number with an optional unit (B, KB, KiB, MB, MiB,
/// GB, GiB, TB, TiB; case-insensitive).
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let (number, unit) = number_and_unit(text, "a size such as 256MiB")?;
    let scale: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "kib" | "k" => 1024.0,
        "mb" => 1e6,
        "mib" | "m" => 1024.0 * 1024.0,
        "gb" => 1e9,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        "tb" => 1e12,
        "tib" | "t" => 1024f64.powi(4),
        other => return Err(format!("unknown unit '{other}' in '{text}'")),
    };
    let bytes = number * scale;
    if bytes < 1.0 {
        return Err(format!("'{text}' is less than one byte"));
    }
    Ok(bytes as u64)
}

/// A value of `kiln.device_memory_limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryLimit {
    Auto,
    None,
    /// A share of the device's memory, in (0, 1].
    Share(f64),
    Bytes(u64),
}

/// Parses `auto`, `none`, a percentage (`75%`) or a size (`20GiB`).
pub fn parse_memory_limit(text: &str) -> std::result::Result<MemoryLimit, String> {
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        "" | "auto" => return Ok(MemoryLimit::Auto),
        "none" => return Ok(MemoryLimit::None),
        _ => {}
    }
    if let Some(percent) = t.strip_suffix('%') {
        return match percent.trim().parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Ok(MemoryLimit::Share(p / 100.0)),
            _ => Err(format!(
                "'{text}' is not a share between 0% and 100% (expected auto, none, a share such as 75% or a size such as 20GiB)"
            )),
        };
    }
    parse_bytes(t).map(MemoryLimit::Bytes).map_err(|e| {
        format!("{e} (expected auto, none, a share such as 75% or a size such as 20GiB)")
    })
}

/// Parses a duration: a number with a unit (ms, s, min, h; `s` if none,
/// as PostgreSQL's `statement_timeout` takes milliseconds only when asked);
/// `0` or empty means none.
pub fn parse_duration(text: &str) -> std::result::Result<Option<std::time::Duration>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let (number, unit) = number_and_unit(text, "a duration such as 30s, 5min or 1h")?;
    let secs = match unit.as_str() {
        "ms" => number / 1e3,
        "" | "s" | "sec" | "secs" => number,
        "m" | "min" | "mins" => number * 60.0,
        "h" | "hour" | "hours" => number * 3600.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use ms, s, min or h)"
            ));
        }
    };
    if secs == 0.0 {
        return Ok(None);
    }
    // A year is far beyond any batch statement; beyond, the value is a typo.
    if !(secs.is_finite() && secs <= 366.0 * 86400.0) {
        return Err(format!("'{text}' is longer than a year"));
    }
    Ok(Some(std::time::Duration::from_secs_f64(secs)))
}
