//! Every CUDA source of Kiln compiles through NVRTC, even where no GPU can
//! run it. NVRTC comes from the PyPI package `nvidia-cuda-nvrtc`; CI puts it on
//! LD_LIBRARY_PATH and sets KILN_TEST_REQUIRE_NVRTC=1 so that its absence fails.

use kiln_kernels::KernelError;
use kiln_kernels::cuda_backend::{SOURCES, compile_ptx, nvrtc_present};

fn nvrtc_or_skip() -> bool {
    if nvrtc_present() {
        return true;
    }
    assert!(
        std::env::var("KILN_TEST_REQUIRE_NVRTC").is_err(),
        "KILN_TEST_REQUIRE_NVRTC is set but libnvrtc cannot be loaded"
    );
    eprintln!("skipping: libnvrtc not on the loader path");
    false
}

#[test]
fn every_cuda_source_compiles() {
    if !nvrtc_or_skip() {
        return;
    }
    assert!(!SOURCES.is_empty());
    for (name, source) in SOURCES {
        for arch in [None, Some((8, 0)), Some((9, 0))] {
            let ptx = compile_ptx(name, source, arch)
                .unwrap_or_else(|e| panic!("{name} for {arch:?}: {e}"));
            let text = ptx.to_src();
            assert!(text.contains(".entry"), "{name}: no kernel entry in PTX");
        }
    }
    let fma = compile_ptx("fma.cu", SOURCES[0].1, None).unwrap().to_src();
    assert!(fma.contains("fma_f32"), "fma_f32 missing from PTX");
}

#[test]
fn a_compile_error_carries_nvrtc_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let bad = "extern \"C\" __global__ void broken(float *x) { x[0] = undefined_name; }";
    match compile_ptx("broken.cu", bad, None) {
        Err(KernelError::CudaCompile { kernel, log }) => {
            assert_eq!(kernel, "broken.cu");
            assert!(
                log.contains("undefined_name"),
                "log lacks the culprit: {log}"
            );
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}
