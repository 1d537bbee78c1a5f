//! GPU transforms: fallback invariance over the 22 TPC-H queries (wgpu on
//! lavapipe against the CPU), EXPLAIN placement, and the switches.

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::util::pretty::pretty_format_batches;
use kiln::{DeviceRequest, Session};

use crate::common::*;

const TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

/// A session over TPC-H SF 0.01 with `settings` applied.
async fn tpch_session<S: AsRef<str>>(settings: &[S]) -> Session {
    let session = Session::builder()
        .device("cpu".parse::<DeviceRequest>().unwrap())
        .target_partitions(2)
        .build()
        .unwrap();
    for t in TABLES {
        let dir = tpch().join(t);
        session
            .register_parquet(t, &format!("{}/", dir.display()))
            .await
            .unwrap();
    }
    for s in settings {
        run_sql(&session, s.as_ref()).await;
    }
    session
}

async fn run_sql(session: &Session, sql: &str) -> Vec<RecordBatch> {
    match session.sql(sql).await {
        Ok(df) => df.collect().await.unwrap_or_else(|e| panic!("{sql}: {e}")),
        Err(e) => panic!("{sql}: {e}"),
    }
}

async fn explain(session: &Session, sql: &str) -> String {
    let mut out = String::new();
    for b in run_sql(session, &format!("EXPLAIN {sql}")).await {
        let (kinds, plans) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            if kinds.value(i) == "physical_plan" {
                out.push_str(plans.value(i));
            }
        }
    }
    out
}

/// A query's result as a table.
async fn text(session: &Session, sql: &str) -> String {
    pretty_format_batches(&run_sql(session, sql).await)
        .unwrap()
        .to_string()
}

/// The GpuStageExec line of `EXPLAIN ANALYZE sql`, with its metrics (the
/// topmost but a final aggregate's).
async fn analyzed_stage(session: &Session, sql: &str) -> String {
    let analyzed = text(session, &format!("EXPLAIN ANALYZE {sql}")).await;
    analyzed
        .lines()
        .find(|l| l.contains("GpuStageExec") && !l.contains("mode=final"))
        .unwrap_or_else(|| panic!("no stage in\n{analyzed}"))
        .to_string()
}

