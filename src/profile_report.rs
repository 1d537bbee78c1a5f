//! `kiln profile --html`: a profile as one self-contained HTML page (no
//! server, no script, no network): per column its figures and a chart —
//! a histogram of a numeric column, the most frequent values of any other.

use std::fmt::Write as _;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use kiln_planner::profile::{cell_f64, cell_text};

use crate::error::{KilnError, Result};
use crate::session::Session;

/// Bins of a numeric column's histogram.
const BINS: usize = 20;
/// Bars of a most-frequent-values chart.
const BARS: usize = 10;

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One profile row's fields by name.
struct Field<'a> {
    batch: &'a RecordBatch,
    row: usize,
}

impl Field<'_> {
    fn text(&self, name: &str) -> Option<String> {
        cell_text(self.batch, name, self.row).ok().flatten()
    }

    fn f64(&self, name: &str) -> Option<f64> {
        cell_f64(self.batch, name, self.row).ok().flatten()
    }

    fn top_values(&self) -> Vec<(String, i64)> {
        let Some(list) = self.batch.column_by_name("top_values") else {
            return vec![];
        };
        let list = list.as_list::<i32>();
        if list.is_null(self.row) {
            return vec![];
        }
        let entries = list.value(self.row);
        let entries = entries.as_struct();
        let values = entries.column(0).as_string::<i32>();
        let counts = entries.column(1).as_primitive::<Int64Type>();
        (0..entries.len())
            .map(|i| (values.value(i).to_string(), counts.value(i)))
            .collect()
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// Vertical bars: a histogram over `lo..hi`.
fn histogram_svg(counts: &[i64], lo: f64, hi: f64) -> String {
    let (w, h, pad) = (480.0, 140.0, 20.0);
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bar = (w - 2.0 * pad) / counts.len().max(1) as f64;
    let mut svg = format!(
        "<svg width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\" role=\"img\">",
        h + 30.0,
        h + 30.0
    );
    for (i, &n) in counts.iter().enumerate() {
        let bh = (n as f64 / top) * (h - pad);
        let x = pad + i as f64 * bar;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#d9622b\"><title>{n}</title></rect>",
            h - bh,
            (bar - 1.0).max(1.0)
        );
    }
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{h}\" x2=\"{}\" y2=\"{h}\" stroke=\"#555\"/>\
         <text x=\"{pad}\" y=\"{}\" font-size=\"11\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text></svg>",
        w - pad,
        h + 16.0,
        esc(&number(lo)),
        w - pad,
        h + 16.0,
        esc(&number(hi))
    );
    svg
}

/// Horizontal bars: the most frequent values.
fn top_values_svg(values: &[(String, i64)]) -> String {
    let shown = &values[..values.len().min(BARS)];
    let (w, row) = (480.0, 18.0);
    let label = 160.0;
    let top = shown.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1) as f64;
    let h = row * shown.len() as f64 + 4.0;
    let mut svg =
        format!("<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">");
    for (i, (value, n)) in shown.iter().enumerate() {
        let y = i as f64 * row + 2.0;
        let bw = (*n as f64 / top) * (w - label - 60.0);
        let shown_value: String = value.chars().take(24).collect();
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#2b7bd9\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{n}</text>",
            label - 6.0,
            y + 12.0,
            esc(&shown_value),
            row - 4.0,
            label + bw + 4.0,
            y + 12.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Writes the profile `batches` of `source` (rows of `profile(...)`) as an
/// HTML page at `path`, computing each numeric column's histogram.
pub async fn write_html(
    session: &Session,
    source: &str,
    batches: &[RecordBatch],
    path: &str,
) -> Result<()> {
    let state = session.context().state();
    let mut body = String::new();
    let mut rows = None;
    for batch in batches {
        for row in 0..batch.num_rows() {
            let f = Field { batch, row };
            let name = f.text("column").unwrap_or_default();
            let kind = f.text("kind").unwrap_or_default();
            rows = rows.or(f.f64("rows"));
            let mut facts: Vec<(&str, String)> = Vec::new();
            let total = f.f64("rows").unwrap_or(0.0);
            if let Some(nulls) = f.f64("nulls") {
                let share = if total > 0.0 {
                    100.0 * nulls / total
                } else {
                    0.0
                };
                facts.push(("nulls", format!("{} ({share:.1}%)", number(nulls))));
            }
            for (label, field) in [
                ("distinct (approx.)", "distinct_approx"),
                ("min", "min"),
                ("max", "max"),
            ] {
                if let Some(v) = f.text(field) {
                    facts.push((label, v));
                }
            }
            for field in [
                "mean",
                "stddev",
                "p01",
                "p25",
                "p50",
                "p75",
                "p99",
                "min_length",
                "mean_length",
                "max_length",
                "dimension",
                "norm_min",
                "norm_mean",
                "norm_max",
                "zero_vectors",
                "duplicate_vectors",
            ] {
                if let Some(v) = f.f64(field) {
                    facts.push((field, number(v)));
                }
            }
            let chart = match (kind.as_str(), f.text("min"), f.text("max")) {
                ("numeric", Some(lo), Some(hi)) => match (lo.parse::<f64>(), hi.parse::<f64>()) {
                    (Ok(lo), Ok(hi)) => {
                        let input = kiln_planner::profile::source_plan(&state, source, "profile")?;
                        let counts =
                            kiln_planner::profile::histogram(&state, input, &name, (lo, hi), BINS)
                                .await?;
                        histogram_svg(&counts, lo, hi)
                    }
                    _ => String::new(),
                },
                _ => {
                    let top = f.top_values();
                    if top.is_empty() {
                        String::new()
                    } else {
                        top_values_svg(&top)
                    }
                }
            };
            let _ = write!(
                body,
                "<section><h2>{}</h2><p class=\"type\">{} · {}</p><div class=\"col\"><table>",
                esc(&name),
                esc(&f.text("data_type").unwrap_or_default()),
                esc(&kind)
            );
            for (label, value) in facts {
                let _ = write!(
                    body,
                    "<tr><th>{}</th><td>{}</td></tr>",
                    esc(label),
                    esc(&value)
                );
            }
            let _ = write!(
                body,
                "</table><div class=\"chart\">{chart}</div></div></section>"
            );
        }
    }
    let page = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Profile of {src}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         section{{border-top:1px solid #ddd;padding:0.6em 0}}h2{{margin:0.2em 0;font-size:1.1em}}\
         .type{{color:#777;margin:0 0 0.4em}}.col{{display:flex;gap:2em;align-items:flex-start}}\
         table{{border-collapse:collapse;font-size:0.85em}}th{{text-align:left;padding-right:1em;color:#555;font-weight:normal}}\
         </style></head><body><h1>Profile of {src}</h1>\
         <p>{rows} rows. Distinct counts are HyperLogLog estimates (0.81% standard error); \
         quantiles come from a t-digest.</p>{body}</body></html>\n",
        src = esc(source),
        rows = rows.map(number).unwrap_or_else(|| "0".into()),
    );
    std::fs::write(path, page).map_err(|e| KilnError::File {
        path: path.to_string(),
        source: e,
    })
}
