//! Programs made from arbitrary bytes, for the codegen fuzz target
//! (`kernels/fuzz/fuzz_targets/codegen.rs`, whose body is [`exercise`]).
//!
//! The bytes are read as choices, not as a serialized program: each byte
//! picks a constructor among those that give the type the parent wants, so
//! most inputs decode to a program that passes [`Program::check`] and reach
//! the generators (a format the fuzzer had to get right byte by byte would
//! mostly be refused by the check). When the bytes run out every choice is
//! 0: a column or a literal, so every input decodes and ends.
//!
//! [`exercise`] then generates every module the program has — WGSL and CUDA,
//! the tiled and the atomic folds, the numbering of group keys — and
//! validates each WGSL module with naga, as wgpu would when compiling it:
//! a generator may refuse a program with a reason, never emit a module the
//! shader compiler rejects, and never panic.
//!
//! Not an API: nothing here is stable.

use super::ir::{
    BinOp, BlockTopK, Expr, MAX_TOPK, Program, Reduce, ReduceOp, Ty, UnOp, Value, cast_supported,
};
use super::numbering::KeyProgram;
use super::{cuda, numbering, wgsl};

/// Nesting below which every expression is a column or a literal.
const MAX_DEPTH: usize = 5;

/// What a fuzz input decodes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Case {
    /// A fused program: outputs (with a predicate or a top-k) or reductions.
    Fused(Program),
    /// The GROUP BY keys of a numbering.
    Keys(KeyProgram),
}

