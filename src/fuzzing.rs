//! The bodies of Kiln's fuzz targets (`fuzz/fuzz_targets/*.rs`, run with
//! `cargo fuzz`), kept in the crate so the committed corpora
//! (`fuzz/corpus/<target>/`) replay as an ordinary test in every CI run
//! (`tests/it/fuzz_corpus.rs`). Each takes arbitrary bytes and must return:
//! an error is a fine answer; a panic, an abort or a hang is a bug.
//!
//! Not an API: nothing here is stable.

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;

use crate::session::Session;

/// Panics known and reported, in code Kiln does not own: the file a panic
/// happens in, from its crate's directory on. A target lets them pass so the
/// fuzzer can look for others. (No longer here, because Kiln now checks
/// what the library trusted: a footer whose metadata length exceeds the
/// file, `kiln_engine::io::parquet_footer`; column chunks outside the file,
/// an embedded Arrow schema arrow-ipc cannot convert, sorting columns beyond
/// the schema, row counts beyond what statistics can multiply,
/// `kiln_engine::io::parquet_metadata`.)
///
/// The two left are page data, which only decoding can check: Kiln's scans
/// run under `kiln_engine::exec::DecodeGuardExec`, which turns them into an
/// error; the Parquet target fails on a guarded panic at any other site.
pub const KNOWN_PANICS: &[&str] = &[
    // A data page in dictionary encoding in a column chunk without a
    // dictionary page: parquet's column reader `expect`s the dictionary
    // decoder (a page-level lie; the metadata cannot tell, as some writers
    // leave the dictionary page offset unset).
    "parquet-59.3.2/src/column/reader/decoder.rs",
    // A page whose run-length or delta encoded values hold a variable-length
    // integer longer than ten bytes: parquet's bit reader shifts past 64 bits
    // (an overflow panic where overflow is checked) and then asserts, as its
    // doc says it does on bad input.
    "parquet-59.3.2/src/util/bit_util.rs",
];

/// Fails (a panic, which the fuzzer records) when `error` is a panic the
/// decode guard caught at a site not in [`KNOWN_PANICS`]: the guard keeps
/// users from crashing, not the fuzzer from finding new panics.
fn check_guarded(error: &datafusion::error::DataFusionError) {
    let text = error.to_string();
    if text.contains("its page data cannot be decoded")
        && !KNOWN_PANICS.iter().any(|site| text.contains(site))
    {
        panic!("a panic the decode guard caught at an unknown site: {text}");
    }
}

static KNOWN_HIT: AtomicBool = AtomicBool::new(false);

/// Runs `body`, letting a panic listed in [`KNOWN_PANICS`] pass; any other
/// panic goes on to the hook that was installed before (libFuzzer's, which
/// records a crash, or the test harness's).
fn tolerating_known_panics(body: impl FnOnce()) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A panic the decode guard catches goes on to its hook (below
            // or above this one), which keeps its message for the error.
            let known = !kiln_engine::exec::decode_guard::is_guarded()
                && info
                    .location()
                    .is_some_and(|l| KNOWN_PANICS.iter().any(|k| l.file().ends_with(k)));
            if known {
                KNOWN_HIT.store(true, Ordering::SeqCst);
            } else {
                previous(info);
            }
        }));
    });
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(body))
        && !KNOWN_HIT.swap(false, Ordering::SeqCst)
    {
        std::panic::resume_unwind(panic);
    }
}

/// Batches a query may produce before the target stops reading it (the
/// execution is bounded: `SELECT * FROM generate_series(1, 1e12)` is fine).
const MAX_BATCHES: usize = 8;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_stack_size(64 << 20)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn session() -> Session {
    let device = "cpu".parse().expect("the cpu device");
    let session = Session::builder()
        .device(device)
        .target_partitions(1)
        .build()
        .expect("a CPU session");
    session
        .set_option("kiln.statement_timeout", "2s")
        .expect("a valid timeout");
    session
}

/// Runs every statement of `sql` that reads (queries, `EXPLAIN`, `SET`,
/// `CREATE EXTERNAL TABLE`), reading at most [`MAX_BATCHES`] of each
/// result. Statements that write (`COPY`, `INSERT`, `CREATE TABLE AS`)
/// are planned but not run: a fuzzer must not write files.
pub fn sql(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let session = session();
    runtime().block_on(async {
        let Ok(statements) = session.parse(text) else {
            return;
        };
        for statement in statements {
            let Ok(plan) = session.plan_statement(statement).await else {
                return;
            };
            use datafusion::logical_expr::{DdlStatement, LogicalPlan};
            let writes = matches!(
                plan,
                LogicalPlan::Copy(_)
                    | LogicalPlan::Dml(_)
                    | LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(_))
                    | LogicalPlan::Ddl(DdlStatement::CreateView(_))
            );
            if writes {
                let _ = session.context().state().create_physical_plan(&plan).await;
                continue;
            }
            let run = async {
                let frame = session.context().execute_logical_plan(plan).await?;
                let mut stream = frame.execute_stream().await?;
                let mut batches = 0;
                while let Some(batch) = stream.next().await {
                    batch?;
                    batches += 1;
                    if batches == MAX_BATCHES {
                        break;
                    }
                }
                Ok::<_, datafusion::error::DataFusionError>(())
            };
            let limit = std::time::Duration::from_secs(2);
            if !matches!(tokio::time::timeout(limit, run).await, Ok(Ok(()))) {
                return;
            }
        }
    });
}

/// Reads `data` as a Parquet file through Kiln's scan: the schema, then
/// every column of at most [`MAX_BATCHES`] batches, then a count.
pub fn parquet(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("fuzz.parquet");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let session = session();
    let location = path.display().to_string();
    tolerating_known_panics(|| {
        runtime().block_on(read_parquet(&session, &location));
    });
}

async fn read_parquet(session: &Session, location: &str) {
    for query in [
        format!("SELECT * FROM '{location}'"),
        format!("SELECT count(*) FROM '{location}'"),
    ] {
        let Ok(frame) = session.sql(&query).await else {
            return;
        };
        let Ok(mut stream) = frame.execute_stream().await else {
            return;
        };
        let mut batches = 0;
        while let Some(batch) = stream.next().await {
            if let Err(e) = batch {
                check_guarded(&e);
                return;
            }
            batches += 1;
            if batches == MAX_BATCHES {
                break;
            }
        }
    }
}

/// Loads a model directory made of `data`: `config.json`, `tokenizer.json`
/// and `model.safetensors`, separated by the bytes `\0\0--\0\0` (missing
/// parts are missing files), then embeds one short text if it loads.
pub fn model_dir(data: &[u8]) {
    const SEPARATOR: &[u8] = b"\0\0--\0\0";
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    parts.push(rest);
    for (name, bytes) in ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .zip(parts)
    {
        if std::fs::write(dir.path().join(name), bytes).is_err() {
            return;
        }
    }
    if let Ok(model) = kiln_engine::model::EmbeddingModel::load_dir(dir.path()) {
        let _ = model.embed(&["a short text"]);
    }
}
