//! Criterion micro-benchmarks of Kiln's kernel families on every device this
//! machine has (the CPU, and each wgpu adapter — lavapipe included, where it
//! measures a software rasterizer, not a GPU): the dense-layer GEMM, exact
//! top-k selection over a corpus tile, the generated fused relational kernel
//! (filter + projection, and filter + reduction), LayerNorm and attention.
//!
//! `cargo bench -p kiln-kernels --bench kernels` (`-- --quick` for a short
//! run); throughput is reported per element or byte so devices compare.
//! These are kernel timings for tuning; the side-by-side comparisons with
//! peers are the harnesses in benches/ at the repository root.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_kernels::backend::BackendDevice;
use kiln_kernels::codegen::{BinOp, ColumnData, Expr, Program, Reduce, ReduceOp, Ty, Value};
use kiln_kernels::ops::vector::Metric;
use kiln_kernels::vector_search::VectorSearch;
use kiln_kernels::{BackendKind, Device, discover};

/// The CPU and every wgpu adapter (CUDA joins when a GPU is present).
fn devices() -> Vec<Device> {
    let found = discover();
    found
        .devices
        .iter()
        .filter(|d| d.backend != BackendKind::Cuda || kiln_kernels::cuda_backend::driver_present())
        .filter_map(|d| Device::open_info(d).ok())
        .collect()
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn gemm(c: &mut Criterion) {
    // MiniLM's feed-forward layer over a batch of 128 tokens.
    let (m, k, n) = (128, 384, 1536);
    let (a, b, bias) = (values(m * k, 1), values(n * k, 2), values(n, 3));
    let mut group = c.benchmark_group("gemm");
    group.throughput(Throughput::Elements((2 * m * k * n) as u64));
    for device in devices() {
        let id = BenchmarkId::new(device.info().id(), format!("{m}x{k}x{n}"));
        match &device {
            Device::Cpu(_) => {
                group.bench_function(id, |bench| {
                    bench.iter(|| kiln_kernels::ops::linear::linear(&a, m, k, &b, n, Some(&bias)))
                });
            }
            Device::Wgpu(gpu) => {
                let (ga, gb, gbias) = (
                    gpu.upload(&a).unwrap(),
                    gpu.upload(&b).unwrap(),
                    gpu.upload(&bias).unwrap(),
                );
                group.bench_function(id, |bench| {
                    bench.iter(|| {
                        let out = gpu.matmul_nt(&ga, [m, k, n], &gb, Some(&gbias)).unwrap();
                        // Reading back waits for the device.
                        black_box(gpu.download(&out).unwrap())
                    })
                });
            }
            Device::Cuda(_) => {}
        }
    }
    group.finish();
}

/// The encoder's dense layers over a full token batch on the CPU: f32
/// against int8 (dynamic quantization; the kernel chosen for this CPU is in
/// the benchmark's name).
fn gemm_precision(c: &mut Criterion) {
    use kiln_kernels::ops::quant::{Int8Kernel, QuantizedLinear, int8_kernel};
    let mut group = c.benchmark_group("gemm_precision");
    for (m, k, n) in [(4096, 384, 1536), (4096, 1536, 384), (4096, 384, 384)] {
        let (a, b, bias) = (values(m * k, 1), values(n * k, 2), values(n, 3));
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let shape = format!("{m}x{k}x{n}");
        group.bench_function(BenchmarkId::new("f32", &shape), |bench| {
            bench.iter(|| kiln_kernels::ops::linear::linear(&a, m, k, &b, n, Some(&bias)))
        });
        let packed = kiln_kernels::ops::linear::PackedLinear::new(&b, n, k, Some(&bias));
        group.bench_function(BenchmarkId::new("f32-packed", &shape), |bench| {
            bench.iter(|| packed.forward(black_box(&a), m))
        });
        let q = QuantizedLinear::new(&b, n, k, Some(&bias));
        for kernel in [Int8Kernel::Avx2, Int8Kernel::Avx512Vnni, Int8Kernel::Amx] {
            if kernel > int8_kernel() {
                continue;
            }
            let name = format!("int8-{}", kernel.name());
            group.bench_function(BenchmarkId::new(name, &shape), |bench| {
                bench.iter(|| q.forward_with(black_box(&a), m, kernel))
            });
        }
    }
    group.finish();
}

fn topk(c: &mut Criterion) {
    let (rows, dim, q, k) = (100_000, 384, 16, 10);
    let corpus = values(rows * dim, 4);
    let queries = values(q * dim, 5);
    let ids: Vec<u64> = (0..rows as u64).collect();
    let mut group = c.benchmark_group("topk");
    group.throughput(Throughput::Bytes((rows * dim * 4) as u64));
    for device in devices() {
        group.bench_function(
            BenchmarkId::new(device.info().id(), format!("{rows}x{dim} q={q} k={k}")),
            |bench| {
                bench.iter(|| {
                    let mut search =
                        VectorSearch::new(&device, Metric::Dot, dim, &queries, k).unwrap();
                    for (tile, tile_ids) in corpus.chunks(16_384 * dim).zip(ids.chunks(16_384)) {
                        search.push(tile, tile_ids).unwrap();
                    }
                    black_box(search.finish())
                })
            },
        );
    }
    group.finish();
}

fn fused(c: &mut Criterion) {
    // TPC-H Q6's shape: four comparisons over three decimal columns and a
    // date, then the product of two of them, as rows or as a sum.
    let rows = 1 << 20;
    let d = Ty::Decimal {
        precision: 15,
        scale: 2,
    };
    let col = |i| Expr::column(i, [d, d, d, Ty::I32][i]);
    let lit = |v: i64, t| Expr::lit(Value::Int(v), t);
    let and = |a, b| Expr::binary(BinOp::And, a, b);
    let predicate = and(
        and(
            Expr::binary(BinOp::GtEq, col(3), lit(8766, Ty::I32)),
            Expr::binary(BinOp::Lt, col(3), lit(9131, Ty::I32)),
        ),
        and(
            Expr::binary(BinOp::GtEq, col(2), lit(5, d)),
            Expr::binary(BinOp::Lt, col(0), lit(2400, d)),
        ),
    );
    let product = Expr::binary(BinOp::Mul, col(1), col(2));
    let inputs = vec![d, d, d, Ty::I32];
    let rows_program = Program {
        inputs: inputs.clone(),
        predicate: Some(predicate.clone()),
        outputs: vec![product.clone()],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let sum_program = Program {
        inputs,
        predicate: Some(predicate),
        outputs: Vec::new(),
        reduce: vec![Reduce {
            op: ReduceOp::Sum,
            arg: product,
        }],
        group: None,
        topk: None,
    };
    let bytes = |f: &dyn Fn(usize) -> i64| -> Vec<u8> {
        (0..rows).flat_map(|i| f(i).to_le_bytes()).collect()
    };
    let quantity = bytes(&|i| (i as i64 * 37) % 5000);
    let price = bytes(&|i| 100_000 + (i as i64 * 7919) % 9_000_000);
    let discount = bytes(&|i| (i as i64 * 13) % 11);
    let date: Vec<u8> = (0..rows)
        .flat_map(|i| (8000 + (i as i32 * 31) % 2500).to_le_bytes())
        .collect();
    let data = [
        ColumnData {
            ty: d,
            values: &quantity,
            validity: None,
        },
        ColumnData {
            ty: d,
            values: &price,
            validity: None,
        },
        ColumnData {
            ty: d,
            values: &discount,
            validity: None,
        },
        ColumnData {
            ty: Ty::I32,
            values: &date,
            validity: None,
        },
    ];
    let inputs: Vec<Option<ColumnData<'_>>> = data.iter().copied().map(Some).collect();
    let mut group = c.benchmark_group("fused");
    group.throughput(Throughput::Bytes((rows * (3 * 8 + 4)) as u64));
    for device in devices() {
        if device.fused_support(&rows_program).is_err() {
            continue; // the CPU runs DataFusion's operators, not fused kernels
        }
        for (name, program) in [
            ("filter+project", &rows_program),
            ("filter+sum", &sum_program),
        ] {
            group.bench_function(BenchmarkId::new(device.info().id(), name), |bench| {
                bench.iter(|| black_box(device.run_fused(program, rows, &inputs).unwrap()))
            });
        }
    }
    group.finish();
}

fn encoder_layers(c: &mut Criterion) {
    // MiniLM's widths: hidden 384 in 12 heads of 32, sequences of 64 tokens.
    let (tokens, cols, heads, head_dim) = (64 * 8, 384, 12, 32);
    let x = values(tokens * cols, 6);
    let residual = values(tokens * cols, 7);
    let (gamma, beta) = (values(cols, 8), values(cols, 9));
    let offsets: Vec<usize> = (0..=8).map(|s| s * 64).collect();
    let mut group = c.benchmark_group("encoder");
    group.throughput(Throughput::Elements((tokens * cols) as u64));
    for device in devices() {
        let id = device.info().id();
        match &device {
            Device::Cpu(_) => {
                group.bench_function(BenchmarkId::new(&id, "layer_norm"), |bench| {
                    bench.iter(|| {
                        let mut y = x.clone();
                        kiln_kernels::ops::norm::add_layer_norm_inplace(
                            &mut y,
                            Some(&residual),
                            cols,
                            &gamma,
                            &beta,
                            1e-12,
                        );
                        black_box(y)
                    })
                });
                group.bench_function(BenchmarkId::new(&id, "attention"), |bench| {
                    bench.iter(|| {
                        black_box(kiln_kernels::ops::attention::attention_ragged(
                            &x, &residual, &x, &offsets, heads, head_dim,
                        ))
                    })
                });
            }
            Device::Wgpu(gpu) => {
                let (gx, gr) = (gpu.upload(&x).unwrap(), gpu.upload(&residual).unwrap());
                let (gg, gb) = (gpu.upload(&gamma).unwrap(), gpu.upload(&beta).unwrap());
                group.bench_function(BenchmarkId::new(&id, "layer_norm"), |bench| {
                    bench.iter(|| {
                        let y = gpu
                            .add_layer_norm(&gx, Some(&gr), cols, &gg, &gb, 1e-12)
                            .unwrap();
                        black_box(gpu.download(&y).unwrap())
                    })
                });
                group.bench_function(BenchmarkId::new(&id, "attention"), |bench| {
                    bench.iter(|| {
                        let y = gpu
                            .attention_ragged(&gx, &gr, &gx, &offsets, heads, head_dim)
                            .unwrap();
                        black_box(gpu.download(&y).unwrap())
                    })
                });
            }
            Device::Cuda(_) => {}
        }
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = kernels;
    config = config();
    targets = gemm, gemm_precision, topk, fused, encoder_layers
}
criterion_main!(kernels);
