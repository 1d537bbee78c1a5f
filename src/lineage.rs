//! OpenLineage events for what Kiln runs: column-level lineage
//! ([`kiln_planner::lineage`]) of every statement that writes or returns
//! rows, as OpenLineage run events (START, then COMPLETE or FAIL) with the
//! `schema` and `columnLineage` dataset facets, written as JSON lines to a
//! file and/or posted to an OpenLineage HTTP endpoint (Marquez's
//! `/api/v1/lineage`).
//!
//! A job is a run of its own (the job file's name) and each of its
//! statements a child run (`JOB.stepN`, with the `parent` facet naming the
//! job's run), as Airflow reports a DAG and its tasks. `kiln lineage`
//! prints the same lineage without running anything, as OpenLineage's
//! static `JobEvent`s.
//!
//! Lineage never fails what it describes: an endpoint that is down or
//! answers with an error gets a warning on stderr, and the events from then
//! on go to a file instead (`--lineage`, or `kiln-lineage.jsonl` in the
//! working directory).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::TableReference;
use datafusion::datasource::listing::{ListingTable, ListingTableUrl};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, TableSource, WriteOp};
use kiln_planner::lineage::{Dataset, Deps, Lineage, column_lineage, written};
use serde_json::{Value, json};

use crate::error::{KilnError, Result};

/// Who made the events (OpenLineage's `producer`).
pub const PRODUCER: &str = concat!(
    "https://github.com/kiln-engine/kiln/tree/v",
    env!("CARGO_PKG_VERSION")
);
const RUN_EVENT: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const JOB_EVENT: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/JobEvent";
const SCHEMA_FACET: &str =
    "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet";
const COLUMN_LINEAGE_FACET: &str = "https://openlineage.io/spec/facets/1-2-0/ColumnLineageDatasetFacet.json#/$defs/ColumnLineageDatasetFacet";
const SQL_FACET: &str =
    "https://openlineage.io/spec/facets/1-1-0/SQLJobFacet.json#/$defs/SQLJobFacet";
const JOB_TYPE_FACET: &str =
    "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet";
const PARENT_FACET: &str =
    "https://openlineage.io/spec/facets/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet";
const ENGINE_FACET: &str = "https://openlineage.io/spec/facets/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet";
const ERROR_FACET: &str = "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";
const OUTPUT_STATISTICS_FACET: &str = "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet";

/// The namespace of jobs and of datasets without a location, when neither
/// `--lineage-namespace` nor `OPENLINEAGE_NAMESPACE` names one.
pub const DEFAULT_NAMESPACE: &str = "kiln";
/// Where events go when the endpoint is down and no `--lineage` file is set.
pub const FALLBACK_FILE: &str = "kiln-lineage.jsonl";

