//! The `kiln.*` session options, settable with `SET kiln.device = 'cpu'` and
//! read by Kiln's rules and operators.

use datafusion::common::config::ConfigExtension;
use datafusion::common::extensions_options;

extensions_options! {
    /// Kiln's session options.
    pub struct KilnOptions {
        /// The device Kiln's operators run on: auto, cpu, wgpu, wgpu:N, cuda or cuda:N.
        pub device: String, default = "auto".to_string()
    }
}

impl ConfigExtension for KilnOptions {
    const PREFIX: &'static str = "kiln";
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn set_and_read_back_through_sql() {
        let config = crate::session_config(kiln_kernels::DeviceRequest::Auto);
        let ctx = SessionContext::new_with_config(config);
        ctx.sql("SET kiln.device = 'cpu'").await.unwrap();
        let state = ctx.state();
        let opts = state
            .config()
            .options()
            .extensions
            .get::<KilnOptions>()
            .unwrap();
        assert_eq!(opts.device, "cpu");
    }
}
