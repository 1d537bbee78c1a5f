//! Printing query results: an aligned table, CSV with a header row, or JSON
//! with one object per row. CSV and JSON stream batch by batch, so a large
//! result never has to fit in memory; the table needs every row to size its
//! columns.

use std::io::Write;
use std::sync::Arc;

use crate::DataFrame;
use crate::error::{KilnError, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::arrow::json::WriterBuilder as JsonWriterBuilder;
use datafusion::arrow::json::writer::LineDelimited;
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use futures::StreamExt;

use crate::cli::progress::{Progress, human_bytes};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table for people.
    Table,
    /// CSV with a header row.
    Csv,
    /// JSON, one object per line, NULLs written as null.
    Json,
}

fn write_err(e: std::io::Error) -> KilnError {
    KilnError::File {
        path: "<stdout>".to_string(),
        source: e,
    }
}

/// Cells of the table format longer than this are cut (`--max-width`).
pub const DEFAULT_MAX_WIDTH: usize = 100;

/// A format and its settings.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: Format,
    /// Table cells are cut to this many characters; 0: never.
    pub max_width: usize,
}

/// `batch` with the columns a format cannot show as they are turned into
/// text: nested values (lists such as embeddings, structs, maps) for CSV,
/// which Arrow's CSV writer refuses, written as `[0.1, 0.2, ...]`; and for
/// the table, text longer than `max_width` cut with '…'.
fn printable(batch: &RecordBatch, format: Format, max_width: usize) -> Result<RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let needs_text = |t: &DataType| match format {
        Format::Csv => t.is_nested(),
        Format::Table => {
            max_width > 0
                && (t.is_nested()
                    || matches!(
                        t,
                        DataType::Utf8
                            | DataType::LargeUtf8
                            | DataType::Utf8View
                            | DataType::Binary
                            | DataType::LargeBinary
                            | DataType::BinaryView
                    ))
        }
        Format::Json => false,
    };
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| needs_text(f.data_type())) {
        return Ok(batch.clone());
    }
    let options = FormatOptions::default().with_null("");
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if !needs_text(field.data_type()) {
            fields.push(Arc::clone(field));
            columns.push(Arc::clone(column));
            continue;
        }
        let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
        let text: StringArray = (0..column.len())
            .map(|i| {
                if column.is_null(i) {
                    return None;
                }
                let mut cell = formatter.value(i).to_string();
                if format == Format::Table && cell.chars().count() > max_width {
                    cell = cell.chars().take(max_width.saturating_sub(1)).collect();
                    cell.push('…');
                }
                Some(cell)
            })
            .collect();
        fields.push(Arc::new(Field::new(field.name(), DataType::Utf8, true)));
        columns.push(Arc::new(text));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Whether a result is a plan (EXPLAIN's `plan_type`, `plan` columns).
fn is_plan(schema: &datafusion::arrow::datatypes::Schema) -> bool {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names == ["plan_type", "plan"]
}

/// EXPLAIN's rows as text: each plan under a `== kind ==` heading, its
/// lines as they are (a table would squeeze them into one cell).
pub fn plan_text(batches: Vec<RecordBatch>) -> Result<String> {
    let mut text = String::new();
    for batch in &batches {
        let kinds = datafusion::arrow::compute::cast(
            batch.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )?;
        let plans = datafusion::arrow::compute::cast(
            batch.column(1),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )?;
        let kinds = datafusion::arrow::array::as_string_array(&kinds);
        let plans = datafusion::arrow::array::as_string_array(&plans);
        for i in 0..batch.num_rows() {
            text.push_str(&format!(
                "== {} ==\n{}\n",
                kinds.value(i),
                plans.value(i).trim_end()
            ));
        }
    }
    Ok(text)
}

/// Executes `frame` and prints its rows to `out`; returns the row count.
/// Arrow's CSV and JSON writers turn an I/O error into text; this keeps
/// whether the reader went away, which is a normal end (see
/// [`KilnError::is_broken_pipe`]) rather than a failure.
struct PipeWatch<'a> {
    inner: &'a mut dyn Write,
    closed: bool,
}

impl PipeWatch<'_> {
    fn note(&mut self, result: std::io::Result<usize>) -> std::io::Result<usize> {
        if let Err(e) = &result {
            self.closed |= e.kind() == std::io::ErrorKind::BrokenPipe;
        }
        result
    }
}

impl Write for PipeWatch<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush().map(|()| 0);
        self.note(r).map(|_| ())
    }
}

/// Executes `frame` and prints its rows to `out`; returns the row count.
pub async fn print_frame(frame: DataFrame, printer: Printer, out: &mut dyn Write) -> Result<u64> {
    let mut watch = PipeWatch {
        inner: out,
        closed: false,
    };
    let printed = print_rows(frame, printer, &mut watch).await;
    match printed {
        Err(_) if watch.closed => Err(KilnError::File {
            path: "<stdout>".into(),
            source: std::io::ErrorKind::BrokenPipe.into(),
        }),
        other => other,
    }
}

async fn print_rows(frame: DataFrame, printer: Printer, out: &mut dyn Write) -> Result<u64> {
    let Printer { format, max_width } = printer;
    let mut progress = Progress::stderr();
    let mut stream = frame.execute_stream().await?;
    let schema = stream.schema();
    if format == Format::Table && is_plan(&schema) {
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            batches.push(batch?);
        }
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let text = kiln_engine::io::redact(&plan_text(batches)?);
        out.write_all(text.as_bytes()).map_err(write_err)?;
        out.flush().map_err(write_err)?;
        return Ok(rows);
    }
    let mut rows = 0u64;
    let mut bytes = 0u64;
    let mut tick = |batch: &RecordBatch, progress: &mut Progress| {
        rows += batch.num_rows() as u64;
        bytes += batch.get_array_memory_size() as u64;
        let (rows, bytes) = (rows, bytes);
        progress.update(|t| {
            format!(
                "{rows} rows, {} in {:.1}s",
                human_bytes(bytes),
                t.as_secs_f64()
            )
        });
        rows
    };
    let total = match format {
        Format::Table => {
            let mut batches = Vec::new();
            let mut total = 0;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                total = tick(&batch, &mut progress);
                batches.push(printable(&batch, format, max_width)?);
            }
            progress.finish();
            let schema = printable(&RecordBatch::new_empty(schema), format, max_width)?.schema();
            let table = pretty_format_batches_with_schema(schema, &batches)?;
            writeln!(out, "{table}").map_err(write_err)?;
            total
        }
        Format::Csv => {
            let mut writer = CsvWriterBuilder::new().with_header(true).build(&mut *out);
            let mut total = 0;
            let mut wrote = false;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                if batch.num_rows() == 0 && wrote {
                    continue;
                }
                total = tick(&batch, &mut progress);
                writer.write(&printable(&batch, format, max_width)?)?;
                wrote = true;
            }
            if !wrote {
                // The header alone, so an empty result is still valid CSV.
                writer.write(&printable(
                    &RecordBatch::new_empty(schema),
                    format,
                    max_width,
                )?)?;
            }
            total
        }
        Format::Json => {
            let mut writer = JsonWriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, LineDelimited>(&mut *out);
            let mut total = 0;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                total = tick(&batch, &mut progress);
                writer.write(&batch)?;
            }
            writer.finish()?;
            total
        }
    };
    progress.finish();
    out.flush().map_err(write_err)?;
    Ok(total)
}
