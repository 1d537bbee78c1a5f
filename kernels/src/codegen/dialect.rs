//! How WGSL and CUDA C spell what a fused kernel needs: types, literals,
//! casts, bit reinterpretation, wrapping arithmetic and math functions. The
//! kernel's logic is written once (`emit.rs`); only these spellings differ.

use super::ir::{Ty, Value};

/// The language a kernel is generated in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Wgsl,
    Cuda,
}

impl Dialect {
    pub fn ty(self, t: Ty) -> &'static str {
        match (self, t) {
            (Dialect::Wgsl, Ty::Bool) => "bool",
            (Dialect::Wgsl, Ty::I32) => "i32",
            (Dialect::Wgsl, Ty::U32) => "u32",
            (Dialect::Wgsl, Ty::F32) => "f32",
            (Dialect::Wgsl, Ty::I64 | Ty::Decimal { .. }) => "i64",
            (Dialect::Wgsl, Ty::U64) => "u64",
            (Dialect::Wgsl, Ty::F64) => "f64",
            (Dialect::Cuda, Ty::Bool) => "bool",
            (Dialect::Cuda, Ty::I32) => "int",
            (Dialect::Cuda, Ty::U32) => "unsigned int",
            (Dialect::Cuda, Ty::F32) => "float",
            (Dialect::Cuda, Ty::I64 | Ty::Decimal { .. }) => "long long",
            (Dialect::Cuda, Ty::U64) => "unsigned long long",
            (Dialect::Cuda, Ty::F64) => "double",
        }
    }

    /// A `u32` index literal (`params[..]`, array subscripts).
    pub(crate) fn index(self, i: usize) -> String {
        match self {
            Dialect::Wgsl => format!("{i}u"),
            Dialect::Cuda => format!("{i}"),
        }
    }

    /// An immutable local.
    pub(crate) fn let_(self, name: &str, t: Ty, value: &str) -> String {
        match self {
            Dialect::Wgsl => format!("    let {name}: {} = {value};\n", self.ty(t)),
            Dialect::Cuda => format!("    const {} {name} = {value};\n", self.ty(t)),
        }
    }

    /// A mutable local.
    pub(crate) fn var(self, name: &str, t: Ty, value: &str) -> String {
        match self {
            Dialect::Wgsl => format!("    var {name}: {} = {value};\n", self.ty(t)),
            Dialect::Cuda => format!("    {} {name} = {value};\n", self.ty(t)),
        }
    }

    /// `if c { t } else { f }` as an expression.
    pub fn select(self, f: &str, t: &str, c: &str) -> String {
        match self {
            Dialect::Wgsl => format!("select({f}, {t}, {c})"),
            Dialect::Cuda => format!("(({c}) ? ({t}) : ({f}))"),
        }
    }

    /// A value conversion (numeric cast) to `t`.
    pub(crate) fn convert(self, t: Ty, x: &str) -> String {
        match self {
            Dialect::Wgsl => format!("{}({x})", self.ty(t)),
            Dialect::Cuda => format!("(({})({x}))", self.ty(t)),
        }
    }

    /// An `i32` widened to `i64`.
    pub(crate) fn sext(self, x: &str) -> String {
        match self {
            // Signed comparisons of `i64(i32)` came out wrong on lavapipe
            // (CAST(-943 AS BIGINT) < 0 was false while the value stored
            // right); shifting the sign in by hand compares correctly.
            Dialect::Wgsl => format!("((i64({x}) << 32u) >> 32u)"),
            Dialect::Cuda => format!("((long long)({x}))"),
        }
    }

    /// The value of type `t` whose bits are the 32-bit word `w`.
    pub(crate) fn of_bits32(self, t: Ty, w: &str) -> String {
        match (self, t) {
            (_, Ty::U32) => w.to_string(),
            (Dialect::Wgsl, _) => format!("bitcast<{}>({w})", self.ty(t)),
            (Dialect::Cuda, Ty::F32) => format!("__uint_as_float({w})"),
            (Dialect::Cuda, _) => format!("((int)({w}))"),
        }
    }

    /// The value of type `t` whose bits are the 64-bit word `w`.
    pub(crate) fn of_bits64(self, t: Ty, w: &str) -> String {
        match (self, t) {
            (_, Ty::U64) => w.to_string(),
            (Dialect::Wgsl, _) => format!("bitcast<{}>({w})", self.ty(t)),
            (Dialect::Cuda, Ty::F64) => format!("__longlong_as_double((long long)({w}))"),
            (Dialect::Cuda, _) => format!("((long long)({w}))"),
        }
    }

    /// The bits of `x` (of type `t`) as a 32-bit word.
    pub fn to_bits32(self, t: Ty, x: &str) -> String {
        match (self, t) {
            (_, Ty::U32) => x.to_string(),
            (Dialect::Wgsl, _) => format!("bitcast<u32>({x})"),
            (Dialect::Cuda, Ty::F32) => format!("__float_as_uint({x})"),
            (Dialect::Cuda, _) => format!("((unsigned int)({x}))"),
        }
    }

    /// The bits of `x` (of type `t`) as a 64-bit word.
    pub fn to_bits64(self, t: Ty, x: &str) -> String {
        match (self, t) {
            (_, Ty::U64) => x.to_string(),
            (Dialect::Wgsl, _) => format!("bitcast<u64>({x})"),
            (Dialect::Cuda, Ty::F64) => {
                format!("((unsigned long long)__double_as_longlong({x}))")
            }
            (Dialect::Cuda, _) => format!("((unsigned long long)({x}))"),
        }
    }

    pub(crate) fn u32_lit(self, bits: u32) -> String {
        format!("{bits:#x}u")
    }

    pub(crate) fn u64_lit(self, bits: u64) -> String {
        match self {
            Dialect::Wgsl => format!(
                "((u64({:#x}u) << 32u) | u64({:#x}u))",
                bits >> 32,
                bits & 0xffff_ffff
            ),
            Dialect::Cuda => format!("{bits:#x}ULL"),
        }
    }

    /// A constant of type `t`, exact to the bit.
    pub fn literal(self, value: Value, t: Ty) -> String {
        let as_i64 = match value {
            Value::Int(i) => i,
            Value::UInt(u) => u as i64,
            Value::Bool(b) => i64::from(b),
            Value::Float(f) => f as i64,
            Value::Null => 0,
        };
        let float = if let Value::Float(f) = value { f } else { 0.0 };
        match t {
            Ty::Bool => (as_i64 != 0).to_string(),
            Ty::I32 | Ty::U32 => self.of_bits32(t, &self.u32_lit(as_i64 as u32)),
            Ty::F32 => self.of_bits32(t, &self.u32_lit((float as f32).to_bits())),
            // naga folds `bitcast<i64>(<u64 constant>)` into a constant that
            // compares as unsigned (found by a test: CAST(-943 AS BIGINT) < 0
            // was false), so WGSL gets native 64-bit literals.
            Ty::I64 | Ty::Decimal { .. } if self == Dialect::Wgsl => {
                if as_i64 == i64::MIN {
                    format!("({}li - 1li)", i64::MIN + 1)
                } else {
                    format!("{as_i64}li")
                }
            }
            Ty::U64 if self == Dialect::Wgsl => format!("{}lu", as_i64 as u64),
            Ty::I64 | Ty::U64 | Ty::Decimal { .. } => {
                self.of_bits64(t, &self.u64_lit(as_i64 as u64))
            }
            Ty::F64 => self.of_bits64(t, &self.u64_lit(float.to_bits())),
        }
    }

    pub(crate) fn zero(self, t: Ty) -> String {
        self.literal(Value::Int(0), t)
    }

    pub(crate) fn f64(self, x: f64) -> String {
        self.literal(Value::Float(x), Ty::F64)
    }

    /// `l op r` for `+ - *` on type `t`, wrapping on integer overflow as
    /// Arrow's kernels do (C's signed overflow is undefined, so CUDA
    /// computes in the unsigned type).
    pub(crate) fn wrapping(self, sym: &str, t: Ty, l: &str, r: &str) -> String {
        match (self, t) {
            (Dialect::Cuda, Ty::I32) => {
                format!("((int)((unsigned int)({l}) {sym} (unsigned int)({r})))")
            }
            (Dialect::Cuda, Ty::I64 | Ty::Decimal { .. }) => {
                format!("((long long)((unsigned long long)({l}) {sym} (unsigned long long)({r})))")
            }
            _ => format!("({l} {sym} {r})"),
        }
    }

    /// `x` (of type `t`) as a `u64` whose unsigned order is the SQL order of
    /// the values (floats in IEEE totalOrder, as Arrow sorts them).
    pub(crate) fn order_key(self, t: Ty, x: &str) -> String {
        let sign = self.u64_lit(1 << 63);
        let flip = |signed_i64: String| match self {
            Dialect::Wgsl => format!("(bitcast<u64>({signed_i64}) ^ {sign})"),
            Dialect::Cuda => format!("(((unsigned long long)({signed_i64})) ^ {sign})"),
        };
        match t {
            Ty::Bool => self.select(&self.u64_lit(0), &self.u64_lit(1), x),
            Ty::U32 => self.convert(Ty::U64, x),
            Ty::U64 => x.to_string(),
            Ty::I32 => flip(self.sext(x)),
            Ty::I64 | Ty::Decimal { .. } => flip(x.to_string()),
            Ty::F32 => flip(self.sext(&format!("key32({x})"))),
            Ty::F64 => flip(format!("key64({x})")),
        }
    }

    /// A math function of a float (`f32` or `f64`).
    pub(crate) fn math(self, name: &str, t: Ty, args: &[&str]) -> String {
        let name = match (self, t, name) {
            (Dialect::Cuda, Ty::F32, "abs") => "fabsf".to_string(),
            (Dialect::Cuda, Ty::F64, "abs") => "fabs".to_string(),
            (Dialect::Cuda, Ty::F32, n) => format!("{n}f"),
            // The WGSL prelude's own, in f64 (see `trunc64` there).
            (Dialect::Wgsl, Ty::F64, n @ ("trunc" | "floor" | "ceil")) => format!("{n}64"),
            (_, _, n) => n.to_string(),
        };
        format!("{name}({})", args.join(", "))
    }
}
