//! Kiln and plain DataFusion as long-lived processes, for the TPC-H
//! side-by-side harness `benches/tpch.py` (which starts one per engine with
//! `--engine`): each registers the TPC-H tables of `--data` once, then
//! answers one command per stdin line so the harness can interleave it with
//! the other engines in the same invocation:
//!
//! ```text
//! run <engine> <query.sql>   →   ok <seconds> <rows>   |   err <message>
//! ```
//!
//! Engines: `kiln` (a Kiln session on `--device`, default auto: the CPU on a
//! machine without a GPU), `datafusion` (a bare DataFusion `SessionContext`,
//! same version, same partitions). Timed: planning and executing the query
//! and collecting its batches; not timed: reading the SQL file.

use std::io::{BufRead, Write};
use std::time::Instant;

use datafusion::prelude::{SessionConfig, SessionContext};
use kiln::{DeviceRequest, Session};

const TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

/// Prints one `error:` line and exits: bad input is never a panic.
fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}

struct Args {
    data: String,
    partitions: usize,
    device: DeviceRequest,
    settings: Vec<String>,
    /// `kiln`, `datafusion`, or both when not given.
    engine: Option<String>,
}

fn args() -> Args {
    let mut out = Args {
        data: String::new(),
        partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
        device: DeviceRequest::Auto,
        settings: Vec::new(),
        engine: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| fail(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--data" => out.data = value(),
            "--partitions" => {
                out.partitions = value()
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--partitions: {e}")))
            }
            "--device" => {
                out.device = value()
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--device: {e}")))
            }
            "--set" => out.settings.push(value()),
            "--engine" => {
                let e = value();
                if e != "kiln" && e != "datafusion" {
                    fail(format!("--engine: expected kiln or datafusion, got {e}"));
                }
                out.engine = Some(e);
            }
            // `cargo bench` passes --bench to harness=false binaries.
            "--bench" => {}
            other => fail(format!("unknown argument {other}")),
        }
    }
    if out.data.is_empty() {
        fail(
            "usage: tpch_runner --data DIR [--partitions N] [--device D] [--set 'kiln.x = y'] \
             [--engine kiln|datafusion]",
        );
    }
    out
}

async fn kiln_session(a: &Args) -> Session {
    let session = Session::builder()
        .device(a.device)
        .target_partitions(a.partitions)
        .build()
        .unwrap_or_else(|e| fail(e));
    for t in TABLES {
        session
            .register_parquet(t, &format!("{}/{t}/", a.data))
            .await
            .unwrap_or_else(|e| fail(e));
    }
    for s in &a.settings {
        let df = session
            .sql(&format!("SET {s}"))
            .await
            .unwrap_or_else(|e| fail(e));
        df.collect().await.unwrap_or_else(|e| fail(e));
    }
    session
}

async fn datafusion_context(a: &Args) -> SessionContext {
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(a.partitions));
    for t in TABLES {
        ctx.register_parquet(t, format!("{}/{t}/", a.data), Default::default())
            .await
            .unwrap_or_else(|e| fail(e));
    }
    ctx
}

#[tokio::main]
async fn main() {
    let a = args();
    let wants = |e: &str| a.engine.as_deref().is_none_or(|only| only == e);
    let kiln = if wants("kiln") {
        Some(kiln_session(&a).await)
    } else {
        None
    };
    let datafusion = if wants("datafusion") {
        Some(datafusion_context(&a).await)
    } else {
        None
    };
    println!("ready");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.unwrap_or_else(|e| fail(e));
        let parts: Vec<&str> = line.split_whitespace().collect();
        let reply = match parts.as_slice() {
            ["quit"] => break,
            ["run", engine, file] => {
                let sql =
                    std::fs::read_to_string(file).unwrap_or_else(|e| fail(format!("{file}: {e}")));
                let started = Instant::now();
                let result = match (*engine, &kiln, &datafusion) {
                    ("kiln", Some(kiln), _) => match kiln.sql(&sql).await {
                        Ok(df) => df.collect().await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    ("datafusion", _, Some(datafusion)) => match datafusion.sql(&sql).await {
                        Ok(df) => df.collect().await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    (other, _, _) => Err(format!("engine {other} is not in this process")),
                };
                let seconds = started.elapsed().as_secs_f64();
                match result {
                    Ok(batches) => {
                        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                        format!("ok {seconds:.6} {rows}")
                    }
                    Err(e) => format!("err {}", e.replace('\n', " ")),
                }
            }
            _ => format!("err unknown command: {line}"),
        };
        println!("{reply}");
        std::io::stdout().flush().unwrap_or_else(|e| fail(e));
    }
}