/// The bytes, read front to back; 0 once they are used up.
struct Choices<'a> {
    data: &'a [u8],
    at: usize,
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, _| (v << 8) | u64::from(self.byte()))
    }

    fn ty(&mut self) -> Ty {
        match self.below(8) {
            0 => Ty::I32,
            1 => Ty::I64,
            2 => Ty::U32,
            3 => Ty::U64,
            4 => Ty::F32,
            5 => Ty::F64,
            6 => Ty::Bool,
            _ => {
                let precision = 1 + (self.byte() % 38);
                // Mostly 0..=precision, sometimes negative or beyond.
                let scale = (self.byte() as i8) % 40;
                Ty::Decimal { precision, scale }
            }
        }
    }

    /// A non-float type (GROUP BY keys).
    fn key_ty(&mut self) -> Ty {
        match self.ty() {
            Ty::F32 => Ty::I32,
            Ty::F64 => Ty::I64,
            t => t,
        }
    }

    fn value(&mut self, ty: Ty) -> Value {
        if self.below(8) == 0 {
            return Value::Null;
        }
        // Values a boundary away from the interesting ones: 0, ±1, the
        // extremes of the type, NaN and the infinities.
        let special = self.below(4) == 0;
        match ty {
            Ty::Bool => Value::Bool(self.flag()),
            Ty::F32 | Ty::F64 => Value::Float(if special {
                [
                    0.0,
                    -0.0,
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    f64::from(f32::MAX),
                    f64::MIN_POSITIVE,
                ][self.below(7)]
            } else {
                let v = f64::from_bits(self.u64());
                if ty == Ty::F32 {
                    f64::from(v as f32)
                } else {
                    v
                }
            }),
            Ty::U32 | Ty::U64 => {
                let v = if special {
                    [0, 1, u64::from(u32::MAX), u64::MAX][self.below(4)]
                } else {
                    self.u64()
                };
                let v = if ty == Ty::U32 { v & 0xffff_ffff } else { v };
                if v > i64::MAX as u64 {
                    Value::UInt(v)
                } else {
                    Value::Int(v as i64)
                }
            }
            Ty::I32 => Value::Int(if special {
                [0, 1, -1, i64::from(i32::MIN), i64::from(i32::MAX)][self.below(5)]
            } else {
                i64::from(self.u64() as i32)
            }),
            Ty::I64 | Ty::Decimal { .. } => Value::Int(if special {
                [0, 1, -1, i64::MIN, i64::MAX][self.below(5)]
            } else {
                self.u64() as i64
            }),
        }
    }

    /// An expression over `inputs`, meant to have type `want`.
    fn expr(&mut self, inputs: &[Ty], want: Ty, depth: usize) -> Expr {
        let leaf = depth >= MAX_DEPTH;
        let choice = if leaf { self.below(2) } else { self.below(9) };
        match choice {
            0 => match inputs.iter().position(|t| *t == want) {
                Some(first) => {
                    // Any column of the type, the first by default.
                    let same: Vec<usize> = (first..inputs.len())
                        .filter(|&i| inputs[i] == want)
                        .collect();
                    Expr::column(same[self.below(same.len())], want)
                }
                None => Expr::lit(self.value(want), want),
            },
            1 => Expr::lit(self.value(want), want),
            2 => {
                // A type that casts to `want` (a decimal's neighbours too).
                let mut from: Vec<Ty> = [
                    Ty::I32,
                    Ty::I64,
                    Ty::U32,
                    Ty::U64,
                    Ty::F32,
                    Ty::F64,
                    Ty::Bool,
                    self.ty(),
                ]
                .into_iter()
                .filter(|f| *f != want && cast_supported(*f, want))
                .collect();
                if let Ty::Decimal { precision, scale } = want {
                    from.push(Ty::Decimal {
                        precision,
                        scale: scale.saturating_sub(1 + (self.byte() % 4) as i8),
                    });
                }
                let from = if from.is_empty() {
                    want
                } else {
                    from[self.below(from.len())]
                };
                Expr::cast(self.expr(inputs, from, depth + 1), want)
            }
            3 => {
                let branches = (0..1 + self.below(3))
                    .map(|_| {
                        (
                            self.expr(inputs, Ty::Bool, depth + 1),
                            self.expr(inputs, want, depth + 1),
                        )
                    })
                    .collect();
                let otherwise = self
                    .flag()
                    .then(|| Box::new(self.expr(inputs, want, depth + 1)));
                Expr::Case {
                    branches,
                    otherwise,
                    ty: want,
                }
            }
            4 => Expr::Coalesce {
                args: (0..1 + self.below(3))
                    .map(|_| self.expr(inputs, want, depth + 1))
                    .collect(),
            },
            _ if want == Ty::Bool => self.predicate(inputs, depth),
            _ => self.arithmetic(inputs, want, depth),
        }
    }

    /// A boolean expression: a comparison, a connective, a NULL test or IN.
    fn predicate(&mut self, inputs: &[Ty], depth: usize) -> Expr {
        let d = depth + 1;
        match self.below(5) {
            0 => {
                let op = [
                    BinOp::Eq,
                    BinOp::NotEq,
                    BinOp::Lt,
                    BinOp::LtEq,
                    BinOp::Gt,
                    BinOp::GtEq,
                ][self.below(6)];
                let t = self.ty();
                Expr::binary(op, self.expr(inputs, t, d), self.expr(inputs, t, d))
            }
            1 => {
                let op = if self.flag() { BinOp::And } else { BinOp::Or };
                Expr::binary(
                    op,
                    self.expr(inputs, Ty::Bool, d),
                    self.expr(inputs, Ty::Bool, d),
                )
            }
            2 => Expr::unary(UnOp::Not, self.expr(inputs, Ty::Bool, d)),
            3 => {
                let op = if self.flag() {
                    UnOp::IsNull
                } else {
                    UnOp::IsNotNull
                };
                let t = self.ty();
                Expr::unary(op, self.expr(inputs, t, d))
            }
            _ => {
                let t = self.ty();
                Expr::InList {
                    arg: Box::new(self.expr(inputs, t, d)),
                    list: (0..self.below(4))
                        .map(|_| self.expr(inputs, t, d))
                        .collect(),
                    negated: self.flag(),
                }
            }
        }
    }

    /// A numeric expression of type `want`: an operator on operands of it.
    fn arithmetic(&mut self, inputs: &[Ty], want: Ty, depth: usize) -> Expr {
        let d = depth + 1;
        // The operators that give `want` from operands of it.
        let mut unary = Vec::new();
        if want.is_signed() {
            unary.extend([UnOp::Neg, UnOp::Abs]);
        }
        if want.is_float() {
            unary.extend(UnOp::FLOAT_MATH);
        }
        if want == Ty::I32 {
            unary.extend([UnOp::Year, UnOp::Month, UnOp::Day]);
        }
        if !unary.is_empty() && self.flag() {
            let op = unary[self.below(unary.len())];
            return Expr::unary(op, self.expr(inputs, want, d));
        }
        if let Ty::Decimal { precision, scale } = want {
            // Decimal sums and differences widen by a digit; products add
            // the operands' precisions and scales.
            let narrower = Ty::Decimal {
                precision: precision.saturating_sub(1).max(1),
                scale,
            };
            if self.flag() || precision < 4 {
                let op = if self.flag() { BinOp::Add } else { BinOp::Sub };
                let right = if self.flag() { narrower } else { want };
                return Expr::binary(
                    op,
                    self.expr(inputs, narrower, d),
                    self.expr(inputs, right, d),
                );
            }
            let p1 = 1 + self.byte() % (precision - 2);
            let s1 = scale / 2;
            return Expr::binary(
                BinOp::Mul,
                self.expr(
                    inputs,
                    Ty::Decimal {
                        precision: p1,
                        scale: s1,
                    },
                    d,
                ),
                self.expr(
                    inputs,
                    Ty::Decimal {
                        precision: precision - 1 - p1,
                        scale: scale - s1,
                    },
                    d,
                ),
            );
        }
        let ops: &[BinOp] = if want.is_float() {
            &[
                BinOp::Add,
                BinOp::Sub,
                BinOp::Mul,
                BinOp::Div,
                BinOp::Mod,
                BinOp::Pow,
            ]
        } else {
            &[BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Div, BinOp::Mod]
        };
        let op = ops[self.below(ops.len())];
        Expr::binary(op, self.expr(inputs, want, d), self.expr(inputs, want, d))
    }

    fn program(&mut self) -> Case {
        let inputs: Vec<Ty> = (0..self.below(6)).map(|_| self.ty()).collect();
        let mode = self.below(4);
        if mode == 3 {
            let keys = (0..1 + self.below(3))
                .map(|_| {
                    let t = self.key_ty();
                    self.expr(&inputs, t, 0)
                })
                .collect();
            return Case::Keys(KeyProgram { inputs, keys });
        }
        let predicate = self.flag().then(|| self.expr(&inputs, Ty::Bool, 0));
        let mut program = Program {
            inputs,
            predicate,
            ..Program::default()
        };
        if mode == 2 {
            program.reduce = (0..1 + self.below(4))
                .map(|_| {
                    let op = [ReduceOp::Sum, ReduceOp::Min, ReduceOp::Max, ReduceOp::Count]
                        [self.below(4)];
                    let t = self.ty();
                    Reduce {
                        op,
                        arg: self.expr(&program.inputs, t, 0),
                    }
                })
                .collect();
            program.group = self.flag().then(|| self.expr(&program.inputs, Ty::U32, 0));
        } else {
            program.outputs = (0..1 + self.below(4))
                .map(|_| {
                    let t = self.ty();
                    self.expr(&program.inputs, t, 0)
                })
                .collect();
            if mode == 1 {
                let t = self.ty();
                let key = self.expr(&program.inputs, t, 0);
                program.topk = Some(BlockTopK {
                    key,
                    descending: self.flag(),
                    nulls_first: self.flag(),
                    // Mostly within 1..=MAX_TOPK; the bounds and one past.
                    k: (self.below(MAX_TOPK as usize + 2)) as u32,
                });
            }
        }
        Case::Fused(program)
    }
}

