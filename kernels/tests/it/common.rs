//! Helpers shared by the kernel tests.

/// Deterministic pseudo-random f32s in [-8, 8): a splitmix64 stream.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 16.0 - 8.0
        })
        .collect()
}

/// Like [`values`], rounded to multiples of 1/4 in [-8, 8]: sums of products
/// of these are exact in f32, so scores tie exactly where they should.
pub fn quantized(n: usize, seed: u64) -> Vec<f32> {
    values(n, seed)
        .into_iter()
        .map(|v| (v * 4.0).round() / 4.0)
        .collect()
}

/// The codegen fuzz target's committed inputs (`kernels/fuzz/corpus/codegen`
/// and the minimized crashers in `kernels/fuzz/regressions/codegen`, at
/// least one of each), then `extra` pseudo-random inputs of 64 bytes.
pub fn codegen_fuzz_inputs(extra: usize) -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus/codegen", "regressions/codegen"] {
        let mut paths: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no inputs in kernels/fuzz/{dir}");
        inputs.extend(paths.iter().map(|p| std::fs::read(p).unwrap()));
    }
    inputs.extend(kiln_kernels::codegen::fuzz::pseudo_random_inputs(
        extra,
        0x2545_f491_4f6c_dd1d,
    ));
    inputs
}
