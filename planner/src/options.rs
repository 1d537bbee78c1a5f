//! The `kiln.*` session options (defined in `kiln_engine::options`, where
//! the operators read them too) and what the planner derives from them.

use datafusion::common::{Result, plan_datafusion_err};
use datafusion::execution::SessionState;
use kiln_kernels::DeviceInfo;

pub use kiln_engine::options::*;

/// What the vector-search operators take from the options, validated.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    pub device: DeviceInfo,
    pub budget_bytes: u64,
    pub query_batch: usize,
}

impl SearchOptions {
    pub fn from_state(state: &SessionState) -> Result<SearchOptions> {
        let options = KilnOptions::of(state);
        let device = kiln_engine::device::session_kernel_info(state.config().options())
            .map_err(|e| plan_datafusion_err!("kiln.device: {e}"))?;
        let budget_bytes = parse_bytes(&options.vector_memory_budget)
            .map_err(|e| plan_datafusion_err!("kiln.vector_memory_budget: {e}"))?;
        if options.knn_query_batch == 0 {
            return Err(plan_datafusion_err!(
                "kiln.knn_query_batch must be at least 1"
            ));
        }
        Ok(SearchOptions {
            device,
            budget_bytes,
            query_batch: options.knn_query_batch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::config::ExtensionOptions;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn set_and_read_back_through_sql() {
        let config = crate::session_config(kiln_kernels::DeviceRequest::Auto);
        let ctx = SessionContext::new_with_config(config);
        ctx.sql("SET kiln.device = 'cpu'").await.unwrap();
        ctx.sql("SET kiln.vector_memory_budget = '1MiB'")
            .await
            .unwrap();
        let state = ctx.state();
        let opts = KilnOptions::of(&state);
        assert_eq!(opts.device, "cpu");
        let search = SearchOptions::from_state(&state).unwrap();
        assert_eq!(search.budget_bytes, 1 << 20);
        assert_eq!(search.device.id(), "cpu:0");
    }

    /// Every entry names its key in full, and setting it back through a
    /// fresh config (as a Ballista scheduler or executor does) keeps it.
    #[test]
    fn entries_round_trip_by_full_key() {
        let options = KilnOptions {
            device: "cpu".into(),
            gpu_max_groups: 7,
            ..Default::default()
        };
        let entries = options.entries();
        assert!(
            entries.iter().all(|e| e.key.starts_with("kiln.")),
            "{entries:?}"
        );
        let mut config = crate::session_config(kiln_kernels::DeviceRequest::Auto);
        for e in &entries {
            config
                .options_mut()
                .set(&e.key, e.value.as_deref().unwrap_or_default())
                .unwrap();
        }
        let back = config.options().extensions.get::<KilnOptions>().unwrap();
        assert_eq!(back.device, "cpu");
        assert_eq!(back.gpu_max_groups, 7);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1.2.3").is_err());
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("0"), Ok(None));
        assert_eq!(parse_duration(""), Ok(None));
        assert_eq!(parse_duration("30"), Ok(Some(Duration::from_secs(30))));
        assert_eq!(
            parse_duration("250ms"),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(parse_duration("5 min"), Ok(Some(Duration::from_secs(300))));
        assert_eq!(parse_duration("1h"), Ok(Some(Duration::from_secs(3600))));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("100000h").is_err());
    }

    /// Each bad value is refused by the SET that gives it, naming the
    /// option, and leaves the option as it was.
    #[tokio::test]
    async fn bad_values_are_refused_when_set() {
        let config = crate::session_config(kiln_kernels::DeviceRequest::Auto);
        let ctx = SessionContext::new_with_config(config);
        for (sql, names) in [
            (
                "SET kiln.vector_memory_budget = 'abc'",
                "kiln.vector_memory_budget",
            ),
            (
                "SET kiln.vector_memory_budget = '99999999999999999999TiB'",
                "kiln.vector_memory_budget",
            ),
            ("SET kiln.gpu_batch_rows = 0", "kiln.gpu_batch_rows"),
            ("SET kiln.gpu_max_groups = 1000", "kiln.gpu_max_groups"),
            ("SET kiln.knn_query_batch = 0", "kiln.knn_query_batch"),
            ("SET kiln.device = 'tpu'", "kiln.device"),
            (
                "SET kiln.statement_timeout = 'soon'",
                "kiln.statement_timeout",
            ),
            (
                "SET kiln.max_expression_depth = 0",
                "kiln.max_expression_depth",
            ),
        ] {
            let err = ctx.sql(sql).await.expect_err(sql).to_string();
            assert!(err.contains(names), "{sql}: {err}");
        }
        let opts = KilnOptions::of(&ctx.state());
        assert_eq!(opts.vector_memory_budget, "256MiB");
        assert_eq!(opts.gpu_batch_rows, 1_048_576);
        ctx.sql("SET kiln.statement_timeout = '2s'").await.unwrap();
        assert_eq!(
            KilnOptions::of(&ctx.state()).statement_timeout().unwrap(),
            Some(std::time::Duration::from_secs(2))
        );
    }
}
