//! Generated fused kernels (filter + projection) on wgpu against values the
//! test computes with Rust's own arithmetic, SQL's NULL rules and Arrow's
//! float ordering.

use kiln_kernels::codegen::{
    BinOp, ColumnData, Expr, FusedOutput, GroupFold, Program, Ty, UnOp, Value,
};
use kiln_kernels::testing::devices_under_test;
use kiln_kernels::{BackendKind, Device};

fn gpu() -> Option<Device> {
    devices_under_test()
        .into_iter()
        .find(|d| d.backend() == BackendKind::Wgpu)
}

/// A host column in the device layout.
struct Col {
    ty: Ty,
    bytes: Vec<u8>,
    bits: Option<Vec<u32>>,
}

impl Col {
    fn new(ty: Ty, bytes: Vec<u8>, valid: Option<&[bool]>) -> Col {
        let bits = valid.map(|v| {
            let mut w = vec![0u32; v.len().div_ceil(32)];
            for (i, ok) in v.iter().enumerate() {
                if *ok {
                    w[i / 32] |= 1 << (i % 32);
                }
            }
            w
        });
        Col { ty, bytes, bits }
    }

    fn i64s(v: &[i64], valid: Option<&[bool]>) -> Col {
        Col::new(
            Ty::I64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            valid,
        )
    }

    fn i32s(v: &[i32], valid: Option<&[bool]>) -> Col {
        Col::new(
            Ty::I32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            valid,
        )
    }

    fn f64s(v: &[f64], valid: Option<&[bool]>) -> Col {
        Col::new(
            Ty::F64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            valid,
        )
    }

    fn bools(v: &[bool], valid: Option<&[bool]>) -> Col {
        Col::new(
            Ty::Bool,
            v.iter().flat_map(|x| u32::from(*x).to_le_bytes()).collect(),
            valid,
        )
    }

    fn decimals(v: &[i64], precision: u8, scale: i8) -> Col {
        let mut c = Col::i64s(v, None);
        c.ty = Ty::Decimal { precision, scale };
        c
    }

    fn data(&self) -> ColumnData<'_> {
        ColumnData {
            ty: self.ty,
            values: &self.bytes,
            validity: self.bits.as_deref(),
        }
    }
}

fn run(device: &Device, program: &Program, rows: usize, cols: &[Col]) -> FusedOutput {
    device.fused_support(program).unwrap();
    let inputs: Vec<_> = cols.iter().map(|c| Some(c.data())).collect();
    device.run_fused(program, rows, &inputs).unwrap()
}

fn col(i: usize, ty: Ty) -> Expr {
    Expr::column(i, ty)
}

fn int(v: i64, ty: Ty) -> Expr {
    Expr::lit(Value::Int(v), ty)
}

fn float(v: f64) -> Expr {
    Expr::lit(Value::Float(v), Ty::F64)
}

/// Output `o` as (valid, i64 bits) per row.
fn out64(out: &FusedOutput, o: usize) -> Vec<Option<i64>> {
    let c = &out.columns[o];
    (0..out.rows())
        .map(|r| {
            (c.valid[r] == 1)
                .then(|| i64::from(c.values[2 * r]) | (i64::from(c.values[2 * r + 1]) << 32))
        })
        .collect()
}

fn out32(out: &FusedOutput, o: usize) -> Vec<Option<u32>> {
    let c = &out.columns[o];
    (0..out.rows())
        .map(|r| (c.valid[r] == 1).then_some(c.values[r]))
        .collect()
}

#[test]
fn filter_and_projection_over_many_blocks() {
    let Some(gpu) = gpu() else { return };
    for rows in [0usize, 1, 255, 256, 257, 70_001] {
        let a: Vec<i32> = (0..rows as i32).map(|i| (i * 7919) % 1000 - 300).collect();
        let b: Vec<i64> = (0..rows as i64).map(|i| i * 1_000_003 - 5).collect();
        let b_valid: Vec<bool> = (0..rows).map(|i| i % 7 != 3).collect();
        let c: Vec<f64> = (0..rows).map(|i| i as f64 * 0.25 - 17.0).collect();
        let program = Program {
            inputs: vec![Ty::I32, Ty::I64, Ty::F64],
            // a > 10 AND b IS NOT NULL
            predicate: Some(Expr::binary(
                BinOp::And,
                Expr::binary(BinOp::Gt, col(0, Ty::I32), int(10, Ty::I32)),
                Expr::unary(UnOp::IsNotNull, col(1, Ty::I64)),
            )),
            outputs: vec![
                // CAST(a AS BIGINT) * 2 + b
                Expr::binary(
                    BinOp::Add,
                    Expr::binary(
                        BinOp::Mul,
                        Expr::cast(col(0, Ty::I32), Ty::I64),
                        int(2, Ty::I64),
                    ),
                    col(1, Ty::I64),
                ),
                Expr::binary(BinOp::Mul, col(2, Ty::F64), float(1.5)),
                col(0, Ty::I32),
            ],
            reduce: Vec::new(),
            group: None,
            topk: None,
        };
        let cols = [
            Col::i32s(&a, None),
            Col::i64s(&b, Some(&b_valid)),
            Col::f64s(&c, None),
        ];
        let out = run(&gpu, &program, rows, &cols);
        assert!(!out.needs_cpu);
        let want: Vec<usize> = (0..rows).filter(|&i| a[i] > 10 && b_valid[i]).collect();
        assert_eq!(
            out.indices,
            want.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            "rows={rows}"
        );
        let sums = out64(&out, 0);
        let prods = out64(&out, 1);
        let passthrough = out32(&out, 2);
        for (k, &i) in want.iter().enumerate() {
            assert_eq!(sums[k], Some(i64::from(a[i]) * 2 + b[i]));
            assert_eq!(prods[k].map(|x| f64::from_bits(x as u64)), Some(c[i] * 1.5));
            assert_eq!(passthrough[k], Some(a[i] as u32));
        }
    }
}

