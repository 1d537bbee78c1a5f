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
    // The vector-search selection kernel, for every K the search compiles.
    let (_, topk) = SOURCES.iter().find(|(n, _)| *n == "topk.cu").unwrap();
    let mut k = 8;
    while k <= kiln_kernels::vector_search::DEVICE_TOPK_MAX_K {
        let source = format!("#define KILN_K {k}\n{topk}");
        let ptx = compile_ptx("topk.cu", &source, Some((9, 0)))
            .unwrap_or_else(|e| panic!("topk.cu with K = {k}: {e}"))
            .to_src();
        assert!(ptx.contains("kiln_topk_select"), "K = {k}");
        k *= 2;
    }
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

/// Programs that together use every IR node on every device type.
fn kitchen_sink() -> Vec<kiln_kernels::codegen::Program> {
    use kiln_kernels::codegen::{BinOp, Expr, Program, Ty, UnOp, Value};
    let dec = Ty::Decimal {
        precision: 15,
        scale: 2,
    };
    let inputs = vec![
        Ty::I32,
        Ty::I64,
        Ty::F32,
        Ty::F64,
        Ty::Bool,
        dec,
        Ty::U32,
        Ty::U64,
    ];
    let col = |i: usize| Expr::column(i, inputs[i]);
    let int = |v: i64, t: Ty| Expr::lit(Value::Int(v), t);
    let mut outputs = Vec::new();
    for (i, t) in inputs.iter().enumerate() {
        if *t == Ty::Bool {
            continue;
        }
        for op in [BinOp::Add, BinOp::Sub, BinOp::Mul] {
            outputs.push(Expr::binary(op, col(i), col(i)));
        }
        if !matches!(t, Ty::Decimal { .. }) {
            outputs.push(Expr::binary(BinOp::Div, col(i), col(i)));
        }
        if t.is_integer() {
            outputs.push(Expr::binary(BinOp::Mod, col(i), col(i)));
        }
        for op in [BinOp::Eq, BinOp::Lt, BinOp::GtEq] {
            outputs.push(Expr::binary(op, col(i), col(i)));
        }
        if t.is_signed() {
            outputs.push(Expr::unary(UnOp::Neg, col(i)));
            outputs.push(Expr::unary(UnOp::Abs, col(i)));
        }
    }
    for f in [2, 3] {
        for op in UnOp::FLOAT_MATH {
            outputs.push(Expr::unary(op, col(f)));
        }
        outputs.push(Expr::binary(BinOp::Pow, col(f), col(f)));
        outputs.push(Expr::binary(BinOp::Mod, col(f), col(f)));
    }
    outputs.extend([
        Expr::unary(UnOp::Year, col(0)),
        Expr::unary(UnOp::Month, col(0)),
        Expr::unary(UnOp::Day, col(0)),
        Expr::cast(col(0), Ty::I64),
        Expr::cast(col(0), Ty::F64),
        Expr::cast(col(1), Ty::F32),
        Expr::cast(col(2), Ty::F64),
        Expr::cast(col(6), Ty::U64),
        Expr::cast(col(5), Ty::F64),
        Expr::cast(
            col(1),
            Ty::Decimal {
                precision: 18,
                scale: 2,
            },
        ),
        Expr::cast(
            col(5),
            Ty::Decimal {
                precision: 20,
                scale: 4,
            },
        ),
        Expr::binary(BinOp::And, col(4), Expr::unary(UnOp::Not, col(4))),
        Expr::binary(BinOp::Or, col(4), Expr::unary(UnOp::IsNull, col(1))),
        Expr::Case {
            branches: vec![
                (col(4), col(1)),
                (Expr::unary(UnOp::IsNotNull, col(0)), int(-1, Ty::I64)),
            ],
            otherwise: None,
            ty: Ty::I64,
        },
        Expr::Coalesce {
            args: vec![col(3), Expr::lit(Value::Float(f64::NAN), Ty::F64)],
        },
        Expr::InList {
            arg: Box::new(col(0)),
            list: vec![int(1, Ty::I32), Expr::lit(Value::Null, Ty::I32)],
            negated: true,
        },
    ]);
    let predicate = Expr::binary(BinOp::Gt, col(1), int(i64::MIN, Ty::I64));
    use kiln_kernels::codegen::{Reduce, ReduceOp};
    let reductions = vec![
        Reduce {
            op: ReduceOp::Sum,
            arg: col(0),
        },
        Reduce {
            op: ReduceOp::Sum,
            arg: col(3),
        },
        Reduce {
            op: ReduceOp::Sum,
            arg: col(5),
        },
        Reduce {
            op: ReduceOp::Min,
            arg: col(1),
        },
        Reduce {
            op: ReduceOp::Max,
            arg: col(5),
        },
        Reduce {
            op: ReduceOp::Count,
            arg: col(4),
        },
    ];
    // The same reductions per group, the group index computed from a column.
    let group = Expr::binary(BinOp::Add, col(6), int(1, Ty::U32));
    let mut programs = vec![
        Program {
            inputs: inputs.clone(),
            predicate: Some(predicate.clone()),
            outputs: Vec::new(),
            reduce: reductions.clone(),
            group: None,
            topk: None,
        },
        Program {
            inputs: inputs.clone(),
            predicate: Some(predicate.clone()),
            outputs: Vec::new(),
            reduce: reductions,
            group: Some(group),
            topk: None,
        },
        Program {
            inputs: inputs.clone(),
            predicate: Some(predicate.clone()),
            outputs: outputs.clone(),
            reduce: Vec::new(),
            group: None,
            topk: None,
        },
        Program {
            inputs: inputs.clone(),
            predicate: None,
            outputs: outputs.clone(),
            reduce: Vec::new(),
            group: None,
            topk: None,
        },
    ];
    // A per-block top-k on every key type, each direction and NULL place.
    for (i, t) in inputs.iter().enumerate() {
        programs.push(Program {
            inputs: inputs.clone(),
            predicate: (i % 2 == 0).then(|| predicate.clone()),
            outputs: vec![col(i)],
            reduce: Vec::new(),
            group: None,
            topk: Some(kiln_kernels::codegen::BlockTopK {
                key: Expr::column(i, *t),
                descending: i % 2 == 1,
                nulls_first: i % 3 == 0,
                k: 10,
            }),
        });
    }
    programs
}

