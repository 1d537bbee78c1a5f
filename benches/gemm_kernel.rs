//! Kiln's dense-layer GEMMs (f32 and int8) as a long-lived process, for the
//! side-by-side harness `benches/embed.py`, which times torch's on the same
//! shapes in the same invocation, interleaved. One command per stdin line:
//!
//! ```text
//! run <f32|int8|bf16> <m> <k> <n> <reps>   →   <median seconds> <kernel>
//! ```
//!
//! Timed: the encoder's dense layer in each precision, `PackedLinear`
//! (f32), `QuantizedLinear` (int8: the activations' quantization included)
//! or `Bf16Linear` (bf16: the activations' rounding included); the weights
//! packed, quantized or rounded once before.
//! Inputs are seeded uniform values in [-1, 1).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Instant;

use kiln_kernels::ops::bf16::Bf16Linear;
use kiln_kernels::ops::linear::PackedLinear;
use kiln_kernels::ops::quant::{QuantizedLinear, int8_kernel};

/// Prints one `error:` line and exits: bad input is never a panic.
fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
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

struct Shape {
    x: Vec<f32>,
    packed: PackedLinear,
    quantized: QuantizedLinear,
    bf16: Bf16Linear,
}

fn main() {
    let mut shapes: HashMap<(usize, usize, usize), Shape> = HashMap::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.unwrap_or_else(|e| fail(format!("reading stdin: {e}")));
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["run", kind, m, k, n, reps] = words[..] else {
            fail(format!(
                "expected `run <f32|int8|bf16> <m> <k> <n> <reps>`, got {line:?}"
            ));
        };
        let num = |s: &str| {
            s.parse::<usize>()
                .ok()
                .filter(|&v| v > 0)
                .unwrap_or_else(|| fail(format!("'{s}' is not a positive integer")))
        };
        let (m, k, n, reps) = (num(m), num(k), num(n), num(reps));
        let shape = shapes.entry((m, k, n)).or_insert_with(|| {
            let w = values(n * k, 2);
            let bias = values(n, 3);
            Shape {
                x: values(m * k, 1),
                packed: PackedLinear::new(&w, n, k, Some(&bias)),
                quantized: QuantizedLinear::new(&w, n, k, Some(&bias)),
                bf16: Bf16Linear::new(&w, n, k, Some(&bias)),
            }
        });
        let (run, name): (Box<dyn Fn() -> Vec<f32>>, String) = match kind {
            "f32" => (
                Box::new(|| shape.packed.forward(&shape.x, m)),
                "f32".to_string(),
            ),
            "bf16" if kiln_kernels::ops::bf16::available() => (
                Box::new(|| shape.bf16.forward(&shape.x, m).unwrap_or_default()),
                "bf16".to_string(),
            ),
            "bf16" => fail("this CPU has no AVX512_BF16"),
            "int8" => (
                Box::new(|| shape.quantized.forward(&shape.x, m)),
                format!("int8-{}", int8_kernel().name()),
            ),
            other => fail(format!("unknown kind '{other}' (f32, int8 or bf16)")),
        };
        std::hint::black_box(run());
        let mut times: Vec<f64> = (0..reps)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(run());
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let _ = writeln!(out, "{} {name}", times[times.len() / 2]);
        let _ = out.flush();
    }
}