/// Decodes `data` (every input decodes; see the module's doc).
pub fn decode(data: &[u8]) -> Case {
    Choices { data, at: 0 }.program()
}

/// Validates one generated WGSL module as wgpu does before compiling it,
/// with the 64-bit capabilities Kiln asks a device for.
pub fn validate_wgsl(source: &str) -> Result<(), String> {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    Validator::new(
        ValidationFlags::all(),
        Capabilities::SHADER_INT64 | Capabilities::FLOAT64,
    )
    .validate(&module)
    .map_err(|e| e.emit_to_string(source))?;
    Ok(())
}

/// Every module generated for `case` that a generator accepted: (name,
/// dialect is WGSL, source).
pub fn modules(case: &Case) -> Vec<(&'static str, bool, String)> {
    let mut out = Vec::new();
    let mut add = |name, wgsl: bool, generated: Result<String, String>| {
        if let Ok(source) = generated {
            out.push((name, wgsl, source));
        }
    };
    match case {
        Case::Fused(program) => {
            if program.check().is_err() {
                return out;
            }
            add("fused", true, wgsl::generate(program));
            add("fused", false, cuda::generate(program));
            if program.atomic_fold_check().is_ok() {
                add("atomic", true, wgsl::generate_atomic(program));
                add("atomic", false, cuda::generate_atomic(program));
            }
        }
        Case::Keys(keys) => {
            if keys.check().is_err() {
                return out;
            }
            add("numbering", true, numbering::wgsl(keys));
            add("numbering", false, numbering::cuda(keys));
        }
    }
    out
}

