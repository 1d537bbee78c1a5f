//! Kiln's additions to DataFusion's lazy `DataFrame`.

use datafusion::common::Column;
use datafusion::logical_expr::{Expr, ScalarUDF};
use datafusion::prelude::{DataFrame, lit};
use kiln_engine::functions::EmbedUdf;
use kiln_engine::model::DEFAULT_MODEL;

use crate::error::Result;

/// Methods Kiln adds to `DataFrame`.
pub trait KilnDataFrameExt: Sized {
    /// Adds column `output`: the embedding of text column `column` by
    /// `model` (a name or a directory; default all-MiniLM-L6-v2), as
    /// `FixedSizeList<Float32, dim>`. NULL text gives NULL.
    fn embed(self, column: &str, model: Option<&str>, output: &str) -> Result<Self>;
}

impl KilnDataFrameExt for DataFrame {
    fn embed(self, column: &str, model: Option<&str>, output: &str) -> Result<DataFrame> {
        let udf = ScalarUDF::from(EmbedUdf::new());
        let call = udf.call(vec![
            // The name exactly as given: no identifier parsing or case folding.
            Expr::Column(Column::from_name(column)),
            lit(model.unwrap_or(DEFAULT_MODEL)),
        ]);
        Ok(self.with_column(output, call)?)
    }
}