/// Where a job's events go, and how it is named.
#[derive(Debug, Clone)]
pub struct LineageOptions {
    /// The namespace of the job (and of datasets without a location).
    pub namespace: String,
    /// The job's name (its file's name without the extension, or `sql`).
    pub job: String,
    /// Append the events to this file, as JSON lines.
    pub file: Option<PathBuf>,
    /// Post the events to this OpenLineage endpoint: a URL without a path
    /// gets Marquez's `/api/v1/lineage`.
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer KEY` (`OPENLINEAGE_API_KEY`).
    pub api_key: Option<String>,
}

/// What one statement writes or returns, and its column lineage.
#[derive(Debug)]
pub struct StatementLineage {
    pub sql: String,
    /// The dataset it writes (a location, a table), or for a query, the
    /// dataset `JOB.stepN` of its rows.
    pub output: Dataset,
    pub schema: SchemaRef,
    pub lineage: Lineage,
}

/// The lineage of the statement planned as `plan` (statement `index` of
/// job `job`), in the planning context `state`; `None` for a statement that
/// neither writes nor returns rows (a view, a SET, DDL). `location_of`
/// gives the location of a table that is a stand-in while a job is planned.
pub fn statement_lineage(
    state: &SessionState,
    plan: &LogicalPlan,
    sql: &str,
    names: (&str, &str, usize),
    location_of: &dyn Fn(&str) -> Option<String>,
) -> Option<Result<StatementLineage>> {
    let (namespace, job, index) = names;
    let named = |table: &str| Dataset {
        namespace: namespace.to_string(),
        name: table.to_string(),
    };
    let output = match plan {
        LogicalPlan::Copy(copy) => location_dataset(&copy.output_url),
        LogicalPlan::Dml(dml) if matches!(dml.op, WriteOp::Insert(_)) => {
            match target_location(&dml.target).or_else(|| location_of(dml.table_name.table())) {
                Some(location) => location_dataset(&location),
                None => named(dml.table_name.table()),
            }
        }
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => named(create.name.table()),
        LogicalPlan::Ddl(_)
        | LogicalPlan::Dml(_)
        | LogicalPlan::Statement(_)
        | LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::DescribeTable(_) => return None,
        _ => named(&format!("{job}.step{index}")),
    };
    let input = written(plan).unwrap_or(plan);
    let traced =
        traced_lineage(state, input, namespace, location_of).map(|lineage| StatementLineage {
            sql: sql.to_string(),
            output,
            schema: Arc::new(input.schema().as_arrow().clone()),
            lineage,
        });
    Some(traced)
}

/// The column lineage of the rows `plan` computes, traced on its plan as
/// `state` optimizes it; tables without a location are named in
/// `namespace` (a DataFrame's [`crate::KilnDataFrameExt::lineage`]).
pub fn plan_lineage(state: &SessionState, plan: &LogicalPlan, namespace: &str) -> Result<Lineage> {
    traced_lineage(state, plan, namespace, &|_| None)
}

fn traced_lineage(
    state: &SessionState,
    plan: &LogicalPlan,
    namespace: &str,
    location_of: &dyn Fn(&str) -> Option<String>,
) -> Result<Lineage> {
    let resolve = |table: &TableReference, source: &Arc<dyn TableSource>| {
        source_dataset(table, source, namespace, location_of)
    };
    let optimized = state.optimize(plan)?;
    Ok(column_lineage(&optimized, &resolve)?)
}

/// A location's dataset, by OpenLineage's naming (`file` + absolute path,
/// `s3://bucket` + key, ...).
pub fn location_dataset(location: &str) -> Dataset {
    match ListingTableUrl::parse(location) {
        Ok(url) => Dataset::of_location(url.as_str()),
        Err(_) => Dataset::of_location(location),
    }
}

/// Where a table's files are: a Delta table's location, or a listing
/// table's paths (none for other tables).
pub(crate) fn table_locations(source: &Arc<dyn TableSource>) -> Vec<String> {
    let Ok(provider) = datafusion::datasource::source_as_provider(source) else {
        return Vec::new();
    };
    if let Some(delta) = provider.downcast_ref::<crate::delta::DeltaProvider>() {
        return vec![delta.location.clone()];
    }
    match provider.downcast_ref::<ListingTable>() {
        Some(table) => table
            .table_paths()
            .iter()
            .map(|u| u.as_str().to_string())
            .collect(),
        None => Vec::new(),
    }
}

fn target_location(target: &Arc<dyn TableSource>) -> Option<String> {
    table_locations(target).into_iter().next()
}

/// The dataset a scan reads: its files' location when it has one, else
/// the table's name in `namespace`.
fn source_dataset(
    table: &TableReference,
    source: &Arc<dyn TableSource>,
    namespace: &str,
    location_of: &dyn Fn(&str) -> Option<String>,
) -> Dataset {
    if let Some(location) = target_location(source).or_else(|| location_of(table.table())) {
        return location_dataset(&location);
    }
    if Dataset::is_location(table.table()) {
        return location_dataset(table.table());
    }
    Dataset {
        namespace: namespace.to_string(),
        name: table.table().to_string(),
    }
}

fn facet(schema_url: &str, mut body: Value) -> Value {
    if let Value::Object(map) = &mut body {
        map.insert("_producer".into(), PRODUCER.into());
        map.insert("_schemaURL".into(), schema_url.into());
    }
    body
}

fn schema_fields(fields: &[Arc<Field>]) -> Vec<Value> {
    fields
        .iter()
        .map(|f| {
            let mut field = json!({"name": f.name(), "type": f.data_type().to_string()});
            if let DataType::Struct(children) = f.data_type() {
                field["fields"] = Value::Array(schema_fields(children));
            }
            field
        })
        .collect()
}

fn schema_facet(schema: &Schema) -> Value {
    facet(
        SCHEMA_FACET,
        json!({"fields": schema_fields(schema.fields())}),
    )
}

fn input_fields(deps: &Deps) -> Vec<Value> {
    deps.iter()
        .map(|(input, uses)| {
            json!({
                "namespace": input.dataset.namespace,
                "name": input.dataset.name,
                "field": input.field,
                "transformations": uses.iter().map(|u| json!({
                    "type": u.transform.kind(),
                    "subtype": u.transform.subtype(),
                    "description": "",
                    "masking": u.masking,
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// The OpenLineage `columnLineage` facet of `lineage`.
pub fn column_lineage_facet(lineage: &Lineage) -> Value {
    let fields: serde_json::Map<String, Value> = lineage
        .columns
        .iter()
        .map(|(name, deps)| (name.clone(), json!({"inputFields": input_fields(deps)})))
        .collect();
    facet(
        COLUMN_LINEAGE_FACET,
        json!({"fields": fields, "dataset": input_fields(&lineage.dataset)}),
    )
}

/// The inputs and outputs of a statement's events; `stats` (rows, bytes,
/// files) once it has run.
fn datasets(
    statement: &StatementLineage,
    stats: Option<(u64, Option<u64>, Option<u64>)>,
) -> (Value, Value) {
    let inputs: Vec<Value> = statement
        .lineage
        .inputs
        .iter()
        .map(|(dataset, schema)| {
            json!({
                "namespace": dataset.namespace,
                "name": dataset.name,
                "facets": {"schema": schema_facet(schema)},
            })
        })
        .collect();
    let mut output = json!({
        "namespace": statement.output.namespace,
        "name": statement.output.name,
        "facets": {
            "schema": schema_facet(&statement.schema),
            "columnLineage": column_lineage_facet(&statement.lineage),
        },
    });
    if let Some((rows, bytes, files)) = stats {
        let mut statistics = json!({"rowCount": rows});
        if let Some(bytes) = bytes {
            statistics["size"] = bytes.into();
        }
        if let Some(files) = files {
            statistics["fileCount"] = files.into();
        }
        output["outputFacets"] = json!({
            "outputStatistics": facet(OUTPUT_STATISTICS_FACET, statistics),
        });
    }
    (Value::Array(inputs), json!([output]))
}

fn job_facets(sql: Option<&str>, job_type: &str) -> Value {
    let mut facets = json!({
        "jobType": facet(JOB_TYPE_FACET, json!({
            "processingType": "BATCH",
            "integration": "KILN",
            "jobType": job_type,
        })),
    });
    if let Some(sql) = sql {
        facets["sql"] = facet(SQL_FACET, json!({"query": sql, "dialect": "datafusion"}));
    }
    facets
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The static lineage of one statement of a job (`kiln lineage`): an
/// OpenLineage `JobEvent`.
pub fn job_event(options: &LineageOptions, index: usize, statement: &StatementLineage) -> Value {
    let (inputs, outputs) = datasets(statement, None);
    json!({
        "eventTime": now(),
        "producer": PRODUCER,
        "schemaURL": JOB_EVENT,
        "job": {
            "namespace": options.namespace,
            "name": format!("{}.step{index}", options.job),
            "facets": job_facets(Some(&statement.sql), "QUERY"),
        },
        "inputs": inputs,
        "outputs": outputs,
    })
}

/// The state of a run an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Start,
    Complete,
    Fail,
}

impl RunState {
    fn name(self) -> &'static str {
        match self {
            RunState::Start => "START",
            RunState::Complete => "COMPLETE",
            RunState::Fail => "FAIL",
        }
    }
}

/// A job's run and its statements' runs, reported to a file and/or an
/// endpoint as they start and end.
pub struct RunLineage {
    options: LineageOptions,
    run_id: String,
    client: Option<(reqwest::Client, String)>,
    /// The endpoint failed once: events go to the file from then on.
    down: bool,
    step_runs: std::collections::HashMap<usize, String>,
}

impl RunLineage {
    pub fn new(options: LineageOptions) -> Result<RunLineage> {
        let client = match &options.url {
            None => None,
            Some(url) => {
                let endpoint = endpoint(url)?;
                let client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(15))
                    .build()
                    .map_err(|e| KilnError::Usage(format!("--lineage-url: {e}")))?;
                Some((client, endpoint))
            }
        };
        Ok(RunLineage {
            options,
            run_id: uuid::Uuid::now_v7().to_string(),
            client,
            down: false,
            step_runs: Default::default(),
        })
    }

    /// The job's run id (a UUIDv7, as OpenLineage recommends).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn options(&self) -> &LineageOptions {
        &self.options
    }

    /// Reports the job's run starting, ending or failing.
    pub async fn job(&mut self, state: RunState, error: Option<&KilnError>) {
        let event = self.run_event(
            state,
            &self.run_id.clone(),
            &self.options.job.clone(),
            false,
            job_facets(None, "JOB"),
            (json!([]), json!([])),
            error,
        );
        self.emit(event).await;
    }

    /// Reports statement `index` starting (no result yet), completing
    /// (rows, bytes, files) or failing.
    pub async fn step(
        &mut self,
        index: usize,
        statement: &StatementLineage,
        state: RunState,
        stats: Option<(u64, Option<u64>, Option<u64>)>,
        error: Option<&KilnError>,
    ) {
        let run_id = self
            .step_runs
            .entry(index)
            .or_insert_with(|| uuid::Uuid::now_v7().to_string())
            .clone();
        let event = self.run_event(
            state,
            &run_id,
            &format!("{}.step{index}", self.options.job),
            true,
            job_facets(Some(&statement.sql), "QUERY"),
            datasets(statement, stats),
            error,
        );
        self.emit(event).await;
    }

    #[allow(clippy::too_many_arguments)]
    fn run_event(
        &self,
        state: RunState,
        run_id: &str,
        job: &str,
        child: bool,
        job_facets: Value,
        (inputs, outputs): (Value, Value),
        error: Option<&KilnError>,
    ) -> Value {
        let mut run_facets = json!({
            "processing_engine": facet(ENGINE_FACET, json!({
                "version": env!("CARGO_PKG_VERSION"),
                "name": "Kiln",
                "openlineageAdapterVersion": env!("CARGO_PKG_VERSION"),
            })),
        });
        if child {
            run_facets["parent"] = facet(
                PARENT_FACET,
                json!({
                    "run": {"runId": self.run_id},
                    "job": {"namespace": self.options.namespace, "name": self.options.job},
                }),
            );
        }
        if let Some(error) = error {
            run_facets["errorMessage"] = facet(
                ERROR_FACET,
                json!({"message": error.to_string(), "programmingLanguage": "Rust"}),
            );
        }
        json!({
            "eventType": state.name(),
            "eventTime": now(),
            "producer": PRODUCER,
            "schemaURL": RUN_EVENT,
            "run": {"runId": run_id, "facets": run_facets},
            "job": {"namespace": self.options.namespace, "name": job, "facets": job_facets},
            "inputs": inputs,
            "outputs": outputs,
        })
    }

    /// Posts `event` and/or appends it to the file; failures are warnings.
    async fn emit(&mut self, event: Value) {
        let line = event.to_string();
        let mut to_file = self.options.file.clone();
        if let Some((client, endpoint)) = &self.client
            && !self.down
        {
            let mut request = client
                .post(endpoint)
                .header("Content-Type", "application/json")
                .body(line.clone());
            if let Some(key) = &self.options.api_key {
                request = request.bearer_auth(key);
            }
            let failed = match request.send().await {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("it answered {}", response.status())),
                Err(e) => Some(e.without_url().to_string()),
            };
            if let Some(why) = failed {
                self.down = true;
                let file = self
                    .options
                    .file
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(FALLBACK_FILE));
                eprintln!(
                    "warning: the lineage endpoint {endpoint} failed ({why}); the job goes on and its lineage events are written to {} instead",
                    file.display()
                );
                to_file = Some(file);
            }
        } else if self.down && to_file.is_none() {
            to_file = Some(PathBuf::from(FALLBACK_FILE));
        }
        if let Some(path) = to_file
            && let Err(e) = append_line(&path, &line)
        {
            eprintln!(
                "warning: could not write a lineage event to {}: {e}",
                path.display()
            );
        }
    }
}

fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{line}")
}

/// Where events are posted: a URL with no path gets `/api/v1/lineage`.
fn endpoint(url: &str) -> Result<String> {
    let parsed =
        url::Url::parse(url).map_err(|e| KilnError::Usage(format!("--lineage-url {url}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(KilnError::Usage(format!(
            "--lineage-url {url}: an OpenLineage endpoint is http:// or https://"
        )));
    }
    Ok(match parsed.path() {
        "" | "/" => format!("{}/api/v1/lineage", url.trim_end_matches('/')),
        _ => url.to_string(),
    })
}