#[test]
fn generated_fused_kernels_compile_for_cuda() {
    if !nvrtc_or_skip() {
        return;
    }
    for program in kitchen_sink() {
        let source = kiln_kernels::codegen::cuda::generate(&program).unwrap();
        for arch in [Some((8, 0)), Some((9, 0))] {
            let ptx = compile_ptx("fused.cu", &source, arch)
                .unwrap_or_else(|e| panic!("{arch:?}: {e}\n{source}"));
            let text = ptx.to_src();
            let entries: &[&str] = if program.reduce.is_empty() {
                &["kiln_count", "kiln_scan", "kiln_emit"]
            } else {
                &["kiln_reduce"]
            };
            for entry in entries {
                assert!(text.contains(entry), "{entry} missing from PTX");
            }
        }
        // A grouped program's atomic fold (float sums included: CUDA has
        // f64 atomics).
        if program.group.is_some() {
            let source = kiln_kernels::codegen::cuda::generate_atomic(&program).unwrap();
            for arch in [Some((8, 0)), Some((9, 0))] {
                let ptx = compile_ptx("fused_atomic.cu", &source, arch)
                    .unwrap_or_else(|e| panic!("{arch:?}: {e}\n{source}"));
                let text = ptx.to_src();
                for entry in ["kiln_scatter", "kiln_scatter_lo"] {
                    assert!(text.contains(entry), "{entry} missing from PTX");
                }
                assert!(text.contains("atom.global.add.f64"), "no f64 atomic add");
            }
        }
    }
}

#[test]
fn numbering_modules_compile_for_cuda() {
    use kiln_kernels::codegen::numbering::{ENTRIES, KeyProgram, cuda};
    use kiln_kernels::codegen::{BinOp, Expr, Ty, Value};
    if !nvrtc_or_skip() {
        return;
    }
    let decimal = Ty::Decimal {
        precision: 12,
        scale: 2,
    };
    let inputs = vec![Ty::I64, Ty::I32, Ty::Bool, decimal];
    let programs = [
        KeyProgram {
            inputs: inputs.clone(),
            keys: vec![Expr::column(0, Ty::I64)],
        },
        KeyProgram {
            inputs: inputs.clone(),
            keys: vec![
                Expr::column(1, Ty::I32),
                Expr::column(2, Ty::Bool),
                Expr::column(3, decimal),
                Expr::binary(
                    BinOp::Mod,
                    Expr::column(1, Ty::I32),
                    Expr::lit(Value::Int(7), Ty::I32),
                ),
            ],
        },
    ];
    for program in &programs {
        let source = cuda(program).unwrap();
        for arch in [Some((8, 0)), Some((9, 0))] {
            let ptx = compile_ptx("numbering.cu", &source, arch)
                .unwrap_or_else(|e| panic!("{arch:?}: {e}\n{source}"));
            let text = ptx.to_src();
            for entry in ENTRIES {
                assert!(
                    text.contains(&format!("kiln_{entry}")),
                    "{entry} missing from PTX"
                );
            }
        }
    }
}

#[test]
fn wgsl_refuses_what_vulkan_cannot_compute_exactly() {
    use kiln_kernels::codegen::{BinOp, Expr, Program, Ty, UnOp};
    let f64_exp = Program {
        inputs: vec![Ty::F64],
        predicate: None,
        outputs: vec![Expr::unary(UnOp::Exp, Expr::column(0, Ty::F64))],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let fmod = Program {
        inputs: vec![Ty::F32],
        predicate: None,
        outputs: vec![Expr::binary(
            BinOp::Mod,
            Expr::column(0, Ty::F32),
            Expr::column(0, Ty::F32),
        )],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    for p in [&f64_exp, &fmod] {
        assert!(kiln_kernels::codegen::wgsl::generate(p).is_err());
        assert!(kiln_kernels::codegen::cuda::generate(p).is_ok());
    }
}

/// The codegen fuzz target's inputs and a fixed stream of pseudo-random
/// ones: every CUDA module generated for them compiles (the fuzz target
/// validates the WGSL modules with naga but does not run NVRTC, too slow for
/// a fuzzer).
#[test]
fn generated_cuda_modules_of_fuzz_programs_compile() {
    use kiln_kernels::codegen::fuzz::{decode, modules};
    if !nvrtc_or_skip() {
        return;
    }
    // NVRTC takes about 0.1 s a module: a spread of ~100 of the committed
    // inputs, then the crashers and the generated ones (the last 25).
    let inputs = crate::common::codegen_fuzz_inputs(24);
    let step = (inputs.len() / 100).max(1);
    let mut compiled = 0;
    for (i, data) in inputs.iter().enumerate() {
        if i % step != 0 && i + 25 < inputs.len() {
            continue;
        }
        let case = decode(data);
        for (name, wgsl, source) in modules(&case) {
            if wgsl {
                continue;
            }
            compile_ptx(name, &source, Some((9, 0)))
                .unwrap_or_else(|e| panic!("the {name} module of {case:?}: {e}\n{source}"));
            compiled += 1;
        }
    }
    assert!(compiled >= 20, "only {compiled} modules compiled");
}
