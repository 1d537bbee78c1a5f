//! Exact top-k search on every device against a brute-force reference: random
//! and adversarial data (duplicates, exact ties, zero vectors, k beyond the
//! corpus, k = 0, an empty corpus, NaN), tiles pushed one by one.

use kiln_kernels::memory::Injection;
use kiln_kernels::ops::vector::{Metric, exact_score};
use kiln_kernels::testing::devices_under_test;
use kiln_kernels::vector_search::{Hit, VectorSearch};
use kiln_kernels::{Device, KernelError};

use crate::common::{quantized, values};

const METRICS: [Metric; 3] = [Metric::Cosine, Metric::Dot, Metric::L2];

/// Every row scored exactly, sorted closest first, ties by id.
fn brute_force(
    metric: Metric,
    dim: usize,
    queries: &[f32],
    corpus: &[f32],
    k: usize,
) -> Vec<Vec<Hit>> {
    queries
        .chunks_exact(dim)
        .map(|q| {
            let mut hits: Vec<Hit> = corpus
                .chunks_exact(dim)
                .enumerate()
                .filter_map(|(i, c)| {
                    exact_score(metric, q, c).map(|score| Hit {
                        id: i as u64,
                        score,
                    })
                })
                .collect();
            hits.sort_by(|a, b| {
                let s = if metric.higher_is_closer() {
                    b.score.total_cmp(&a.score)
                } else {
                    a.score.total_cmp(&b.score)
                };
                s.then(a.id.cmp(&b.id))
            });
            hits.truncate(k);
            hits
        })
        .collect()
}

/// Runs a search pushing the corpus in tiles of `tile_rows`.
fn search(
    device: &Device,
    metric: Metric,
    dim: usize,
    queries: &[f32],
    corpus: &[f32],
    k: usize,
    tile_rows: usize,
) -> Result<Vec<Vec<Hit>>, KernelError> {
    let mut s = VectorSearch::new(device, metric, dim, queries, k)?;
    let rows = corpus.len() / dim;
    let ids: Vec<u64> = (0..rows as u64).collect();
    for (tile, ids) in corpus.chunks(tile_rows * dim).zip(ids.chunks(tile_rows)) {
        s.push(tile, ids)?;
    }
    Ok(s.finish())
}