fn query(n: usize) -> String {
    let path = format!(
        "{}/benches/tpch/queries/q{n}.sql",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The settings that put a session on the test GPU ([`test_gpu`]) with the
/// cost model's row threshold off, then `extra`.
fn on_gpu(extra: &[&str]) -> Vec<String> {
    let mut settings = vec![set_gpu(), "SET kiln.gpu_min_rows = 0".to_string()];
    settings.extend(extra.iter().map(|s| s.to_string()));
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_results_are_the_same_with_the_gpu_on_and_off() {
    if !has_gpu() {
        return;
    }
    let cpu = tpch_session(&["SET kiln.device = 'cpu'"]).await;
    let gpu = tpch_session(&on_gpu(&[])).await;
    let mut lowered = 0;
    for n in 1..=22 {
        let sql = query(n);
        let want = text(&cpu, &sql).await;
        let plan = explain(&gpu, &sql).await;
        let got = text(&gpu, &sql).await;
        assert_eq!(got, want, "Q{n} differs with the GPU on; plan:\n{plan}");
        if plan.contains("GpuStageExec") {
            lowered += 1;
        }
    }
    eprintln!("{lowered} of 22 TPC-H queries had a GPU stage");
    report_injection();
    assert!(
        lowered >= 21,
        "only {lowered} of 22 queries had a GPU stage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_placement_and_reasons() {
    if !has_gpu() {
        return;
    }
    let gpu = tpch_session(&on_gpu(&[])).await;
    // Fully on the GPU: Q6's filter and its product.
    let q6 = explain(&gpu, &query(6)).await;
    let stage = q6
        .lines()
        .find(|l| l.contains("GpuStageExec") && !l.contains("mode=final"))
        .unwrap_or_else(|| panic!("no stage in\n{q6}"));
    assert!(
        stage.contains(&format!("device={}:0", test_gpu())),
        "{stage}"
    );
    assert!(stage.contains("ops=[FilterExec"), "{stage}");
    assert!(
        stage.contains(&format!("-- on {}:0", test_gpu())),
        "{stage}"
    );
    assert!(
        !q6.contains("FilterExec:"),
        "the filter should be in the stage:\n{q6}"
    );
    // Q1 whole below its exchange: filter, projection and the partial
    // aggregate grouped by two string keys, in one stage.
    let q1 = explain(&gpu, &query(1)).await;
    let stage = q1
        .lines()
        .find(|l| l.contains("GpuStageExec") && !l.contains("mode=final"))
        .unwrap_or_else(|| panic!("no stage in\n{q1}"));
    assert!(
        stage.contains("ops=[FilterExec, ProjectionExec, AggregateExec]")
            && stage.contains("group_by=[l_returnflag, l_linestatus]"),
        "{stage}"
    );
    // ... and its final aggregate above the exchange, merging the states.
    let last = q1
        .lines()
        .find(|l| l.contains("GpuStageExec") && l.contains("mode=final"))
        .unwrap_or_else(|| panic!("no final stage in\n{q1}"));
    assert!(last.contains("ops=[AggregateExec]"), "{last}");
    // A string predicate stays on the CPU and says why.
    let strings = explain(
        &gpu,
        "SELECT l_orderkey FROM lineitem WHERE l_shipmode = 'MAIL'",
    )
    .await;
    let filter = strings
        .lines()
        .find(|l| l.contains("FilterExec"))
        .unwrap_or_else(|| panic!("no filter in\n{strings}"));
    assert!(
        filter.contains("-- cpu: ") && filter.contains("l_shipmode"),
        "{filter}"
    );
    // A projection kept on the CPU gives every expression's reason, not the
    // first only.
    let two = explain(
        &gpu,
        "SELECT l_shipmode || 'x' AS a, l_comment || 'y' AS b, l_quantity * 2 AS c FROM lineitem WHERE l_quantity < 10",
    )
    .await;
    let projection = two
        .lines()
        .find(|l| l.contains("ProjectionExec"))
        .unwrap_or_else(|| panic!("no projection in\n{two}"));
    assert!(
        projection.contains("-- cpu: ")
            && projection.contains("l_shipmode")
            && projection.contains("l_comment"),
        "{projection}"
    );
    // A filter and an aggregate kept on the CPU name every reason, each
    // conjunct's and each function's.
    let filters = explain(
        &gpu,
        "SELECT l_orderkey FROM lineitem WHERE l_shipmode LIKE 'M%' AND l_comment LIKE '%x%'",
    )
    .await;
    let filter = filters
        .lines()
        .find(|l| l.contains("FilterExec"))
        .unwrap_or_else(|| panic!("no filter in\n{filters}"));
    assert!(
        filter.contains("-- cpu: ")
            && filter.contains("l_shipmode")
            && filter.contains("l_comment"),
        "{filter}"
    );
    let aggregates = explain(
        &gpu,
        "SELECT l_returnflag, median(l_quantity), string_agg(l_comment, ',') FROM lineitem GROUP BY l_returnflag",
    )
    .await;
    let partial = aggregates
        .lines()
        .find(|l| l.contains("AggregateExec") && l.contains("mode=Partial"))
        .unwrap_or_else(|| panic!("no partial aggregate in\n{aggregates}"));
    assert!(
        partial.contains("aggregate median has no GPU kernel")
            && partial.contains("aggregate string_agg has no GPU kernel"),
        "{partial}"
    );
    // The cost model keeps a small input on the CPU.
    let small = tpch_session(&[set_gpu()]).await;
    let plan = explain(
        &small,
        "SELECT n_nationkey + 1 FROM nation WHERE n_regionkey > 1",
    )
    .await;
    assert!(!plan.contains("GpuStageExec"), "{plan}");
    assert!(plan.contains("cost model: ~25 input rows"), "{plan}");
    // Every operator line carries a placement.
    for line in q6.lines().filter(|l| !l.trim().is_empty()) {
        assert!(line.contains(" -- "), "unannotated line: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switches_turn_gpu_operators_off() {
    if !has_gpu() {
        return;
    }
    let sql = query(6);
    let off = tpch_session(&on_gpu(&["SET kiln.gpu_transforms = false"])).await;
    let plan = explain(&off, &sql).await;
    assert!(!plan.contains("GpuStageExec"), "{plan}");
    assert!(plan.contains("cpu: kiln.gpu_transforms is off"), "{plan}");
    let no_filter = tpch_session(&on_gpu(&["SET kiln.gpu_filter = false"])).await;
    let plan = explain(&no_filter, &sql).await;
    assert!(plan.contains("cpu: kiln.gpu_filter is off"), "{plan}");
    let cpu = tpch_session(&["SET kiln.device = 'cpu'"]).await;
    let plan = explain(&cpu, &sql).await;
    assert!(plan.contains("cpu: kiln.device is cpu:0"), "{plan}");
    let no_sort = tpch_session(&on_gpu(&["SET kiln.gpu_sort = false"])).await;
    let plan = explain(
        &no_sort,
        "SELECT l_orderkey FROM lineitem ORDER BY l_extendedprice DESC LIMIT 3",
    )
    .await;
    assert!(plan.contains("cpu: kiln.gpu_sort is off"), "{plan}");
    // The group bound is checked, and shown on the stage.
    let few = tpch_session(&on_gpu(&["SET kiln.gpu_max_groups = 4"])).await;
    assert!(explain(&few, &query(1)).await.contains("tile_groups=4"));
    let bad = tpch_session(&on_gpu(&[])).await;
    let err = match bad.sql("SET kiln.gpu_max_groups = 257").await {
        Ok(df) => df.collect().await.err().map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    }
    .expect("kiln.gpu_max_groups = 257 should be refused");
    assert!(
        err.contains("kiln.gpu_max_groups must be between 1 and 256, not 257"),
        "{err}"
    );
}

/// splitmix64: a seeded stream for the randomized suite.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// A table of every type the kernels compute on, a fifth of each column NULL.
fn random_table(rows: usize, seed: u64) -> RecordBatch {
    use datafusion::arrow::array::{
        BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let mut rng = Rng(seed);
    let null = |rng: &mut Rng| rng.below(5) == 0;
    let a: Int32Array = (0..rows)
        .map(|_| (!null(&mut rng)).then(|| rng.below(2001) as i32 - 1000))
        .collect();
    let b: Int64Array = (0..rows)
        .map(|_| (!null(&mut rng)).then(|| (rng.next() >> 20) as i64 - (1 << 43)))
        .collect();
    let c: Float64Array = (0..rows)
        .map(|_| (!null(&mut rng)).then(|| (rng.below(1 << 20) as f64 - 524_288.0) / 64.0))
        .collect();
    let d: BooleanArray = (0..rows)
        .map(|_| (!null(&mut rng)).then(|| rng.below(2) == 1))
        .collect();
    let e = (0..rows)
        .map(|_| (!null(&mut rng)).then(|| rng.below(2_000_000) as i128 - 1_000_000))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(12, 2)
        .unwrap();
    let f: Date32Array = (0..rows)
        .map(|_| (!null(&mut rng)).then(|| rng.below(300_000) as i32 - 150_000))
        .collect();
    // Low-cardinality GROUP BY keys, drawn after the columns above so the
    // expression suite's data does not change.
    let g: datafusion::arrow::array::StringArray = (0..rows)
        .map(|_| {
            (!null(&mut rng)).then(|| {
                ["MAIL", "SHIP", "AIR", "", "a key past twelve bytes"][rng.below(5) as usize]
            })
        })
        .collect();
    let k: Int64Array = (0..rows)
        .map(|_| (!null(&mut rng)).then(|| rng.below(10) as i64 * 1_000_000_007 - 3))
        .collect();
    let id = Int64Array::from_iter_values(0..rows as i64);
    let schema = Schema::new(vec![
        Field::new("a", DataType::Int32, true),
        Field::new("b", DataType::Int64, true),
        Field::new("c", DataType::Float64, true),
        Field::new("d", DataType::Boolean, true),
        Field::new("e", DataType::Decimal128(12, 2), true),
        Field::new("f", DataType::Date32, true),
        Field::new("g", DataType::Utf8, true),
        Field::new("k", DataType::Int64, true),
        Field::new("id", DataType::Int64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(a),
            Arc::new(b),
            Arc::new(c),
            Arc::new(d),
            Arc::new(e),
            Arc::new(f),
            Arc::new(g),
            Arc::new(k),
            Arc::new(id),
        ],
    )
    .unwrap()
}

/// A session over `table` registered as `t`, with `settings` applied.
async fn table_session<S: AsRef<str>>(
    table: &RecordBatch,
    partitions: usize,
    settings: &[S],
) -> Session {
    let session = Session::builder()
        .device("cpu".parse::<DeviceRequest>().unwrap())
        .target_partitions(partitions)
        .build()
        .unwrap();
    session
        .context()
        .register_batch("t", table.clone())
        .unwrap();
    for s in settings {
        run_sql(&session, s.as_ref()).await;
    }
    session
}

/// A CPU session and a wgpu session in device batches of 4,096 rows over the
/// same random table of 20,000 rows in two partitions.
async fn small_batch_sessions(seed: u64) -> (Session, Session) {
    let table = random_table(20_000, seed);
    let cpu = table_session(&table, 2, &["SET kiln.device = 'cpu'"]).await;
    let gpu = table_session(&table, 2, &on_gpu(&["SET kiln.gpu_batch_rows = 4096"])).await;
    (cpu, gpu)
}

/// Random SQL expressions of one type over the random table.
struct ExprGen(Rng);

impl ExprGen {
    fn int(&mut self, depth: u32) -> String {
        if depth == 0 || self.0.below(4) == 0 {
            return self
                .0
                .pick(&[
                    "b",
                    "CAST(a AS BIGINT)",
                    "7",
                    "-3",
                    "CAST(NULL AS BIGINT)",
                    "b",
                    "CAST(extract(year FROM f) AS BIGINT)",
                    "CAST(date_part('month', f) AS BIGINT)",
                    "CAST(date_part('day', f) AS BIGINT)",
                ])
                .into();
        }
        let d = depth - 1;
        match self.0.below(9) {
            0 => format!("({} + {})", self.int(d), self.int(d)),
            1 => format!("({} - {})", self.int(d), self.int(d)),
            2 => format!("({} * {})", self.int(d), self.int(d)),
            3 => format!("({} / {})", self.int(d), self.0.pick(&["3", "-7", "b"])),
            4 => format!("({} % {})", self.int(d), self.0.pick(&["5", "a + 2000"])),
            5 => format!(
                "CASE WHEN {} THEN {} ELSE {} END",
                self.boolean(d),
                self.int(d),
                self.int(d)
            ),
            6 => format!("COALESCE({}, {})", self.int(d), self.int(d)),
            7 => format!("abs({})", self.int(d)),
            _ => format!("(-({}))", self.int(d)),
        }
    }

    fn float(&mut self, depth: u32) -> String {
        if depth == 0 || self.0.below(4) == 0 {
            return self
                .0
                .pick(&["c", "CAST(b AS DOUBLE)", "CAST(e AS DOUBLE)", "2.5", "c"])
                .into();
        }
        let d = depth - 1;
        match self.0.below(8) {
            0 => format!("({} + {})", self.float(d), self.float(d)),
            1 => format!("({} - {})", self.float(d), self.float(d)),
            2 => format!("({} * {})", self.float(d), self.float(d)),
            3 => format!("({} / {})", self.float(d), self.float(d)),
            4 => format!(
                "{}({})",
                self.0.pick(&["round", "floor", "ceil", "abs"]),
                self.float(d)
            ),
            5 => format!("sqrt(abs({}))", self.float(d)),
            6 => format!("CASE WHEN {} THEN {} END", self.boolean(d), self.float(d)),
            _ => format!("CAST({} AS DOUBLE)", self.int(d)),
        }
    }

    fn decimal(&mut self, depth: u32) -> String {
        if depth == 0 || self.0.below(3) == 0 {
            return self
                .0
                .pick(&["e", "e", "CAST(1.25 AS DECIMAL(12,2))"])
                .into();
        }
        let d = depth - 1;
        match self.0.below(3) {
            0 => format!("({} + {})", self.decimal(d), self.decimal(d)),
            1 => format!("({} - e)", self.decimal(d)),
            _ => format!("(e * {})", self.0.pick(&["e", "CAST(0.5 AS DECIMAL(3,1))"])),
        }
    }

    fn boolean(&mut self, depth: u32) -> String {
        if depth == 0 || self.0.below(5) == 0 {
            return self
                .0
                .pick(&["d", "a > 0", "c < 0", "f >= DATE '2000-01-01'"])
                .into();
        }
        let d = depth - 1;
        let cmp = self.0.pick(&["=", "<>", "<", "<=", ">", ">="]);
        match self.0.below(9) {
            0 => format!("({} {cmp} {})", self.int(d), self.int(d)),
            1 => format!("({} {cmp} {})", self.float(d), self.float(d)),
            2 => format!("({} {cmp} {})", self.decimal(d), self.decimal(d)),
            3 => format!("({} AND {})", self.boolean(d), self.boolean(d)),
            4 => format!("({} OR {})", self.boolean(d), self.boolean(d)),
            5 => format!("(NOT {})", self.boolean(d)),
            6 => format!("({} IS {}NULL)", self.int(d), self.0.pick(&["", "NOT "])),
            7 => format!(
                "(a {}IN (1, -5, 17, {}))",
                self.0.pick(&["", "NOT "]),
                self.0.pick(&["NULL", "600"])
            ),
            _ => format!("(a BETWEEN {} AND 300)", self.0.pick(&["-300", "0"])),
        }
    }
}

/// Cells of a result as text, floats kept as numbers for a tolerant compare.
fn cells(batches: &[RecordBatch]) -> Vec<Vec<Result<f64, String>>> {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::arrow::util::display::ArrayFormatter;
    let mut rows = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &Default::default()).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| {
                        if c.data_type() == &DataType::Float64 && c.is_valid(r) {
                            Ok(
                                c.as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                                    .value(r),
                            )
                        } else {
                            Err(f.value(r).to_string())
                        }
                    })
                    .collect(),
            );
        }
    }
    rows
}

fn same(a: &Result<f64, String>, b: &Result<f64, String>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => {
            x.to_bits() == y.to_bits()
                || (x.is_nan() && y.is_nan())
                || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_expressions_match_datafusion_on_the_cpu() {
    if !has_gpu() {
        return;
    }
    let table = random_table(3000, 42);
    let cpu = table_session(&table, 1, &["SET kiln.device = 'cpu'"]).await;
    let gpu = table_session(&table, 1, &on_gpu(&[])).await;
    let mut exprs = ExprGen(Rng(7));
    let (mut lowered, mut errors, total) = (0, 0, 120);
    for i in 0..total {
        let sql = format!(
            "SELECT {} AS i, {} AS x, {} AS p, {} AS m FROM t WHERE {}",
            exprs.int(3),
            exprs.float(3),
            exprs.boolean(3),
            exprs.decimal(2),
            exprs.boolean(3)
        );
        let want = match cpu.sql(&sql).await {
            Ok(df) => df.collect().await,
            Err(e) => panic!("{sql}: {e}"),
        };
        let got = gpu.sql(&sql).await.unwrap().collect().await;
        match (want, got) {
            (Ok(want), Ok(got)) => {
                let (w, g) = (cells(&want), cells(&got));
                assert_eq!(w.len(), g.len(), "query {i}: row counts differ\n{sql}");
                for (r, (wr, gr)) in w.iter().zip(&g).enumerate() {
                    assert!(
                        wr.iter().zip(gr).all(|(a, b)| same(a, b)),
                        "query {i} row {r}: cpu {wr:?} gpu {gr:?}\n{sql}"
                    );
                }
            }
            (Err(w), Err(g)) => {
                // Both fail (a division by zero): the same error.
                assert_eq!(g.to_string(), w.to_string(), "{sql}");
                errors += 1;
            }
            (w, g) => panic!("query {i}: cpu {:?} gpu {:?}\n{sql}", w.err(), g.err()),
        }
        if explain(&gpu, &sql).await.contains("GpuStageExec") {
            lowered += 1;
        }
    }
    eprintln!("{lowered} of {total} random queries had a GPU stage; {errors} failed on both");
    assert!(
        lowered >= total * 9 / 10,
        "only {lowered} of {total} random queries ran on the GPU"
    );
    assert!(
        errors < total / 4,
        "{errors} of {total} queries failed on both"
    );
}

/// Compares `text` with the golden file `tests/it/snapshots/NAME_<gpu>.txt`
/// (the test GPU's: placement differs by backend); `KILN_UPDATE_SNAPSHOTS=1`
/// rewrites the file instead. A backend without golden files yet (CUDA
/// until a first GPU run records them) has its plans written to the target
/// directory's `tmp/snapshots/` and printed, to be reviewed and committed.
fn snapshot(name: &str, text: &str) {
    let name = format!("{name}_{}", test_gpu());
    let path = format!(
        "{}/tests/it/snapshots/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("KILN_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let Ok(want) = std::fs::read_to_string(&path) else {
        assert_ne!(
            test_gpu(),
            "wgpu",
            "{path} is missing (KILN_UPDATE_SNAPSHOTS=1 writes it)"
        );
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.txt")), text).unwrap();
        eprintln!("no golden file {path} yet; this run's plan:\n{text}");
        return;
    };
    assert_eq!(text, want, "EXPLAIN differs from {path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_placement_snapshots() {
    if !has_gpu() {
        return;
    }
    // The data directory differs per run; the plan's text otherwise not.
    let dir = tpch().display().to_string();
    // The kernel's fingerprint hashes the IR's representation; the snapshot
    // pins the placement, not the hash.
    let normalize = |plan: String| {
        let mut plan = plan.replace(dir.trim_start_matches('/'), "$TPCH");
        let mut from = 0;
        while let Some(at) = plan[from..].find("kernel=fused_") {
            let start = from + at + "kernel=fused_".len();
            plan.replace_range(start..start + 16, "<hash>");
            from = start;
        }
        plan
    };
    let gpu = tpch_session(&on_gpu(&[])).await;
    // One on the GPU up to the final merge: TPC-H Q6, its filter, product and
    // partial sum in one stage.
    snapshot("q6", &normalize(explain(&gpu, &query(6)).await));
    // One with a string fallback: the filter splits, its numeric conjunct on
    // the GPU, its string conjunct on the CPU, the arithmetic above on the GPU.
    let mixed = "SELECT l_orderkey, l_extendedprice * (1 - l_discount) * (1 + l_tax) AS charge \
                 FROM lineitem WHERE l_shipmode = 'MAIL' AND l_quantity < 10";
    snapshot("string_fallback", &normalize(explain(&gpu, mixed).await));
    // TPC-H Q1: filter, projection and the partial aggregate grouped by two
    // string keys in one stage; and Q3's ORDER BY ... LIMIT 10 as a top-k
    // stage above the joins.
    snapshot("q1_group_by", &normalize(explain(&gpu, &query(1)).await));
    snapshot("q3_topk", &normalize(explain(&gpu, &query(3)).await));
    // One kept on the CPU by the cost model (the default kiln.gpu_min_rows).
    let costed = tpch_session(&[set_gpu()]).await;
    let small = "SELECT n_nationkey * 2 + n_regionkey AS x FROM nation WHERE n_regionkey > 1";
    snapshot("cost_model_cpu", &normalize(explain(&costed, small).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_the_device_cannot_compute_fall_back_to_the_cpu() {
    if !has_gpu() {
        return;
    }
    // Prices to the fourth power leave 64 bits: the kernel flags every batch
    // and DataFusion's own expressions compute it, in 128 bits.
    let sql = "SELECT l_orderkey, l_extendedprice * l_extendedprice * l_extendedprice * l_extendedprice AS p4 \
               FROM lineitem WHERE l_quantity < 5";
    let cpu = tpch_session(&["SET kiln.device = 'cpu'"]).await;
    let gpu = tpch_session(&on_gpu(&[])).await;
    let want = text(&cpu, sql).await;
    let got = text(&gpu, sql).await;
    assert_eq!(got, want);
    let stage = analyzed_stage(&gpu, sql).await;
    assert!(stage.contains("bytes_to_device="), "{stage}");
    assert!(!stage.contains("cpu_fallback_batches=0"), "{stage}");
    // A query the device computes moves bytes and falls back nowhere.
    let fine = "SELECT l_orderkey, l_extendedprice * (1 - l_discount) AS net FROM lineitem WHERE l_quantity < 5";
    let stage = analyzed_stage(&gpu, fine).await;
    assert!(stage.contains("cpu_fallback_batches=0"), "{stage}");
    assert!(!stage.contains("device_batches=0"), "{stage}");
    // The kernels' own time, from timestamps around the compute pass
    // (lavapipe has them).
    assert!(
        stage.contains("kernel_time=") && !stage.contains("kernel_time=0ns"),
        "{stage}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_without_group_by_match_the_cpu() {
    if !has_gpu() {
        return;
    }
    let table = random_table(20_000, 11);
    // Two partitions: DataFusion aggregates in a partial and a final step.
    let cpu = table_session(&table, 2, &["SET kiln.device = 'cpu'"]).await;
    let gpu = table_session(&table, 2, &on_gpu(&[])).await;
    let aggregates = "sum(a) AS s_a, count(a) AS n_a, count(*) AS n, min(a) AS lo_a, max(b) AS hi_b, \
                      avg(e) AS avg_e, sum(c) AS s_c, avg(c) AS avg_c, min(f) AS lo_f, max(e) AS hi_e, \
                      sum(e * e) AS s_e2, avg(a) AS avg_a";
    for filter in [
        "TRUE",
        "a > 0 AND d",
        "c < 0 OR e > 100",
        "a > 100000", // keeps nothing: NULL sums, zero counts
    ] {
        let sql = format!("SELECT {aggregates} FROM t WHERE {filter}");
        let plan = explain(&gpu, &sql).await;
        assert!(
            plan.contains("ops=[FilterExec, AggregateExec]")
                || plan.contains("ops=[AggregateExec]"),
            "{filter}: the partial aggregate should be in a stage:\n{plan}"
        );
        let (w, g) = (
            cells(&run_sql(&cpu, &sql).await),
            cells(&run_sql(&gpu, &sql).await),
        );
        assert_eq!(w.len(), 1);
        assert!(
            w[0].iter().zip(&g[0]).all(|(a, b)| same(a, b)),
            "{filter}: cpu {:?} gpu {:?}",
            w[0],
            g[0]
        );
    }
    // Block sums beyond 64 bits: the device flags them and DataFusion's own
    // accumulators take those batches.
    let sql = "SELECT sum(b * 1048576) AS s, count(*) AS n FROM t";
    let want = text(&cpu, sql).await;
    let got = text(&gpu, sql).await;
    assert_eq!(got, want);
    let stage = analyzed_stage(&gpu, sql).await;
    assert!(!stage.contains("cpu_fallback_batches=0"), "{stage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_with_group_by_match_the_cpu() {
    if !has_gpu() {
        return;
    }
    // Small device batches: groups repeat across launches and the final
    // aggregate merges their states.
    let (cpu, gpu) = small_batch_sessions(23).await;
    let aggregates = "sum(a) AS s_a, count(a) AS n_a, count(*) AS n, min(a) AS lo_a, max(b) AS hi_b, \
                      avg(e) AS avg_e, sum(c) AS s_c, avg(c) AS avg_c, min(f) AS lo_f, max(e) AS hi_e";
    // (keys, whether every batch folds on the device)
    let cases = [
        ("g", true),     // strings with NULLs, one > 12 bytes
        ("k", true),     // sparse integers: numbered, not ranged
        ("d", true),     // booleans with NULLs
        ("g, d", true),  // 6 x 3 combinations, indexed directly
        ("g, k", false), // 66 combinations occur, > 64: the CPU
        ("f", false),    // dates: thousands of groups: the CPU
    ];
    for (keys, on_device) in cases {
        for filter in ["TRUE", "a > 0 AND c < 100", "a > 100000"] {
            let sql = format!(
                "SELECT {keys}, {aggregates} FROM t WHERE {filter} GROUP BY {keys} ORDER BY {keys}"
            );
            let plan = explain(&gpu, &sql).await;
            let stage = plan
                .lines()
                .find(|l| l.contains("GpuStageExec"))
                .unwrap_or_else(|| panic!("{sql}: no stage in\n{plan}"));
            assert!(
                stage.contains("AggregateExec]") && stage.contains("group_by=["),
                "{stage}"
            );
            let (w, g) = (
                cells(&run_sql(&cpu, &sql).await),
                cells(&run_sql(&gpu, &sql).await),
            );
            assert_eq!(w.len(), g.len(), "{sql}: group counts differ");
            for (wr, gr) in w.iter().zip(&g) {
                assert!(
                    wr.iter().zip(gr).all(|(a, b)| same(a, b)),
                    "{sql}: cpu {wr:?} gpu {gr:?}"
                );
            }
            let stage = analyzed_stage(&gpu, &sql).await;
            assert_eq!(
                stage.contains("cpu_fallback_batches=0"),
                on_device,
                "{sql}: {stage}"
            );
        }
    }
    // GROUP BY without aggregates; keys computed on the host (in the
    // aggregate, or in a projection below it); a key whose evaluation fails
    // on rows the filter drops (those batches go to the CPU).
    for sql in [
        "SELECT DISTINCT g, d FROM t WHERE a > 0 ORDER BY g, d",
        "SELECT a % 7 AS m, count(*) AS n, sum(b) AS s FROM t GROUP BY a % 7 ORDER BY m",
        "SELECT y, count(*) AS n, max(e) AS hi FROM (SELECT extract(year FROM f) AS y, e FROM t WHERE a < 500) \
         GROUP BY y ORDER BY y",
        "SELECT CASE WHEN c > 0 THEN 'pos' ELSE upper(g) END AS s, avg(a) AS m FROM t GROUP BY 1 ORDER BY 1",
        "SELECT 1000 / a AS q, count(*) AS n FROM t WHERE a > 990 GROUP BY 1000 / a ORDER BY q",
        // Groups whose average has no values: a NULL count in the state,
        // as DataFusion's (a 0 made the final avg divide by zero).
        "SELECT g, avg(e) AS m, avg(a) AS n FROM t WHERE e IS NULL GROUP BY g ORDER BY g",
    ] {
        let want = text(&cpu, sql).await;
        let got = text(&gpu, sql).await;
        assert_eq!(got, want, "{sql}");
        let plan = explain(&gpu, sql).await;
        assert!(plan.contains("group_by=["), "{sql}\n{plan}");
    }
    // A computed key folds on the device (a % 7 has 13 values and NULL).
    let sql = "SELECT a % 7 AS m, count(*) AS n FROM t GROUP BY a % 7";
    let stage = analyzed_stage(&gpu, sql).await;
    assert!(stage.contains("cpu_fallback_batches=0"), "{stage}");
    // Float keys stay on the CPU, and EXPLAIN says so.
    let plan = explain(&gpu, "SELECT c, count(*) AS n FROM t GROUP BY c").await;
    assert!(
        plan.contains("GROUP BY c of type Float64 has no GPU kernel"),
        "{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_cardinality_group_by_folds_with_atomics() {
    if !has_gpu() {
        return;
    }
    let (cpu, gpu) = small_batch_sessions(29).await;
    // No float sums: WGSL has no float atomics.
    let aggregates = "sum(a) AS s_a, count(a) AS n_a, count(*) AS n, min(a) AS lo_a, max(b) AS hi_b, \
                      sum(b) AS s_b, avg(e) AS avg_e, min(f) AS lo_f, max(e) AS hi_e";
    // (keys, whether some batch has more groups than the tile fold takes,
    // whether the device numbers the keys)
    let cases = [
        ("f", true, true),         // dates: thousands of groups, NULL among them
        ("g, k", true, false),     // 66 combinations occur; strings: the host numbers
        ("id", true, true),        // every row its own group
        ("b", true, true),         // sparse 64-bit keys
        ("id % 3001", true, true), // a computed key, about a group per row
        ("g", false, false),       // six groups: the tile fold
        ("d, k", false, true),     // booleans and sparse integers, NULLs in both
    ];
    for (keys, many, numbered) in cases {
        for filter in ["TRUE", "a > 0 AND b < 0"] {
            let sql = format!(
                "SELECT {keys}, {aggregates} FROM t WHERE {filter} GROUP BY {keys} ORDER BY {keys}"
            );
            assert_eq!(text(&gpu, &sql).await, text(&cpu, &sql).await, "{sql}");
            let stage = analyzed_stage(&gpu, &sql).await;
            assert!(stage.contains("more_groups=atomics"), "{stage}");
            assert!(stage.contains("cpu_fallback_batches=0"), "{sql}: {stage}");
            assert_eq!(
                !stage.contains("atomic_fold_batches=0"),
                many,
                "{sql}: {stage}"
            );
            assert_eq!(
                !stage.contains("device_numbered_batches=0"),
                numbered,
                "{sql}: {stage}"
            );
            assert_eq!(stage.contains("numbering=device"), numbered, "{stage}");
        }
    }
    // String views of at most 12 bytes are numbered on the device by their
    // views' words; a batch holding a longer value goes to the host.
    for (view, numbered) in [
        ("CASE WHEN length(g) > 12 THEN 'long' ELSE g END", true),
        ("g", false),
    ] {
        for session in [&cpu, &gpu] {
            run_sql(session, "DROP TABLE IF EXISTS tv").await;
            run_sql(
                session,
                &format!("CREATE TABLE tv AS SELECT arrow_cast({view}, 'Utf8View') AS v, * FROM t"),
            )
            .await;
        }
        for keys in ["v", "v, k", "v, d"] {
            let sql = format!(
                "SELECT {keys}, {aggregates} FROM tv WHERE a > -900 GROUP BY {keys} ORDER BY {keys}"
            );
            assert_eq!(text(&gpu, &sql).await, text(&cpu, &sql).await, "{sql}");
            let stage = analyzed_stage(&gpu, &sql).await;
            assert!(stage.contains("numbering=device"), "{stage}");
            assert_eq!(
                !stage.contains("device_numbered_batches=0"),
                numbered,
                "{view}: {sql}: {stage}"
            );
        }
    }
    // Switched off, the host numbers every batch's keys.
    let host = table_session(
        &random_table(20_000, 29),
        2,
        &on_gpu(&[
            "SET kiln.gpu_batch_rows = 4096",
            "SET kiln.gpu_group_numbering = false",
        ]),
    )
    .await;
    let sql = format!("SELECT f, {aggregates} FROM t GROUP BY f ORDER BY f");
    assert_eq!(text(&host, &sql).await, text(&cpu, &sql).await);
    let stage = analyzed_stage(&host, &sql).await;
    assert!(
        stage.contains("numbering=host (kiln.gpu_group_numbering is off)")
            && stage.contains("device_numbered_batches=0"),
        "{stage}"
    );
    // Switched off, batches of many groups are aggregated on the CPU.
    let off = table_session(
        &random_table(20_000, 29),
        2,
        &on_gpu(&[
            "SET kiln.gpu_batch_rows = 4096",
            "SET kiln.gpu_group_atomics = false",
        ]),
    )
    .await;
    let sql = format!("SELECT f, {aggregates} FROM t GROUP BY f ORDER BY f");
    assert_eq!(text(&off, &sql).await, text(&cpu, &sql).await);
    let stage = analyzed_stage(&off, &sql).await;
    assert!(
        stage.contains("more_groups=cpu (kiln.gpu_group_atomics is off)"),
        "{stage}"
    );
    assert!(!stage.contains("cpu_fallback_batches=0"), "{stage}");
    // A float sum over many groups: WGSL cannot, and EXPLAIN says why.
    let sql = "SELECT f, sum(c) AS s FROM t GROUP BY f ORDER BY f";
    assert_eq!(text(&gpu, sql).await, text(&cpu, sql).await);
    let stage = analyzed_stage(&gpu, sql).await;
    assert!(stage.contains("more_groups=cpu (a float sum"), "{stage}");
    assert!(!stage.contains("cpu_fallback_batches=0"), "{stage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_aggregates_merge_states_on_the_device() {
    if !has_gpu() {
        return;
    }
    let (cpu, gpu) = small_batch_sessions(31).await;
    // No float states (avg of an integer sums in f64): WGSL has no float
    // atomics for the many-group cases.
    let ints = "sum(a) AS s_a, count(a) AS n_a, count(*) AS n, min(a) AS lo_a, max(b) AS hi_b, \
                sum(b) AS s_b, avg(e) AS avg_e, min(f) AS lo_f, max(e) AS hi_e";
    // (query, whether every batch of the final stage merges on the device)
    let cases = [
        (
            format!("SELECT g, {ints} FROM t GROUP BY g ORDER BY g"),
            true,
        ),
        (
            format!(
                "SELECT g, sum(c) AS s_c, avg(c) AS m_c, avg(a) AS m_a, {ints} FROM t GROUP BY g ORDER BY g"
            ),
            true,
        ),
        (
            format!("SELECT f, {ints} FROM t WHERE a > 0 GROUP BY f ORDER BY f"),
            true,
        ),
        (
            format!("SELECT id % 5000 AS m, {ints} FROM t GROUP BY id % 5000 ORDER BY m"),
            true,
        ),
        (format!("SELECT {ints} FROM t WHERE b < 0"), true),
        (format!("SELECT {ints} FROM t WHERE a > 100000"), true),
        (
            "SELECT DISTINCT g, k FROM t ORDER BY g, k".to_string(),
            true,
        ),
        // A float sum over thousands of groups: no float atomics on WGSL.
        (
            "SELECT f, sum(c) AS s FROM t GROUP BY f ORDER BY f".to_string(),
            false,
        ),
    ];
    for (sql, on_device) in &cases {
        assert_eq!(text(&gpu, sql).await, text(&cpu, sql).await, "{sql}");
        let analyzed = text(&gpu, &format!("EXPLAIN ANALYZE {sql}")).await;
        let stages: Vec<&str> = analyzed
            .lines()
            .filter(|l| l.contains("GpuStageExec"))
            .collect();
        let last = stages
            .iter()
            .find(|l| l.contains("mode=final"))
            .unwrap_or_else(|| panic!("{sql}: no final stage in\n{analyzed}"));
        assert!(
            stages
                .iter()
                .any(|l| !l.contains("mode=final") && l.contains("AggregateExec")),
            "{sql}: no partial stage in\n{analyzed}"
        );
        assert_eq!(
            last.contains("cpu_fallback_batches=0"),
            *on_device,
            "{sql}: {last}"
        );
    }
    // An aggregate over sorted input promises sorted output, which a stage
    // does not keep: it stays on the CPU and says so.
    let sql = "SELECT k, count(*) AS n FROM (SELECT k FROM t ORDER BY k LIMIT 1000) GROUP BY k";
    assert_eq!(text(&gpu, sql).await, text(&cpu, sql).await);
    let plan = explain(&gpu, sql).await;
    assert!(
        plan.contains(
            "an aggregate over sorted input (its output keeps the order) stays on the CPU"
        ),
        "{plan}"
    );
    // The states a final stage holds count against the session's memory
    // pool: past its limit the query fails with one clear error.
    let tight = table_session(
        &random_table(20_000, 31),
        2,
        &on_gpu(&[
            "SET kiln.gpu_batch_rows = 4096",
            "SET datafusion.runtime.memory_limit = '64K'",
        ]),
    )
    .await;
    let sql = format!("SELECT id, {ints} FROM t GROUP BY id");
    let err = match tight.sql(&sql).await {
        Ok(df) => df.collect().await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
    .expect_err("a 64 KiB pool cannot hold 20,000 groups");
    assert!(
        err.contains("Resources exhausted") && err.contains("GpuStageExec"),
        "{err}"
    );
    // The cost model keeps a final aggregate over few states on the CPU.
    let few = table_session(&random_table(20_000, 31), 2, &[set_gpu()]).await;
    let plan = explain(&few, &format!("SELECT g, {ints} FROM t GROUP BY g")).await;
    assert!(!plan.contains("mode=final"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_step_aggregates_fold_on_the_device() {
    if !has_gpu() {
        return;
    }
    // One partition: DataFusion plans each aggregate as one single-step
    // operator, which the stage splits into device folds and a host finish.
    let table = random_table(20_000, 37);
    let cpu = table_session(&table, 1, &["SET kiln.device = 'cpu'"]).await;
    let gpu = table_session(&table, 1, &on_gpu(&["SET kiln.gpu_batch_rows = 4096"])).await;
    let ints = "sum(a) AS s_a, count(a) AS n_a, count(*) AS n, min(a) AS lo_a, max(b) AS hi_b, \
                avg(e) AS avg_e, min(f) AS lo_f, max(e) AS hi_e";
    for sql in [
        format!("SELECT g, {ints}, sum(c) AS s_c, avg(a) AS m_a FROM t GROUP BY g ORDER BY g"),
        format!("SELECT f, {ints} FROM t WHERE a > 0 GROUP BY f ORDER BY f"),
        format!("SELECT {ints} FROM t WHERE b < 0 AND a + 1 > 3"),
        // No row passes: still one row of empty aggregates.
        format!("SELECT {ints} FROM t WHERE a > 100000"),
        "SELECT DISTINCT g, d FROM t ORDER BY g, d".to_string(),
    ] {
        assert_eq!(text(&gpu, &sql).await, text(&cpu, &sql).await, "{sql}");
        let stage = analyzed_stage(&gpu, &sql).await;
        assert!(stage.contains("mode=single"), "{sql}: {stage}");
        assert!(stage.contains("cpu_fallback_batches=0"), "{sql}: {stage}");
    }
    // A batch the device flags is folded by the partial half on the CPU
    // (a sum beyond 64 bits in one workgroup), and still finishes right.
    let sql = "SELECT g, sum(b * 1000000) AS s FROM t GROUP BY g ORDER BY g";
    assert_eq!(text(&gpu, sql).await, text(&cpu, sql).await);
    let stage = analyzed_stage(&gpu, sql).await;
    assert!(!stage.contains("cpu_fallback_batches=0"), "{stage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_by_limit_matches_the_cpu() {
    if !has_gpu() {
        return;
    }
    // Small device batches: the first rows are kept across launches.
    let (cpu, gpu) = small_batch_sessions(5).await;
    // Orders ending in the unique id, so the first k rows are one set.
    for (order, k) in [
        ("c DESC NULLS LAST, id", 10),
        ("a NULLS FIRST, id", 1),
        ("e DESC, id DESC", 128),
        ("f, id", 37),
        ("a * 2 + k DESC NULLS FIRST, id", 5),
        ("d, id", 20),  // booleans: ties broken by id on the host
        ("g, id", 10),  // strings: no GPU key, the sort stays on the CPU
        ("c, id", 129), // past the device's top-k: the CPU
    ] {
        for filter in ["TRUE", "a > 0 AND c < 100", "a > 100000"] {
            let sql = format!(
                "SELECT id, a, c, e, f, g, a * 2 + k AS x FROM t WHERE {filter} ORDER BY {order} LIMIT {k}"
            );
            let want = text(&cpu, &sql).await;
            let got = text(&gpu, &sql).await;
            assert_eq!(got, want, "{sql}");
            let plan = explain(&gpu, &sql).await;
            let on_device = plan
                .lines()
                .any(|l| l.contains("GpuStageExec") && l.contains("topk=["));
            let expected = !order.starts_with('g') && k <= 128;
            assert_eq!(on_device, expected, "{sql}\n{plan}");
        }
    }
    let plan = explain(&gpu, "SELECT id FROM t ORDER BY c LIMIT 129").await;
    assert!(
        plan.contains("LIMIT 129: the GPU's top-k keeps 1 to 128 rows"),
        "{plan}"
    );
    let plan = explain(&gpu, "SELECT id FROM t ORDER BY c").await;
    assert!(
        plan.contains("a sort without LIMIT stays on the CPU"),
        "{plan}"
    );
}

/// round, floor and ceil of doubles far past 2^31 (and halves) match the CPU
/// on wgpu: lavapipe's own f64 trunc returns such values unchanged, so the
/// shaders clear the fraction's bits themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_doubles_round_floor_and_ceil_as_on_the_cpu() {
    if !has_gpu() {
        return;
    }
    let table = random_table(3000, 42);
    let cpu = table_session(&table, 1, &["SET kiln.device = 'cpu'"]).await;
    let gpu = table_session(&table, 1, &on_gpu(&[])).await;
    let sql = "SELECT b, round(CAST(b AS DOUBLE) + 0.5) AS r1, round(-0.5 - CAST(b AS DOUBLE)) AS r2, \
               round(CAST(b AS DOUBLE) * 1.25) AS r3, floor(CAST(b AS DOUBLE) - 0.25) AS f, \
               ceil(CAST(b AS DOUBLE) / 3.0) AS c, round(CAST(b AS DOUBLE) / 1e6) AS r4 \
               FROM t WHERE b IS NOT NULL AND f < DATE '2000-01-01'";
    let text = |batches: &[RecordBatch]| {
        datafusion::arrow::util::pretty::pretty_format_batches(batches)
            .unwrap()
            .to_string()
    };
    let want = cpu.sql(sql).await.unwrap().collect().await.unwrap();
    let got = gpu.sql(sql).await.unwrap().collect().await.unwrap();
    assert!(want.iter().map(|b| b.num_rows()).sum::<usize>() > 100);
    assert_eq!(text(&want), text(&got));
    let plan = gpu
        .sql(&format!("EXPLAIN {sql}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(
        text(&plan).contains(&format!("GpuStageExec: device={}", test_gpu())),
        "{}",
        text(&plan)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_to_decimal_scales_beyond_64_bits_match_the_cpu() {
    // Found by the codegen fuzz target: a cast to a decimal scale above 18
    // multiplies by a power of ten that leaves i64 (the generator computed
    // it with an overflowing `pow`). Zeros stay on the device; any other
    // value overflows 64 bits and sends its batch to the CPU.
    if !has_gpu() {
        return;
    }
    let table = random_table(3000, 7);
    let cpu = table_session(&table, 1, &["SET kiln.device = 'cpu'"]).await;
    let gpu = table_session(&table, 1, &on_gpu(&[])).await;
    for sql in [
        "SELECT id, CAST(a AS DECIMAL(38, 20)) AS w, CAST(e AS DECIMAL(38, 25)) AS v FROM t \
         WHERE a = 0 OR a IS NULL ORDER BY id",
        "SELECT id, CAST(a AS DECIMAL(38, 19)) AS w FROM t WHERE a > 990 ORDER BY id",
    ] {
        let want = text(&cpu, sql).await;
        assert_eq!(text(&gpu, sql).await, want, "{sql}");
        assert!(want.lines().count() > 5, "{want}");
        assert!(
            explain(&gpu, sql).await.contains("GpuStageExec"),
            "{}",
            explain(&gpu, sql).await
        );
    }
}