#[test]
fn three_valued_logic_and_null_tests() {
    let Some(gpu) = gpu() else { return };
    // Every (x, y) among TRUE, FALSE, NULL.
    let states = [Some(true), Some(false), None];
    let pairs: Vec<(Option<bool>, Option<bool>)> = states
        .iter()
        .flat_map(|x| states.iter().map(move |y| (*x, *y)))
        .collect();
    let x: Vec<bool> = pairs.iter().map(|p| p.0.unwrap_or(true)).collect();
    let xv: Vec<bool> = pairs.iter().map(|p| p.0.is_some()).collect();
    let y: Vec<bool> = pairs.iter().map(|p| p.1.unwrap_or(true)).collect();
    let yv: Vec<bool> = pairs.iter().map(|p| p.1.is_some()).collect();
    let (bx, by) = (col(0, Ty::Bool), col(1, Ty::Bool));
    let program = Program {
        inputs: vec![Ty::Bool, Ty::Bool],
        predicate: None,
        outputs: vec![
            Expr::binary(BinOp::And, bx.clone(), by.clone()),
            Expr::binary(BinOp::Or, bx.clone(), by.clone()),
            Expr::unary(UnOp::Not, bx.clone()),
            Expr::unary(UnOp::IsNull, bx.clone()),
            Expr::binary(BinOp::Eq, bx.clone(), by.clone()),
            Expr::binary(BinOp::Lt, bx, by),
        ],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let cols = [Col::bools(&x, Some(&xv)), Col::bools(&y, Some(&yv))];
    let out = run(&gpu, &program, pairs.len(), &cols);
    let b = |v: Option<u32>| v.map(|w| w == 1);
    for (r, (px, py)) in pairs.iter().enumerate() {
        let and = match (px, py) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        };
        let or = match (px, py) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        };
        let both = px.zip(*py);
        assert_eq!(b(out32(&out, 0)[r]), and, "{px:?} AND {py:?}");
        assert_eq!(b(out32(&out, 1)[r]), or, "{px:?} OR {py:?}");
        assert_eq!(b(out32(&out, 2)[r]), px.map(|v| !v), "NOT {px:?}");
        assert_eq!(b(out32(&out, 3)[r]), Some(px.is_none()), "{px:?} IS NULL");
        assert_eq!(b(out32(&out, 4)[r]), both.map(|(a, c)| a == c));
        assert_eq!(b(out32(&out, 5)[r]), both.map(|(a, c)| !a & c));
    }
}

