//! Kiln's exact top-k kernel as a long-lived process, for the side-by-side
//! harness `benches/vector_topk.py`: it loads the corpus and the queries once
//! (raw little-endian f32 files written by the harness), then answers one
//! command per stdin line so the harness can interleave it with faiss and
//! numpy runs in the same invocation:
//!
//! ```text
//! run <queries> <k> <metric>   →   <seconds> <ids of query 0's hits, comma-separated>
//! ```
//!
//! Timed: `VectorSearch::new` (query upload), every tile pushed, `finish`
//! (exact rescoring). Not timed: loading the files.

use std::io::{BufRead, Write};
use std::time::Instant;

use kiln_kernels::ops::vector::Metric;
use kiln_kernels::vector_search::VectorSearch;
use kiln_kernels::{Device, DeviceRequest};

/// Corpus rows per pushed tile: what `kiln.vector_memory_budget`'s default
/// (256 MiB) gives for one query at D = 384.
const TILE_ROWS: usize = 170_000;

/// Prints one `error:` line and exits: bad input is never a panic.
fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}

fn read_f32(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| fail(format!("cannot read {path}: {e}")));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let (Some(corpus), Some(queries), Some(dim)) =
        (arg("--corpus"), arg("--queries"), arg("--dim"))
    else {
        // `cargo bench` runs every bench target with no arguments: nothing to do.
        eprintln!(
            "usage: vector_topk_kernel --corpus F32_FILE --queries F32_FILE --dim D [--device DEV]"
        );
        return;
    };
    let dim: usize = match dim.parse() {
        Ok(d) if d > 0 => d,
        _ => fail(format!("--dim must be a positive number, got '{dim}'")),
    };
    let request: DeviceRequest = arg("--device")
        .unwrap_or_else(|| "cpu".into())
        .parse()
        .unwrap_or_else(|e| fail(e));
    let device = Device::open(request).unwrap_or_else(|e| fail(e));
    let corpus = read_f32(&corpus);
    let queries = read_f32(&queries);
    let rows = corpus.len() / dim;
    let ids: Vec<u64> = (0..rows as u64).collect();
    println!("ready {rows} {}", device.info().id());
    std::io::stdout().flush().ok();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap_or_else(|e| fail(format!("reading stdin: {e}")));
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [_, q, k, metric] = parts[..] else {
            if parts.first() == Some(&"quit") {
                return;
            }
            fail(format!("expected 'run Q K METRIC', got '{line}'"));
        };
        let (Ok(q), Ok(k)) = (q.parse::<usize>(), k.parse::<usize>()) else {
            fail(format!("Q and K must be numbers in '{line}'"));
        };
        if q * dim > queries.len() {
            fail(format!(
                "{q} queries asked, the queries file holds {}",
                queries.len() / dim
            ));
        }
        let metric: Metric = metric.parse().unwrap_or_else(|e: String| fail(e));
        let start = Instant::now();
        let mut search = VectorSearch::new(&device, metric, dim, &queries[..q * dim], k)
            .unwrap_or_else(|e| fail(e));
        for (tile, tile_ids) in corpus.chunks(TILE_ROWS * dim).zip(ids.chunks(TILE_ROWS)) {
            search.push(tile, tile_ids).unwrap_or_else(|e| fail(e));
        }
        let hits = search.finish();
        let seconds = start.elapsed().as_secs_f64();
        let first: Vec<String> = hits[0].iter().map(|h| h.id.to_string()).collect();
        println!("{seconds:.6} {}", first.join(","));
        std::io::stdout().flush().ok();
    }
}