/// The fuzz target's body: decodes `data`, generates every module and
/// panics when naga rejects a WGSL one (a generator bug: the device would
/// fail to compile what the planner placed on it).
pub fn exercise(data: &[u8]) {
    let case = decode(data);
    for (name, is_wgsl, source) in modules(&case) {
        if is_wgsl && let Err(e) = validate_wgsl(&source) {
            panic!("the {name} WGSL module of {case:?} does not validate:\n{e}\n{source}");
        }
    }
}

/// `n` inputs of 64 bytes from a fixed xorshift stream seeded by `seed`:
/// a smoke of the target without libFuzzer, the same on every machine.
pub fn pseudo_random_inputs(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed.max(1);
    (0..n)
        .map(|_| {
            (0..64)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(n: usize) -> impl Iterator<Item = Vec<u8>> {
        pseudo_random_inputs(n, 0x9e37_79b9_7f4a_7c15).into_iter()
    }

    #[test]
    fn most_inputs_are_programs_the_generators_take() {
        // Else the fuzzer would spend its time on the check.
        let (mut checked, mut generated) = (0, 0);
        for data in inputs(500) {
            let case = decode(&data);
            checked += usize::from(match &case {
                Case::Fused(p) => p.check().is_ok(),
                Case::Keys(k) => k.check().is_ok(),
            });
            generated += usize::from(!modules(&case).is_empty());
        }
        eprintln!("{checked} of 500 check, {generated} generate");
        assert!(checked >= 250, "only {checked} of 500 inputs check");
        assert!(generated >= 200, "only {generated} of 500 inputs generate");
    }

    #[test]
    fn generated_modules_validate() {
        inputs(300).for_each(|data| exercise(&data));
    }

    #[test]
    fn empty_input_is_one_column_program() {
        let Case::Fused(p) = decode(&[]) else {
            panic!("an empty input decodes to a fused program");
        };
        assert!(p.check().is_ok(), "{p:?}");
        exercise(&[]);
    }

    #[test]
    fn cast_to_a_decimal_scale_beyond_64_bits_generates() {
        // The committed crasher (fuzz/regressions/codegen/): 10^20 was
        // computed in i64.
        let bytes = [1, 0, 0, 0, 0, 7, 37, 20, 2, 0, 0, 0, 0, 0];
        let want = Program {
            inputs: vec![Ty::I32],
            outputs: vec![Expr::cast(
                Expr::column(0, Ty::I32),
                Ty::Decimal {
                    precision: 38,
                    scale: 20,
                },
            )],
            ..Program::default()
        };
        assert_eq!(decode(&bytes), Case::Fused(want));
        let generated = modules(&decode(&bytes));
        assert_eq!(generated.len(), 2, "WGSL and CUDA");
        exercise(&bytes);
    }

    #[test]
    fn validation_rejects_bad_wgsl() {
        assert!(validate_wgsl("fn f() -> u32 { return 1.5; }").is_err());
        assert!(validate_wgsl("fn f() -> u32 { return 1u; }").is_ok());
    }
}