#[test]
fn floats_compare_in_total_order_and_round_half_away_from_zero() {
    let Some(gpu) = gpu() else { return };
    let xs = [
        0.5,
        -0.5,
        2.5,
        -1.5,
        0.49999999999999994,
        -0.0,
        0.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
        -7.25,
    ];
    let n = xs.len();
    // Compare every x with every y.
    let lhs: Vec<f64> = (0..n * n).map(|i| xs[i / n]).collect();
    let rhs: Vec<f64> = (0..n * n).map(|i| xs[i % n]).collect();
    let (l, r) = (col(0, Ty::F64), col(1, Ty::F64));
    let program = Program {
        inputs: vec![Ty::F64, Ty::F64],
        predicate: None,
        outputs: vec![
            Expr::binary(BinOp::Lt, l.clone(), r.clone()),
            Expr::binary(BinOp::Eq, l.clone(), r),
            Expr::unary(UnOp::Round, l.clone()),
            Expr::unary(UnOp::Floor, l.clone()),
            Expr::unary(UnOp::Ceil, l.clone()),
            Expr::unary(UnOp::Abs, l.clone()),
            Expr::unary(UnOp::Neg, l),
        ],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let out = run(
        &gpu,
        &program,
        n * n,
        &[Col::f64s(&lhs, None), Col::f64s(&rhs, None)],
    );
    assert!(!out.needs_cpu);
    let f = |o: usize| -> Vec<f64> {
        out64(&out, o)
            .into_iter()
            .map(|v| f64::from_bits(v.unwrap() as u64))
            .collect()
    };
    let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    for i in 0..n * n {
        let (a, b) = (lhs[i], rhs[i]);
        assert_eq!(
            out32(&out, 0)[i],
            Some(u32::from(a.total_cmp(&b).is_lt())),
            "{a} < {b}"
        );
        assert_eq!(
            out32(&out, 1)[i],
            Some(u32::from(a.total_cmp(&b).is_eq())),
            "{a} = {b}"
        );
        assert!(same(f(2)[i], a.round()), "round({a}) = {}", f(2)[i]);
        assert!(same(f(3)[i], a.floor()), "floor({a})");
        assert!(same(f(4)[i], a.ceil()), "ceil({a})");
        assert!(same(f(5)[i], a.abs()), "abs({a})");
        assert!(same(f(6)[i], -a), "-({a})");
    }
}

#[test]
fn case_coalesce_and_in_list_follow_sql() {
    let Some(gpu) = gpu() else { return };
    let a: Vec<i64> = vec![1, 2, 3, 4, 5, 0];
    let av = [true, true, true, false, true, true];
    let b: Vec<i64> = vec![10, 0, 30, 40, 0, 60];
    let bv = [true, false, true, true, false, true];
    let (ca, cb) = (col(0, Ty::I64), col(1, Ty::I64));
    let null = Expr::lit(Value::Null, Ty::I64);
    let program = Program {
        inputs: vec![Ty::I64, Ty::I64],
        predicate: None,
        outputs: vec![
            // CASE WHEN a < 3 THEN b WHEN a = 3 THEN -1 END
            Expr::Case {
                branches: vec![
                    (
                        Expr::binary(BinOp::Lt, ca.clone(), int(3, Ty::I64)),
                        cb.clone(),
                    ),
                    (
                        Expr::binary(BinOp::Eq, ca.clone(), int(3, Ty::I64)),
                        int(-1, Ty::I64),
                    ),
                ],
                otherwise: None,
                ty: Ty::I64,
            },
            Expr::Coalesce {
                args: vec![cb.clone(), ca.clone(), int(99, Ty::I64)],
            },
            // a IN (1, 5), a NOT IN (1, NULL)
            Expr::InList {
                arg: Box::new(ca.clone()),
                list: vec![int(1, Ty::I64), int(5, Ty::I64)],
                negated: false,
            },
            Expr::InList {
                arg: Box::new(ca.clone()),
                list: vec![int(1, Ty::I64), null],
                negated: true,
            },
        ],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let out = run(
        &gpu,
        &program,
        a.len(),
        &[Col::i64s(&a, Some(&av)), Col::i64s(&b, Some(&bv))],
    );
    let val = |v: &[i64], ok: &[bool], i: usize| ok[i].then_some(v[i]);
    for i in 0..a.len() {
        let (x, y) = (val(&a, &av, i), val(&b, &bv, i));
        let case = match x {
            Some(x) if x < 3 => y,
            Some(3) => Some(-1),
            _ => None,
        };
        assert_eq!(out64(&out, 0)[i], case, "CASE row {i}");
        assert_eq!(
            out64(&out, 1)[i],
            Some(y.or(x).unwrap_or(99)),
            "COALESCE row {i}"
        );
        let in_list = x.map(|x| u32::from(x == 1 || x == 5));
        assert_eq!(out32(&out, 2)[i], in_list, "IN row {i}");
        // x NOT IN (1, NULL): FALSE when x = 1, otherwise NULL.
        let not_in = match x {
            Some(1) => Some(0),
            _ => None,
        };
        assert_eq!(out32(&out, 3)[i], not_in, "NOT IN row {i}");
    }
}

#[test]
fn decimals_scale_and_flag_what_the_device_cannot_compute() {
    let Some(gpu) = gpu() else { return };
    let d15_2 = Ty::Decimal {
        precision: 15,
        scale: 2,
    };
    let d4_2 = Ty::Decimal {
        precision: 4,
        scale: 2,
    };
    // price * (1.00 - discount), with the literal 1.00 at scale 2.
    let price = [10_494_950_i64, 1, -250, 9_000_000]; // in cents
    let discount = [5i64, 10, 0, 100];
    let program = Program {
        inputs: vec![d15_2, d4_2],
        predicate: None,
        outputs: vec![Expr::binary(
            BinOp::Mul,
            col(0, d15_2),
            Expr::binary(
                BinOp::Sub,
                int(
                    100,
                    Ty::Decimal {
                        precision: 3,
                        scale: 2,
                    },
                ),
                col(1, d4_2),
            ),
        )],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let out = run(
        &gpu,
        &program,
        4,
        &[Col::decimals(&price, 15, 2), Col::decimals(&discount, 4, 2)],
    );
    assert!(!out.needs_cpu);
    assert_eq!(
        out.columns[0].ty,
        Ty::Decimal {
            precision: 21,
            scale: 4
        }
    );
    let got: Vec<i64> = out64(&out, 0).into_iter().map(Option::unwrap).collect();
    let want: Vec<i64> = price
        .iter()
        .zip(&discount)
        .map(|(p, d)| p * (100 - d))
        .collect();
    assert_eq!(got, want);

    // An overflowing sum and a cast beyond the target precision need the CPU.
    let big = Ty::Decimal {
        precision: 18,
        scale: 0,
    };
    let add = Program {
        inputs: vec![big],
        predicate: None,
        outputs: vec![Expr::binary(BinOp::Add, col(0, big), col(0, big))],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let ok = run(
        &gpu,
        &add,
        1,
        &[Col::decimals(&[4_000_000_000_000_000_000], 18, 0)],
    );
    assert!(!ok.needs_cpu);
    let over = run(
        &gpu,
        &add,
        2,
        &[Col::decimals(&[1, 5_000_000_000_000_000_000], 18, 0)],
    );
    assert!(over.needs_cpu, "i64 overflow must go to the CPU");
    let narrow = Program {
        inputs: vec![Ty::I64],
        predicate: None,
        outputs: vec![Expr::cast(
            col(0, Ty::I64),
            Ty::Decimal {
                precision: 5,
                scale: 2,
            },
        )],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let fits = run(&gpu, &narrow, 1, &[Col::i64s(&[999], None)]);
    assert_eq!(out64(&fits, 0), vec![Some(99_900)]);
    let too_wide = run(&gpu, &narrow, 1, &[Col::i64s(&[1000], None)]);
    assert!(too_wide.needs_cpu, "1000 does not fit decimal(5,2)");

    // Decimal → float divides the value as f64 by 10^scale, as Arrow does.
    let d25_2 = Ty::Decimal {
        precision: 25,
        scale: 2,
    };
    let to_float = Program {
        inputs: vec![d25_2],
        predicate: None,
        outputs: vec![
            Expr::cast(col(0, d25_2), Ty::F64),
            Expr::cast(col(0, d25_2), Ty::F32),
        ],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let values = [1i64, -7, 123_456_789_012_345, 33, i64::MAX / 3];
    let out = run(
        &gpu,
        &to_float,
        values.len(),
        &[Col::decimals(&values, 25, 2)],
    );
    for (i, v) in values.iter().enumerate() {
        let want = *v as f64 / 100.0;
        assert_eq!(
            out64(&out, 0)[i].map(|b| f64::from_bits(b as u64)),
            Some(want)
        );
        assert_eq!(out32(&out, 1)[i].map(f32::from_bits), Some(want as f32));
    }
}

#[test]
fn integer_division_matches_rust_and_division_by_zero_needs_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let a: Vec<i32> = vec![7, -7, 7, -7, i32::MIN, 0, 123_456];
    let b: Vec<i32> = vec![2, 2, -2, -2, 3, 5, -1000];
    let program = Program {
        inputs: vec![Ty::I32, Ty::I32],
        predicate: None,
        outputs: vec![
            Expr::binary(BinOp::Div, col(0, Ty::I32), col(1, Ty::I32)),
            Expr::binary(BinOp::Mod, col(0, Ty::I32), col(1, Ty::I32)),
        ],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let out = run(
        &gpu,
        &program,
        a.len(),
        &[Col::i32s(&a, None), Col::i32s(&b, None)],
    );
    assert!(!out.needs_cpu);
    for i in 0..a.len() {
        assert_eq!(out32(&out, 0)[i], Some((a[i] / b[i]) as u32));
        assert_eq!(out32(&out, 1)[i], Some((a[i] % b[i]) as u32));
    }
    // A zero divisor on a NULL row is no error; on a valid row it is.
    let valid = [true, false];
    let nul = run(
        &gpu,
        &program,
        2,
        &[Col::i32s(&[1, 1], None), Col::i32s(&[1, 0], Some(&valid))],
    );
    assert!(!nul.needs_cpu);
    let zero = run(
        &gpu,
        &program,
        2,
        &[Col::i32s(&[1, 1], None), Col::i32s(&[1, 0], None)],
    );
    assert!(zero.needs_cpu);
    let overflow = run(
        &gpu,
        &program,
        1,
        &[Col::i32s(&[i32::MIN], None), Col::i32s(&[-1], None)],
    );
    assert!(overflow.needs_cpu);
}

#[test]
fn programs_the_device_cannot_run_say_why() {
    let Some(gpu) = gpu() else { return };
    let exp64 = Program {
        inputs: vec![Ty::F64],
        predicate: None,
        outputs: vec![Expr::unary(UnOp::Exp, col(0, Ty::F64))],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let err = gpu.fused_support(&exp64).unwrap_err();
    assert!(err.contains("exp of f64"), "{err}");
    let ill_typed = Program {
        inputs: vec![Ty::I32],
        predicate: Some(col(0, Ty::I32)),
        outputs: vec![],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    assert!(gpu.fused_support(&ill_typed).is_err());
    let cpu = Device::cpu().unwrap();
    let plain = Program {
        inputs: vec![Ty::I32],
        predicate: None,
        outputs: vec![col(0, Ty::I32)],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    assert!(cpu.fused_support(&plain).is_err());
}

#[test]
fn signed_64_bit_arithmetic_matches_rust() {
    let Some(gpu) = gpu() else { return };
    let a: Vec<i64> = vec![
        -943,
        943,
        0,
        -1,
        7,
        -8,
        i64::MAX,
        i64::MIN + 1,
        123_456_789_012,
    ];
    let c = |v: i64| int(v, Ty::I64);
    let x = || col(0, Ty::I64);
    let program = Program {
        inputs: vec![Ty::I64],
        predicate: None,
        outputs: vec![
            // ((2 - abs(a)) / -7), -a, a % -7, a * 3 (wrapping)
            Expr::binary(
                BinOp::Div,
                Expr::binary(BinOp::Sub, c(2), Expr::unary(UnOp::Abs, x())),
                c(-7),
            ),
            Expr::unary(UnOp::Neg, x()),
            Expr::binary(BinOp::Mod, x(), c(-7)),
            Expr::binary(BinOp::Mul, x(), c(3)),
            Expr::unary(UnOp::Abs, x()),
        ],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let out = run(&gpu, &program, a.len(), &[Col::i64s(&a, None)]);
    assert!(!out.needs_cpu);
    for (i, v) in a.iter().enumerate() {
        assert_eq!(
            out64(&out, 0)[i],
            Some((2 - v.abs()) / -7),
            "(2 - abs({v})) / -7"
        );
        assert_eq!(out64(&out, 1)[i], Some(v.wrapping_neg()), "-{v}");
        assert_eq!(out64(&out, 2)[i], Some(v % -7), "{v} % -7");
        assert_eq!(out64(&out, 3)[i], Some(v.wrapping_mul(3)), "{v} * 3");
        assert_eq!(out64(&out, 4)[i], Some(v.abs()), "abs({v})");
    }
}

#[test]
fn abs_of_a_widened_column() {
    let Some(gpu) = gpu() else { return };
    let a: Vec<i32> = vec![-943, 943, 0, -1, 7];
    let x = Expr::cast(col(0, Ty::I32), Ty::I64);
    let program = Program {
        inputs: vec![Ty::I32],
        predicate: None,
        outputs: vec![
            Expr::binary(
                BinOp::Div,
                Expr::binary(
                    BinOp::Sub,
                    int(2, Ty::I64),
                    Expr::unary(UnOp::Abs, x.clone()),
                ),
                int(-7, Ty::I64),
            ),
            Expr::unary(UnOp::Abs, x.clone()),
            Expr::binary(BinOp::Lt, x.clone(), int(0, Ty::I64)),
            x,
        ],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let out = run(&gpu, &program, a.len(), &[Col::i32s(&a, None)]);
    for (i, v) in a.iter().enumerate() {
        let v = i64::from(*v);
        assert_eq!(out64(&out, 3)[i], Some(v), "CAST({v} AS BIGINT)");
        assert_eq!(out32(&out, 2)[i], Some(u32::from(v < 0)), "{v} < 0");
        assert_eq!(out64(&out, 1)[i], Some(v.abs()), "abs({v})");
        assert_eq!(
            out64(&out, 0)[i],
            Some((2 - v.abs()) / -7),
            "(2 - abs({v})) / -7"
        );
    }
}

#[test]
fn reductions_over_kept_rows() {
    use kiln_kernels::codegen::{Reduce, ReduceOp};
    let Some(gpu) = gpu() else { return };
    for rows in [0usize, 1, 300, 70_001] {
        let a: Vec<i32> = (0..rows as i32).map(|i| (i * 7919) % 2001 - 1000).collect();
        let valid: Vec<bool> = (0..rows).map(|i| i % 5 != 2).collect();
        let b: Vec<i64> = (0..rows as i64).map(|i| i * 1_234_567 - 99).collect();
        let c: Vec<f64> = (0..rows).map(|i| (i % 97) as f64 * 0.5 - 3.0).collect();
        let d15 = Ty::Decimal {
            precision: 15,
            scale: 2,
        };
        let reduce = |op, arg| Reduce { op, arg };
        let program = Program {
            inputs: vec![Ty::I32, Ty::I64, Ty::F64, d15],
            predicate: Some(Expr::binary(BinOp::Gt, col(1, Ty::I64), int(1000, Ty::I64))),
            outputs: Vec::new(),
            reduce: vec![
                reduce(ReduceOp::Sum, col(0, Ty::I32)),
                reduce(ReduceOp::Min, col(0, Ty::I32)),
                reduce(ReduceOp::Max, col(1, Ty::I64)),
                reduce(ReduceOp::Sum, col(2, Ty::F64)),
                reduce(ReduceOp::Count, Expr::lit(Value::Bool(true), Ty::Bool)),
                reduce(
                    ReduceOp::Sum,
                    Expr::binary(BinOp::Mul, col(3, d15), col(3, d15)),
                ),
            ],
            group: None,
            topk: None,
        };
        let cols = [
            Col::i32s(&a, Some(&valid)),
            Col::i64s(&b, None),
            Col::f64s(&c, None),
            Col::decimals(&b.iter().map(|v| v % 1_000_000).collect::<Vec<_>>(), 15, 2),
        ];
        let out = run(&gpu, &program, rows, &cols);
        assert!(!out.needs_cpu, "rows={rows}");
        let kept: Vec<usize> = (0..rows).filter(|&i| b[i] > 1000).collect();
        let ints: Vec<i128> = kept
            .iter()
            .filter(|&&i| valid[i])
            .map(|&i| i128::from(a[i]))
            .collect();
        let r = &out.reduced;
        assert_eq!(r[0].nonnull, ints.len() as u64, "rows={rows}");
        assert_eq!(r[0].int, (!ints.is_empty()).then(|| ints.iter().sum()));
        assert_eq!(r[1].int, ints.iter().min().copied());
        assert_eq!(r[2].int, kept.iter().map(|&i| i128::from(b[i])).max());
        let fsum: f64 = kept.iter().map(|&i| c[i]).sum();
        assert!(
            kept.is_empty() || (r[3].float.unwrap() - fsum).abs() <= 1e-9 * fsum.abs().max(1.0)
        );
        assert_eq!(r[4].nonnull, kept.len() as u64);
        let sq: i128 = kept
            .iter()
            .map(|&i| i128::from(b[i] % 1_000_000).pow(2))
            .sum();
        assert_eq!(r[5].int, (!kept.is_empty()).then_some(sq));
    }
    // A block sum beyond 64 bits needs the CPU.
    let big = Program {
        inputs: vec![Ty::I64],
        predicate: None,
        outputs: Vec::new(),
        reduce: vec![Reduce {
            op: ReduceOp::Sum,
            arg: col(0, Ty::I64),
        }],
        group: None,
        topk: None,
    };
    let out = run(&gpu, &big, 2, &[Col::i64s(&[i64::MAX, 1], None)]);
    assert!(out.needs_cpu);
}

#[test]
fn grouped_reductions_fold_per_group() {
    use kiln_kernels::codegen::{MAX_GROUPS, Reduce, ReduceOp};
    let Some(gpu) = gpu() else { return };
    let reduce = |op, arg| Reduce { op, arg };
    let program = Program {
        inputs: vec![Ty::I32, Ty::I64, Ty::F64, Ty::U32],
        predicate: Some(Expr::binary(BinOp::NotEq, col(1, Ty::I64), int(7, Ty::I64))),
        outputs: Vec::new(),
        reduce: vec![
            reduce(ReduceOp::Sum, col(0, Ty::I32)),
            reduce(ReduceOp::Min, col(1, Ty::I64)),
            reduce(ReduceOp::Max, col(0, Ty::I32)),
            reduce(ReduceOp::Sum, col(2, Ty::F64)),
            reduce(ReduceOp::Count, col(0, Ty::I32)),
        ],
        group: Some(col(3, Ty::U32)),
        topk: None,
    };
    // Group counts at the edges: one group, a few, not a power of two, the
    // most a launch takes; rows over several tiles per workgroup.
    for (rows, groups) in [
        (0usize, 3usize),
        (1, 1),
        (300, 5),
        (70_001, 37),
        (140_000, MAX_GROUPS),
    ] {
        let a: Vec<i32> = (0..rows as i32).map(|i| (i * 7919) % 2001 - 1000).collect();
        let valid: Vec<bool> = (0..rows).map(|i| i % 5 != 2).collect();
        let b: Vec<i64> = (0..rows as i64).map(|i| (i * 31) % 1009 - 500).collect();
        let c: Vec<f64> = (0..rows).map(|i| (i % 97) as f64 * 0.25).collect();
        // Skewed groups: group 0 takes half the rows, the last group none
        // when there are several.
        let gid: Vec<u32> = (0..rows)
            .map(|i| {
                if i % 2 == 0 || groups == 1 {
                    0
                } else {
                    ((i * 13) % (groups - 1).max(1)) as u32
                }
            })
            .collect();
        let cols = [
            Col::i32s(&a, Some(&valid)),
            Col::i64s(&b, None),
            Col::f64s(&c, None),
            Col::new(
                Ty::U32,
                gid.iter().flat_map(|g| g.to_le_bytes()).collect(),
                None,
            ),
        ];
        gpu.fused_support(&program).unwrap();
        let inputs: Vec<_> = cols.iter().map(|c| Some(c.data())).collect();
        let out = gpu
            .run_grouped(&program, rows, groups, GroupFold::Tiles, &inputs)
            .unwrap();
        assert!(!out.needs_cpu);
        assert_eq!(out.reduced.len(), groups * 5);
        assert_eq!(out.group_rows.len(), groups);
        for g in 0..groups {
            let kept: Vec<usize> = (0..rows)
                .filter(|&i| gid[i] as usize == g && b[i] != 7)
                .collect();
            let ints: Vec<i128> = kept
                .iter()
                .filter(|&&i| valid[i])
                .map(|&i| i128::from(a[i]))
                .collect();
            let r = &out.reduced[g * 5..g * 5 + 5];
            let what = format!("rows={rows} groups={groups} g={g}");
            assert_eq!(out.group_rows[g], kept.len() as u64, "{what}");
            assert_eq!(
                r[0].int,
                (!ints.is_empty()).then(|| ints.iter().sum()),
                "{what}"
            );
            assert_eq!(r[0].nonnull, ints.len() as u64, "{what}");
            assert_eq!(
                r[1].int,
                kept.iter().map(|&i| i128::from(b[i])).min(),
                "{what}"
            );
            assert_eq!(r[2].int, ints.iter().max().copied(), "{what}");
            let fsum: f64 = kept.iter().map(|&i| c[i]).sum();
            assert_eq!(r[3].float.is_some(), !kept.is_empty(), "{what}");
            assert!(
                (r[3].float.unwrap_or(0.0) - fsum).abs() <= 1e-9 * fsum.abs().max(1.0),
                "{what}"
            );
            assert_eq!(r[4].nonnull, ints.len() as u64, "{what}");
        }
    }
    // A group index at or past the group count, or NULL, needs the CPU.
    let key = group_col;
    let data = [
        Col::i32s(&[1, 2], None),
        Col::i64s(&[1, 2], None),
        Col::f64s(&[1.0, 2.0], None),
    ];
    for (k, groups) in [
        (key(&[0, 3], None), 3),
        (key(&[0, 1], Some(&[true, false])), 3),
    ] {
        let inputs: Vec<_> = data.iter().chain([&k]).map(|c| Some(c.data())).collect();
        assert!(
            gpu.run_grouped(&program, 2, groups, GroupFold::Tiles, &inputs)
                .unwrap()
                .needs_cpu
        );
    }
    // More groups than a launch folds, or groups for an ungrouped program,
    // are refused.
    let k = key(&[0, 1], None);
    let inputs: Vec<_> = data.iter().chain([&k]).map(|c| Some(c.data())).collect();
    let err = gpu
        .run_grouped(&program, 2, MAX_GROUPS + 1, GroupFold::Tiles, &inputs)
        .unwrap_err()
        .to_string();
    assert!(err.contains("257 groups"), "{err}");
}

/// A group-index column in the device layout.
fn group_col(g: &[u32], valid: Option<&[bool]>) -> Col {
    Col::new(
        Ty::U32,
        g.iter().flat_map(|x| x.to_le_bytes()).collect(),
        valid,
    )
}

#[test]
fn atomic_grouped_fold_is_exact() {
    use kiln_kernels::codegen::{Reduce, ReduceOp};
    let Some(gpu) = gpu() else { return };
    let reduce = |op, arg| Reduce { op, arg };
    let program = Program {
        inputs: vec![Ty::I64, Ty::I32, Ty::U32],
        predicate: Some(Expr::binary(BinOp::NotEq, col(1, Ty::I32), int(7, Ty::I32))),
        outputs: Vec::new(),
        reduce: vec![
            reduce(ReduceOp::Sum, col(0, Ty::I64)),
            reduce(ReduceOp::Min, col(0, Ty::I64)),
            reduce(ReduceOp::Max, col(0, Ty::I64)),
            reduce(ReduceOp::Sum, col(1, Ty::I32)),
            reduce(ReduceOp::Min, col(1, Ty::I32)),
            reduce(ReduceOp::Max, col(1, Ty::I32)),
            reduce(ReduceOp::Count, col(1, Ty::I32)),
        ],
        group: Some(col(2, Ty::U32)),
        topk: None,
    };
    gpu.atomic_fold_support(&program).unwrap();
    // One group (every row contends for the same words), a few, many with
    // one or two rows each; rows over many blocks.
    for (rows, groups) in [
        (0usize, 1usize),
        (1, 1),
        (70_001, 1),
        (5_000, 3),
        (70_001, 1_000),
        (70_001, 50_000),
    ] {
        // 64-bit values near both ends, so sums pass 2^63 both ways and the
        // low words carry; extremes for min/max; NULLs in the i32 column.
        let a: Vec<i64> = (0..rows as i64)
            .map(|i| match i % 13 {
                0 => i64::MAX,
                1 => i64::MIN,
                2 => i64::MAX - (i % 1000),
                3 | 4 => -(i * 7_919_000_001),
                5 => 0xffff_ffff,
                _ => (i * 104_729 - 1) << 20,
            })
            .collect();
        let b: Vec<i32> = (0..rows as i32)
            .map(|i| match i % 7 {
                0 => i32::MIN,
                1 => i32::MAX,
                _ => (i * 7919) % 2001 - 1000,
            })
            .collect();
        let valid: Vec<bool> = (0..rows).map(|i| i % 9 != 4).collect();
        let gid: Vec<u32> = (0..rows)
            .map(|i| ((i * 7 + i / 3) % groups) as u32)
            .collect();
        let cols = [
            Col::i64s(&a, None),
            Col::i32s(&b, Some(&valid)),
            group_col(&gid, None),
        ];
        let inputs: Vec<_> = cols.iter().map(|c| Some(c.data())).collect();
        let out = gpu
            .run_grouped(&program, rows, groups, GroupFold::Atomics, &inputs)
            .unwrap();
        assert!(!out.needs_cpu);
        assert_eq!(out.reduced.len(), groups * 7);
        let mut kept: Vec<Vec<usize>> = vec![Vec::new(); groups];
        for i in 0..rows {
            if valid[i] && b[i] != 7 {
                kept[gid[i] as usize].push(i);
            }
        }
        for (g, kept) in kept.iter().enumerate() {
            let what = format!("rows={rows} groups={groups} g={g}");
            let r = &out.reduced[g * 7..g * 7 + 7];
            assert_eq!(out.group_rows[g], kept.len() as u64, "{what}");
            let wide: Vec<i128> = kept.iter().map(|&i| i128::from(a[i])).collect();
            let narrow: Vec<i128> = kept
                .iter()
                .filter(|&&i| valid[i])
                .map(|&i| i128::from(b[i]))
                .collect();
            for (vals, first) in [(&wide, 0), (&narrow, 3)] {
                let any = !vals.is_empty();
                assert_eq!(r[first].nonnull, vals.len() as u64, "{what}");
                assert_eq!(r[first].int, any.then(|| vals.iter().sum()), "{what}");
                assert_eq!(r[first + 1].int, vals.iter().min().copied(), "{what}");
                assert_eq!(r[first + 2].int, vals.iter().max().copied(), "{what}");
            }
            assert_eq!(r[6].nonnull, narrow.len() as u64, "{what}");
        }
    }
    // A group index at or past the group count, or NULL, needs the CPU.
    let data = [Col::i64s(&[1, 2], None), Col::i32s(&[1, 2], None)];
    for (k, groups) in [
        (group_col(&[0, 3], None), 3),
        (group_col(&[0, 1], Some(&[true, false])), 3),
    ] {
        let inputs: Vec<_> = data.iter().chain([&k]).map(|c| Some(c.data())).collect();
        let out = gpu
            .run_grouped(&program, 2, groups, GroupFold::Atomics, &inputs)
            .unwrap();
        assert!(out.needs_cpu);
    }
    // The most rows a launch takes leave room for a group per row.
    for limit in [1usize << 16, 1 << 20] {
        let rows = kiln_kernels::codegen::max_launch_rows(&program, limit);
        let zeros = vec![0u8; rows * 8];
        let cols = [
            Col::new(Ty::I64, zeros.clone(), None),
            Col::new(Ty::I32, zeros[..rows * 4].to_vec(), None),
            Col::new(Ty::U32, zeros[..rows * 4].to_vec(), None),
        ];
        let inputs: Vec<_> = cols.iter().map(|c| Some(c.data())).collect();
        let layout =
            kiln_kernels::codegen::Layout::new(&program, rows, rows, GroupFold::Atomics, &inputs)
                .unwrap();
        assert!(
            layout.out_words * 4 <= limit,
            "{rows} rows: {} words",
            layout.out_words
        );
        assert!(layout.data_words * 4 <= limit);
    }
    // WGSL has no float atomics: a float sum has no atomic fold there.
    let floats = Program {
        inputs: vec![Ty::F64, Ty::U32],
        reduce: vec![reduce(ReduceOp::Sum, col(0, Ty::F64))],
        group: Some(col(1, Ty::U32)),
        ..Program::default()
    };
    let err = gpu.atomic_fold_check(&floats).unwrap_err();
    assert!(err.contains("float atomics"), "{err}");
}

#[test]
fn group_keys_are_numbered_on_the_device() {
    use kiln_kernels::codegen::numbering::KeyProgram;
    use std::collections::HashMap;
    let Some(gpu) = gpu() else { return };
    // Checks a numbering against the keys as the host sees them: equal keys
    // share a group, different keys do not, groups are dense and each one's
    // first row is the smallest row with its keys.
    fn check(keys: &[Vec<Option<i128>>], gid: &[u32], first: &[u32], what: &str) {
        let key = |r: usize| keys.iter().map(|k| k[r]).collect::<Vec<_>>();
        let mut seen: HashMap<Vec<Option<i128>>, u32> = HashMap::new();
        for (r, &g) in gid.iter().enumerate() {
            assert!((g as usize) < first.len(), "{what}: row {r} group {g}");
            match seen.get(&key(r)) {
                Some(&h) => assert_eq!(g, h, "{what}: row {r}"),
                None => {
                    assert_eq!(first[g as usize] as usize, r, "{what}: first row of {g}");
                    seen.insert(key(r), g);
                }
            }
        }
        assert_eq!(seen.len(), first.len(), "{what}: group count");
    }
    for rows in [0usize, 1, 257, 70_001] {
        let a: Vec<i64> = (0..rows as i64)
            .map(|i| match i % 5 {
                0 => i64::MIN,
                1 => i64::MAX,
                _ => (i * 7919) % 1009,
            })
            .collect();
        let a_valid: Vec<bool> = (0..rows).map(|i| i % 11 != 3).collect();
        let b: Vec<i32> = (0..rows as i32).map(|i| (i * 31) % 7 - 3).collect();
        let c: Vec<bool> = (0..rows).map(|i| i % 3 == 0).collect();
        let cols = [
            Col::i64s(&a, Some(&a_valid)),
            Col::i32s(&b, None),
            Col::bools(&c, None),
        ];
        let inputs: Vec<_> = cols.iter().map(|c| Some(c.data())).collect();
        let inputs_ty = vec![Ty::I64, Ty::I32, Ty::Bool];
        let ints_a: Vec<Option<i128>> = (0..rows)
            .map(|i| a_valid[i].then(|| i128::from(a[i])))
            .collect();
        let ints_b: Vec<Option<i128>> = b.iter().map(|v| Some(i128::from(*v))).collect();
        let bools_c: Vec<Option<i128>> = c.iter().map(|v| Some(i128::from(*v))).collect();
        let every: Vec<Option<i128>> = (0..rows).map(|i| Some(i as i128)).collect();
        // (keys, their values as the host sees them, what they are)
        type Case<'a> = (Vec<Expr>, Vec<Vec<Option<i128>>>, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![col(0, Ty::I64)],
                vec![ints_a.clone()],
                "a (NULLs, extremes)",
            ),
            (
                vec![col(1, Ty::I32), col(2, Ty::Bool)],
                vec![ints_b.clone(), bools_c.clone()],
                "b, c",
            ),
            (
                vec![col(0, Ty::I64), col(1, Ty::I32), col(2, Ty::Bool)],
                vec![ints_a.clone(), ints_b.clone(), bools_c.clone()],
                "a, b, c",
            ),
            (
                // Computed: b % 2 (with b's sign), one group per value.
                vec![Expr::binary(BinOp::Mod, col(1, Ty::I32), int(2, Ty::I32))],
                vec![b.iter().map(|v| Some(i128::from(v % 2))).collect()],
                "b % 2",
            ),
            (
                vec![Expr::binary(
                    BinOp::Add,
                    Expr::cast(col(1, Ty::I32), Ty::I64),
                    Expr::lit(Value::Int(0), Ty::I64),
                )],
                vec![ints_b.clone()],
                "b + 0",
            ),
        ];
        for (keys, host, what) in cases {
            let program = KeyProgram {
                inputs: inputs_ty.clone(),
                keys,
            };
            gpu.numbering_support(&program).unwrap();
            let out = gpu.number_groups(&program, rows, &inputs).unwrap();
            assert!(!out.needs_cpu, "{what}");
            assert_eq!(out.gid.len(), rows, "{what}");
            check(
                &host,
                &out.gid,
                &out.first_row,
                &format!("{what}, {rows} rows"),
            );
        }
        // Every row its own group: the table at its fullest.
        let ids: Vec<i64> = (0..rows as i64).map(|i| i * 1_000_003).collect();
        let id_col = [Col::i64s(&ids, None)];
        let inputs: Vec<_> = id_col.iter().map(|c| Some(c.data())).collect();
        let program = KeyProgram {
            inputs: vec![Ty::I64],
            keys: vec![col(0, Ty::I64)],
        };
        let out = gpu.number_groups(&program, rows, &inputs).unwrap();
        check(
            &[every],
            &out.gid,
            &out.first_row,
            &format!("ids, {rows} rows"),
        );
    }
    // A key the device cannot compute as the CPU would (a division by
    // zero) leaves the batch to the host.
    let zero = [Col::i32s(&[1, 0, 2], None)];
    let inputs: Vec<_> = zero.iter().map(|c| Some(c.data())).collect();
    let program = KeyProgram {
        inputs: vec![Ty::I32],
        keys: vec![Expr::binary(BinOp::Div, int(10, Ty::I32), col(0, Ty::I32))],
    };
    assert!(gpu.number_groups(&program, 3, &inputs).unwrap().needs_cpu);
    // Float keys are refused.
    let floats = KeyProgram {
        inputs: vec![Ty::F64],
        keys: vec![col(0, Ty::F64)],
    };
    let err = gpu.numbering_support(&floats).unwrap_err();
    assert!(err.contains("GROUP BY key of type f64"), "{err}");
}

#[test]
fn block_top_k_keeps_every_row_that_can_be_first() {
    use kiln_kernels::codegen::{BlockTopK, MAX_TOPK};
    use std::cmp::Ordering;
    let Some(gpu) = gpu() else { return };
    let rows = 3000usize;
    // Keys with NULLs, many ties, extreme values; floats with NaN, -0, inf.
    let ints: Vec<i64> = (0..rows as i64)
        .map(|i| match i % 11 {
            0 => i64::MIN,
            1 => i64::MAX,
            _ => (i * 7919) % 23 - 11,
        })
        .collect();
    let int_valid: Vec<bool> = (0..rows).map(|i| i % 9 != 4).collect();
    let specials = [
        f64::NAN,
        -0.0,
        0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.5,
        2.25,
    ];
    let floats: Vec<f64> = (0..rows)
        .map(|i| {
            if i % 5 == 0 {
                specials[i % 7]
            } else {
                ((i * 31) % 101) as f64 / 4.0 - 12.0
            }
        })
        .collect();
    let float_valid: Vec<bool> = (0..rows).map(|i| i % 13 != 6).collect();
    let cols = [
        Col::i64s(&ints, Some(&int_valid)),
        Col::f64s(&floats, Some(&float_valid)),
    ];
    for (column, descending, nulls_first, k, filtered) in [
        (0usize, false, false, 1u32, false),
        (0, true, true, 10, true),
        (1, false, true, 5, false),
        (1, true, false, 37, true),
        (0, false, true, MAX_TOPK, false),
    ] {
        let ty = [Ty::I64, Ty::F64][column];
        // SQL order of two rows' keys: NULLs placed, values per direction.
        let cmp = |a: usize, b: usize| -> Ordering {
            let valid = |r: usize| {
                if column == 0 {
                    int_valid[r]
                } else {
                    float_valid[r]
                }
            };
            match (valid(a), valid(b)) {
                (false, false) => Ordering::Equal,
                (false, true) => {
                    if nulls_first {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    }
                }
                (true, false) => {
                    if nulls_first {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    }
                }
                (true, true) => {
                    let o = if column == 0 {
                        ints[a].cmp(&ints[b])
                    } else {
                        floats[a].total_cmp(&floats[b])
                    };
                    if descending { o.reverse() } else { o }
                }
            }
        };
        let kept = |r: usize| !filtered || ints[r].rem_euclid(3) != 0 || !int_valid[r];
        let program = Program {
            inputs: vec![Ty::I64, Ty::F64],
            predicate: filtered.then(|| {
                Expr::binary(
                    BinOp::Or,
                    Expr::binary(
                        BinOp::NotEq,
                        Expr::binary(BinOp::Mod, col(0, Ty::I64), int(3, Ty::I64)),
                        int(0, Ty::I64),
                    ),
                    Expr::unary(UnOp::IsNull, col(0, Ty::I64)),
                )
            }),
            outputs: vec![col(column, ty)],
            reduce: Vec::new(),
            group: None,
            topk: Some(BlockTopK {
                key: col(column, ty),
                descending,
                nulls_first,
                k,
            }),
        };
        let out = run(&gpu, &program, rows, &cols);
        assert!(!out.needs_cpu);
        // Rows kept by the predicate with fewer than k kept rows of their
        // block strictly before them.
        let want: Vec<u32> = (0..rows)
            .filter(|&r| {
                let block = r / 256 * 256..((r / 256 + 1) * 256).min(rows);
                // Rust's `%` truncates toward zero as SQL's does; the filter
                // above matches only when the remainder is exactly 0.
                kept(r)
                    && block
                        .filter(|&j| kept(j) && cmp(j, r) == Ordering::Less)
                        .count()
                        < k as usize
            })
            .map(|r| r as u32)
            .collect();
        assert_eq!(
            out.indices, want,
            "column {column} desc {descending} nulls_first {nulls_first} k {k}"
        );
        // The overall first k rows are all there.
        let mut all: Vec<usize> = (0..rows).filter(|&r| kept(r)).collect();
        all.sort_by(|&a, &b| cmp(a, b));
        for r in all.iter().take(k as usize) {
            assert!(out.indices.contains(&(*r as u32)));
        }
    }
}

#[test]
fn year_month_day_of_dates() {
    let Some(gpu) = gpu() else { return };
    // (days since 1970-01-01, year, month, day), across leap rules and eras.
    let cases: [(i32, i64, i64, i64); 9] = [
        (0, 1970, 1, 1),
        (-1, 1969, 12, 31),
        (59, 1970, 3, 1),
        (10_957, 2000, 1, 1),
        (11_016, 2000, 2, 29),
        (-25_508, 1900, 3, 1),
        (-719_468, 0, 3, 1),
        (2_932_896, 9999, 12, 31),
        (-719_469, 0, 2, 29),
    ];
    let days: Vec<i32> = cases.iter().map(|c| c.0).collect();
    let d = || col(0, Ty::I32);
    let program = Program {
        inputs: vec![Ty::I32],
        predicate: None,
        outputs: vec![
            Expr::unary(UnOp::Year, d()),
            Expr::unary(UnOp::Month, d()),
            Expr::unary(UnOp::Day, d()),
        ],
        reduce: Vec::new(),
        group: None,
        topk: None,
    };
    let out = run(&gpu, &program, days.len(), &[Col::i32s(&days, None)]);
    assert!(!out.needs_cpu);
    for (i, (day, y, m, dd)) in cases.iter().enumerate() {
        let got: Vec<i64> = (0..3)
            .map(|o| i64::from(out32(&out, o)[i].unwrap() as i32))
            .collect();
        assert_eq!(got, vec![*y, *m, *dd], "day {day}");
    }
}
