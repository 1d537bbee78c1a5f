//! The fuzz targets' corpora and minimized crashers (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) replayed through the same entry points
//! `cargo fuzz` runs (`kiln::fuzzing`): every input must return, without a
//! panic other than the known, reported ones (`kiln::fuzzing::KNOWN_PANICS`).
//! Then a short smoke of each target in every CI run: mutations of the
//! corpus (bit flips, byte changes, cuts, splices) from a fixed seed:
//! `KILN_FUZZ_SMOKE_RUNS` mutations a target (default 3,000; the same ones
//! on every machine), cut short after `KILN_FUZZ_SMOKE_SECS` seconds
//! (default 15). The input being run is kept at
//! `<target dir>/tmp/fuzz-smoke-<target>`, so a crash leaves what caused it.
//! (The codegen target's smoke is kiln-kernels' test.)

use std::path::Path;
use std::time::{Duration, Instant};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        inputs.extend(paths.iter().map(|p| std::fs::read(p).unwrap()));
    }
    assert!(!inputs.is_empty(), "no corpus for {target}");
    inputs
}

/// xorshift64: a fixed stream, so a smoke run can be repeated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// One mutation of `input`, splicing from `other` sometimes.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if at < out.len() => out[at] ^= 1 << rng.below(8),
            1 if at < out.len() => {
                out[at] = [0, 0xff, 0x7f, 0x80, b'\'', b'(', b'0'][rng.below(7)];
            }
            2 => out.insert(at, rng.below(256) as u8),
            3 if at < out.len() => {
                out.remove(at);
            }
            4 => out.truncate(at),
            _ if !other.is_empty() => {
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from + 1);
                out.splice(at..at, other[from..from + len].iter().copied());
            }
            _ => {}
        }
    }
    out
}

fn replay_and_smoke(target: &str, run: fn(&[u8])) {
    let inputs = corpus(target);
    for data in &inputs {
        run(data);
    }
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let secs = setting("KILN_FUZZ_SMOKE_SECS", 15);
    let max_runs = setting("KILN_FUZZ_SMOKE_RUNS", 3000);
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-smoke-{target}"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng = Rng(0x5eed ^ target.len() as u64);
    let mut runs = 0;
    while runs < max_runs && Instant::now() < deadline {
        let input = &inputs[rng.below(inputs.len())];
        let other = &inputs[rng.below(inputs.len())];
        let data = mutate(&mut rng, input, other);
        std::fs::write(&kept, &data).unwrap();
        run(&data);
        runs += 1;
    }
    eprintln!(
        "{target}: {} inputs replayed, {runs} mutations run",
        inputs.len()
    );
}

#[test]
fn sql_corpus() {
    replay_and_smoke("sql", kiln::fuzzing::sql);
}

#[test]
fn parquet_corpus() {
    replay_and_smoke("parquet", kiln::fuzzing::parquet);
}

#[test]
fn model_dir_corpus() {
    replay_and_smoke("model_dir", kiln::fuzzing::model_dir);
}