/// Same ids in the same order, scores within 1e-5, except that neighbours
/// whose exact scores are within 1e-5 of each other may swap (a near-tie
/// that f32 GEMM rounding may order either way).
fn assert_close(got: &[Vec<Hit>], want: &[Vec<Hit>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: query count");
    for (q, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: query {q} hit count");
        for (i, (gh, wh)) in g.iter().zip(w).enumerate() {
            assert!(
                (gh.score - wh.score).abs() <= 1e-5 * wh.score.abs().max(1.0),
                "{what}: query {q} hit {i}: score {} vs {}",
                gh.score,
                wh.score
            );
            if gh.id != wh.id {
                let tied = w
                    .iter()
                    .any(|o| o.id == gh.id && (o.score - wh.score).abs() <= 1e-5)
                    || (wh.score - gh.score).abs() <= 1e-5;
                assert!(tied, "{what}: query {q} hit {i}: id {} vs {}", gh.id, wh.id);
            }
        }
    }
}

#[test]
fn random_data_matches_brute_force_on_every_device() {
    for device in devices_under_test() {
        for (nq, dim, rows, k, tile) in [
            (1, 7, 1000, 5, 300),
            (3, 33, 2500, 10, 1000),
            (5, 64, 1200, 1, 1200),
            (16, 40, 1500, 5, 600),
            (70, 48, 3000, 16, 700),
            (130, 24, 17_000, 7, 40_000),
            (2, 384, 900, 200, 512),
        ] {
            let queries = values(nq * dim, 11 + dim as u64);
            let corpus = values(rows * dim, 17 + rows as u64);
            for metric in METRICS {
                let what = format!("{device:?} {metric} q={nq} d={dim} n={rows} k={k}");
                let got = search(&device, metric, dim, &queries, &corpus, k, tile).unwrap();
                assert_close(&got, &brute_force(metric, dim, &queries, &corpus, k), &what);
            }
        }
    }
}

/// Out of device memory, a search splits its tiles and retries them, then
/// scores what still does not fit on the CPU: the hits stay exact.
#[test]
fn memory_pressure_splits_tiles_and_keeps_hits_exact_on_every_device() {
    let (nq, dim, rows, k) = (3, 16, 5000, 7);
    let queries = values(nq * dim, 5);
    let corpus = values(rows * dim, 6);
    let ids: Vec<u64> = (0..rows as u64).collect();
    for device in devices_under_test() {
        let want = brute_force(Metric::Cosine, dim, &queries, &corpus, k);
        let run = |what: &str| {
            let mut s = VectorSearch::new(&device, Metric::Cosine, dim, &queries, k).unwrap();
            for (tile, ids) in corpus.chunks(2000 * dim).zip(ids.chunks(2000)) {
                s.push(tile, ids).unwrap();
            }
            let counts = s.oom_counts();
            assert_close(&s.finish(), &want, what);
            counts
        };
        // A limit that takes tiles of 500 rows, not 2000: split, retried,
        // all on the device (the CPU's score matrix fits it whole).
        device
            .memory()
            .set_limit(Some((nq * dim * 4 + 40_000) as u64));
        let counts = run(&format!("{device:?} limited"));
        if device.backend() != kiln_kernels::BackendKind::Cpu {
            assert!(
                counts.splits > 0 && counts.retries > 0,
                "{device:?}: {counts:?}"
            );
            assert_eq!(counts.cpu_fallbacks, 0, "{device:?}: {counts:?}");
        }
        // Most allocations failing, reproducibly: some pieces end on
        // the CPU, every hit is still exact.
        device.memory().set_limit(None);
        device
            .memory()
            .set_injection(Some(Injection::Probability { p: 0.8, seed: 9 }));
        let counts = run(&format!("{device:?} injected"));
        assert!(counts.cpu_fallbacks > 0, "{device:?}: {counts:?}");
        // Nothing fits: the queries stay on the host and every tile runs on
        // the CPU.
        device.memory().set_injection(Some(Injection::Every(1)));
        let counts = run(&format!("{device:?} nothing fits"));
        assert!(counts.cpu_fallbacks >= 3, "{device:?}: {counts:?}");
        device.memory().set_injection(None);
        assert_eq!(
            device.memory().used(),
            0,
            "{device:?}: every reservation given back"
        );
    }
}

#[test]
fn exact_ties_break_by_id_on_every_device() {
    // Twenty distinct vectors, each repeated 15 times, interleaved: every
    // score ties 15 ways, so only the id order decides.
    let dim = 16;
    let distinct = quantized(20 * dim, 5);
    let corpus: Vec<f32> = (0..300)
        .flat_map(|i| distinct[(i % 20) * dim..(i % 20 + 1) * dim].to_vec())
        .collect();
    let queries = quantized(4 * dim, 9);
    for device in devices_under_test() {
        for metric in METRICS {
            for k in [1, 7, 15, 40] {
                let got = search(&device, metric, dim, &queries, &corpus, k, 64).unwrap();
                let want = brute_force(metric, dim, &queries, &corpus, k);
                let ids = |h: &Vec<Vec<Hit>>| -> Vec<Vec<u64>> {
                    h.iter().map(|q| q.iter().map(|x| x.id).collect()).collect()
                };
                assert_eq!(ids(&got), ids(&want), "{device:?} {metric} k={k}");
                // Tiles arriving out of order (partitions) change nothing.
                let mut s = VectorSearch::new(&device, metric, dim, &queries, k).unwrap();
                let all: Vec<u64> = (0..300).collect();
                for (tile, ids) in corpus.chunks(64 * dim).zip(all.chunks(64)).rev() {
                    s.push(tile, ids).unwrap();
                }
                assert_eq!(
                    ids(&s.finish()),
                    ids(&want),
                    "{device:?} {metric} k={k} reversed"
                );
            }
        }
    }
}

#[test]
fn edge_cases_on_every_device() {
    let dim = 8;
    let queries = values(2 * dim, 3);
    let corpus = values(10 * dim, 4);
    for device in devices_under_test() {
        for metric in METRICS {
            // k larger than the corpus: everything, in order.
            let got = search(&device, metric, dim, &queries, &corpus, 50, 4).unwrap();
            assert!(got.iter().all(|h| h.len() == 10), "{device:?} {metric}");
            assert_close(
                &got,
                &brute_force(metric, dim, &queries, &corpus, 50),
                "k > n",
            );
            // k = 0 and an empty corpus: nothing.
            let got = search(&device, metric, dim, &queries, &corpus, 0, 4).unwrap();
            assert!(got.iter().all(Vec::is_empty));
            let got = search(&device, metric, dim, &queries, &[], 3, 4).unwrap();
            assert_eq!(got.len(), 2);
            assert!(got.iter().all(Vec::is_empty));
            // No queries.
            assert!(
                search(&device, metric, dim, &[], &corpus, 3, 4)
                    .unwrap()
                    .is_empty()
            );
        }
        // Zero vectors have no cosine: a zero corpus row is never a hit, a
        // zero query finds nothing; under dot and L2 they score normally.
        let mut corpus0 = corpus.clone();
        corpus0[..dim].fill(0.0);
        let mut queries0 = queries.clone();
        queries0[dim..].fill(0.0);
        let got = search(&device, Metric::Cosine, dim, &queries0, &corpus0, 20, 3).unwrap();
        assert_eq!(got[0].len(), 9);
        assert!(got[0].iter().all(|h| h.id != 0));
        assert!(got[1].is_empty());
        let got = search(&device, Metric::L2, dim, &queries0, &corpus0, 20, 3).unwrap();
        assert_eq!(got[1][0].id, 0, "the zero row is the zero query's nearest");
        assert_eq!(got[1][0].score, 0.0);
    }
}

#[test]
fn nan_and_infinite_components_are_errors() {
    let dim = 4;
    let queries = values(dim, 1);
    let mut corpus = values(6 * dim, 2);
    corpus[3 * dim + 1] = f32::NAN;
    for device in devices_under_test() {
        for metric in METRICS {
            let err = search(&device, metric, dim, &queries, &corpus, 2, 2).unwrap_err();
            assert_eq!(
                err.to_string(),
                "corpus row 3 has a NaN or infinite component"
            );
            let mut bad = queries.clone();
            bad[0] = f32::INFINITY;
            let err = VectorSearch::new(&device, metric, dim, &bad, 2).unwrap_err();
            assert_eq!(err.to_string(), "query 0 has a NaN or infinite component");
        }
    }
}

#[test]
fn mismatched_tile_is_an_error() {
    let device = Device::cpu().unwrap();
    let mut s = VectorSearch::new(&device, Metric::Dot, 4, &[1.0; 4], 1).unwrap();
    assert!(matches!(
        s.push(&[1.0; 7], &[0, 1]),
        Err(KernelError::LengthMismatch { .. })
    ));
    assert!(VectorSearch::new(&device, Metric::Dot, 0, &[], 1).is_err());
}
