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

use kiln_kernels::ops::topk::VectorSearch;
use kiln_kernels::ops::vector::Metric;
use kiln_kernels::{Device, DeviceRequest};

/// Corpus rows per pushed tile: what `kiln.vector_memory_budget`'s default
/// (256 MiB) gives for one query at D = 384.
const TILE_ROWS: usize = 170_000;

fn read_f32(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("error: cannot read {path}: {e}");
        std::process::exit(1);
    });
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
    let dim: usize = dim.parse().expect("--dim is a number");
    let request: DeviceRequest = arg("--device")
        .unwrap_or_else(|| "cpu".into())
        .parse()
        .expect("--device");
    let device = Device::open(request).expect("open device");
    let corpus = read_f32(&corpus);
    let queries = read_f32(&queries);
    let rows = corpus.len() / dim;
    let ids: Vec<u64> = (0..rows as u64).collect();
    println!("ready {rows} {}", device.info().id());
    std::io::stdout().flush().ok();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [_, q, k, metric] = parts[..] else {
            if parts.first() == Some(&"quit") {
                return;
            }
            eprintln!("error: expected 'run Q K METRIC', got '{line}'");
            std::process::exit(2);
        };
        let (q, k): (usize, usize) = (q.parse().expect("Q"), k.parse().expect("K"));
        let metric: Metric = metric.parse().expect("metric");
        let start = Instant::now();
        let mut search =
            VectorSearch::new(&device, metric, dim, &queries[..q * dim], k).expect("search");
        for (tile, tile_ids) in corpus.chunks(TILE_ROWS * dim).zip(ids.chunks(TILE_ROWS)) {
            search.push(tile, tile_ids).expect("push");
        }
        let hits = search.finish();
        let seconds = start.elapsed().as_secs_f64();
        let first: Vec<String> = hits[0].iter().map(|h| h.id.to_string()).collect();
        println!("{seconds:.6} {}", first.join(","));
        std::io::stdout().flush().ok();
    }
}
