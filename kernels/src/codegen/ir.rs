//! The expression IR that fused relational kernels are generated from.
//!
//! A [`Program`] is what one GPU stage computes for every row of a batch: an
//! optional predicate (the conjunction of the stage's filters) and the output
//! expressions (its projection), all over the stage's input columns. The
//! planner translates DataFusion's physical expressions into this IR; the code
//! generators turn it into one WGSL or CUDA C kernel, cached by the program's
//! hash, so a chain of N expressions costs one pass over memory.
//!
//! Semantics are SQL's and must equal DataFusion's CPU evaluation: NULL
//! propagates, AND/OR/NOT use three-valued logic, integer arithmetic wraps,
//! float comparisons follow IEEE 754 totalOrder (as Arrow's kernels do).
//! Where the device cannot reproduce the CPU's answer cheaply — an integer
//! division by zero, a decimal overflow — the kernel raises a flag and the
//! caller evaluates that batch on the CPU instead.

use std::fmt;
use std::hash::{Hash, Hasher};

/// The type of a value on the device. Narrower integers and dates are widened
/// to 32 bits on upload; decimals travel as scaled 64-bit integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ty {
    Bool,
    I32,
    I64,
    U32,
    U64,
    F32,
    F64,
    /// A decimal of at most `precision` digits, `scale` of them after the
    /// point, held as an `i64` count of `10^-scale`.
    Decimal {
        precision: u8,
        scale: i8,
    },
}

impl Ty {
    /// Bytes per value in the device layout (booleans take a 32-bit word).
    pub fn width(self) -> usize {
        match self {
            Ty::Bool | Ty::I32 | Ty::U32 | Ty::F32 => 4,
            Ty::I64 | Ty::U64 | Ty::F64 | Ty::Decimal { .. } => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::F32 | Ty::F64)
    }

    pub fn is_integer(self) -> bool {
        matches!(self, Ty::I32 | Ty::I64 | Ty::U32 | Ty::U64)
    }

    pub fn is_signed(self) -> bool {
        matches!(
            self,
            Ty::I32 | Ty::I64 | Ty::F32 | Ty::F64 | Ty::Decimal { .. }
        )
    }

    pub fn is_numeric(self) -> bool {
        self != Ty::Bool
    }

    /// Whether values of this type need 64-bit shader arithmetic.
    pub fn is_64bit(self) -> bool {
        self.width() == 8
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Bool => f.write_str("bool"),
            Ty::I32 => f.write_str("i32"),
            Ty::I64 => f.write_str("i64"),
            Ty::U32 => f.write_str("u32"),
            Ty::U64 => f.write_str("u64"),
            Ty::F32 => f.write_str("f32"),
            Ty::F64 => f.write_str("f64"),
            Ty::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
        }
    }
}

/// A constant. Integers of every width (and scaled decimals) are held as
/// `i64`, `u64` beyond `i64::MAX`, floats as `f64` (an `f32` constant is
/// exactly representable).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
    /// `power(a, b)` on floats.
    Pow,
}

impl BinOp {
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq
        )
    }

    pub fn is_arithmetic(self) -> bool {
        matches!(
            self,
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod | BinOp::Pow
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Not,
    IsNull,
    IsNotNull,
    Abs,
    Floor,
    Ceil,
    /// Round half away from zero to an integer, as Rust's `f64::round`.
    Round,
    Sqrt,
    Exp,
    Ln,
    /// The calendar year, month (1–12) or day of month (1–31) of a date
    /// held as days since 1970-01-01 (proleptic Gregorian, as Arrow).
    Year,
    Month,
    Day,
}

impl UnOp {
    /// The operators on floats alone (a float in, the same float type out).
    pub const FLOAT_MATH: [UnOp; 6] = [
        UnOp::Floor,
        UnOp::Ceil,
        UnOp::Round,
        UnOp::Sqrt,
        UnOp::Exp,
        UnOp::Ln,
    ];
}

/// One node of an expression over the stage's input columns.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Input column `index` of the stage's input, of type `ty`.
    Column {
        index: usize,
        ty: Ty,
    },
    Literal {
        value: Value,
        ty: Ty,
    },
    Unary {
        op: UnOp,
        arg: Box<Expr>,
    },
    /// Operands have the same type, except decimal `Mul` (scales add) and
    /// `Pow`; the planner inserts the casts DataFusion's coercion implies.
    Binary {
        op: BinOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Cast {
        arg: Box<Expr>,
        to: Ty,
    },
    /// `CASE WHEN c1 THEN v1 ... ELSE e END`; a missing ELSE is NULL.
    Case {
        branches: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
        ty: Ty,
    },
    /// The first non-NULL argument.
    Coalesce {
        args: Vec<Expr>,
    },
    /// `arg [NOT] IN (list)` with SQL's NULL rules.
    InList {
        arg: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
}

impl Expr {
    pub fn column(index: usize, ty: Ty) -> Expr {
        Expr::Column { index, ty }
    }

    pub fn lit(value: Value, ty: Ty) -> Expr {
        Expr::Literal { value, ty }
    }

    pub fn binary(op: BinOp, left: Expr, right: Expr) -> Expr {
        Expr::Binary {
            op,
            left: Box::new(left),
            right: Box::new(right),
        }
    }

    pub fn unary(op: UnOp, arg: Expr) -> Expr {
        Expr::Unary {
            op,
            arg: Box::new(arg),
        }
    }

    pub fn cast(arg: Expr, to: Ty) -> Expr {
        Expr::Cast {
            arg: Box::new(arg),
            to,
        }
    }

    /// The result type; [`Expr::check`] has verified it is well formed.
    pub fn ty(&self) -> Ty {
        match self {
            Expr::Column { ty, .. } | Expr::Literal { ty, .. } | Expr::Case { ty, .. } => *ty,
            Expr::Cast { to, .. } => *to,
            Expr::Unary { op, arg } => match op {
                UnOp::Not | UnOp::IsNull | UnOp::IsNotNull => Ty::Bool,
                _ => arg.ty(),
            },
            Expr::Binary { op, left, right } => {
                if op.is_comparison() || matches!(op, BinOp::And | BinOp::Or) {
                    Ty::Bool
                } else if let (
                    BinOp::Mul,
                    Ty::Decimal {
                        precision: p1,
                        scale: s1,
                    },
                    Ty::Decimal {
                        precision: p2,
                        scale: s2,
                    },
                ) = (op, left.ty(), right.ty())
                {
                    Ty::Decimal {
                        precision: (p1 + p2 + 1).min(38),
                        scale: s1 + s2,
                    }
                } else if let (
                    BinOp::Add | BinOp::Sub,
                    Ty::Decimal {
                        precision: p1,
                        scale,
                    },
                    Ty::Decimal { precision: p2, .. },
                ) = (op, left.ty(), right.ty())
                {
                    Ty::Decimal {
                        precision: (p1.max(p2) + 1).min(38),
                        scale,
                    }
                } else {
                    left.ty()
                }
            }
            Expr::Coalesce { args } => args.first().map_or(Ty::Bool, Expr::ty),
            Expr::InList { .. } => Ty::Bool,
        }
    }

    /// Checks the operand types of every node; the message names the first
    /// node that is not well formed.
    pub fn check(&self, inputs: &[Ty]) -> Result<Ty, String> {
        match self {
            Expr::Column { index, ty } => match inputs.get(*index) {
                Some(t) if t == ty => Ok(*ty),
                Some(t) => Err(format!("column {index} is {t}, expression says {ty}")),
                None => Err(format!(
                    "column {index} out of range ({} inputs)",
                    inputs.len()
                )),
            },
            Expr::Literal { value, ty } => {
                let ok = match value {
                    Value::Null => true,
                    Value::Bool(_) => *ty == Ty::Bool,
                    Value::Int(_) | Value::UInt(_) => {
                        ty.is_integer() || matches!(ty, Ty::Decimal { .. })
                    }
                    Value::Float(_) => ty.is_float(),
                };
                if ok {
                    Ok(*ty)
                } else {
                    Err(format!("literal {value:?} cannot have type {ty}"))
                }
            }
            Expr::Unary { op, arg } => {
                let t = arg.check(inputs)?;
                let ok = match op {
                    UnOp::Not => t == Ty::Bool,
                    UnOp::IsNull | UnOp::IsNotNull => true,
                    UnOp::Neg | UnOp::Abs => t.is_signed(),
                    UnOp::Floor | UnOp::Ceil | UnOp::Round | UnOp::Sqrt | UnOp::Exp | UnOp::Ln => {
                        t.is_float()
                    }
                    UnOp::Year | UnOp::Month | UnOp::Day => t == Ty::I32,
                };
                if ok {
                    Ok(self.ty())
                } else {
                    Err(format!("{op:?} of {t}"))
                }
            }
            Expr::Binary { op, left, right } => {
                let (l, r) = (left.check(inputs)?, right.check(inputs)?);
                let ok = match op {
                    BinOp::And | BinOp::Or => l == Ty::Bool && r == Ty::Bool,
                    BinOp::Mul => {
                        l.is_numeric()
                            && (l == r
                                || matches!((l, r), (Ty::Decimal { .. }, Ty::Decimal { .. })))
                    }
                    BinOp::Pow => l.is_float() && l == r,
                    BinOp::Div | BinOp::Mod => l == r && (l.is_integer() || l.is_float()),
                    BinOp::Add | BinOp::Sub => same_kind(l, r) && l.is_numeric(),
                    _ => same_kind(l, r),
                };
                if ok {
                    Ok(self.ty())
                } else {
                    Err(format!("{op:?} of {l} and {r}"))
                }
            }
            Expr::Cast { arg, to } => {
                let from = arg.check(inputs)?;
                if cast_supported(from, *to) {
                    Ok(*to)
                } else {
                    Err(format!("cast from {from} to {to}"))
                }
            }
            Expr::Case {
                branches,
                otherwise,
                ty,
            } => {
                if branches.is_empty() {
                    return Err("CASE without WHEN".into());
                }
                for (when, then) in branches {
                    if when.check(inputs)? != Ty::Bool {
                        return Err("CASE condition is not boolean".into());
                    }
                    let t = then.check(inputs)?;
                    if t != *ty {
                        return Err(format!("CASE branch is {t}, CASE is {ty}"));
                    }
                }
                if let Some(e) = otherwise {
                    let t = e.check(inputs)?;
                    if t != *ty {
                        return Err(format!("CASE ELSE is {t}, CASE is {ty}"));
                    }
                }
                Ok(*ty)
            }
            Expr::Coalesce { args } => {
                let Some(first) = args.first() else {
                    return Err("COALESCE without arguments".into());
                };
                let t = first.check(inputs)?;
                for a in &args[1..] {
                    let u = a.check(inputs)?;
                    if u != t {
                        return Err(format!("COALESCE of {t} and {u}"));
                    }
                }
                Ok(t)
            }
            Expr::InList { arg, list, .. } => {
                let t = arg.check(inputs)?;
                for e in list {
                    let u = e.check(inputs)?;
                    if u != t {
                        return Err(format!("IN list of {t} holds {u}"));
                    }
                }
                Ok(Ty::Bool)
            }
        }
    }

    /// Calls `f` on this node and every node below it.
    pub fn visit(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Column { .. } | Expr::Literal { .. } => {}
            Expr::Unary { arg, .. } | Expr::Cast { arg, .. } => arg.visit(f),
            Expr::Binary { left, right, .. } => {
                left.visit(f);
                right.visit(f);
            }
            Expr::Case {
                branches,
                otherwise,
                ..
            } => {
                for (w, t) in branches {
                    w.visit(f);
                    t.visit(f);
                }
                if let Some(e) = otherwise {
                    e.visit(f);
                }
            }
            Expr::Coalesce { args } => args.iter().for_each(|a| a.visit(f)),
            Expr::InList { arg, list, .. } => {
                arg.visit(f);
                list.iter().for_each(|a| a.visit(f));
            }
        }
    }
}

/// Operands a binary operator accepts together: the same type, or decimals of
/// one scale (precision only bounds the values).
fn same_kind(l: Ty, r: Ty) -> bool {
    match (l, r) {
        (Ty::Decimal { scale: a, .. }, Ty::Decimal { scale: b, .. }) => a == b,
        _ => l == r,
    }
}

/// The casts the generated kernels implement exactly as Arrow's `cast` does
/// (safe mode); anything else stays on the CPU.
pub fn cast_supported(from: Ty, to: Ty) -> bool {
    use Ty::*;
    if from == to {
        return true;
    }
    match (from, to) {
        // Widening integer casts and integer → float never lose a value
        // Arrow would keep (int → float rounds the same way on both).
        (I32, I64) | (U32, U64) | (U32, I64) => true,
        (I32 | I64 | U32 | U64, F32 | F64) => true,
        (F32, F64) => true,
        // Decimal scale-up and integer → decimal multiply by a power of ten;
        // a result wider than the target precision raises the fallback flag.
        (Decimal { scale: s1, .. }, Decimal { scale: s2, .. }) => s2 >= s1,
        (I32 | I64, Decimal { scale, .. }) => scale >= 0,
        // Arrow divides the value, as f64, by 10^scale.
        (Decimal { scale, .. }, F32 | F64) => (0..=22).contains(&scale),
        _ => false,
    }
}

/// How a reduction folds the kept rows' non-NULL values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Integers and decimals sum in 64 bits per workgroup (an overflow sends the
    /// batch to the CPU) and 128 bits across workgroups; floats in f64.
    Sum,
    Min,
    Max,
    /// Only the count of non-NULL values (every reduction has it).
    Count,
}

/// One aggregate over the kept rows: `op` of `arg`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduce {
    pub op: ReduceOp,
    pub arg: Expr,
}

impl Reduce {
    /// Whether the kernels fold `arg`'s type with `op` exactly as the CPU
    /// would (float min/max are left out: NaN ordering).
    pub fn supported(&self) -> Result<(), String> {
        let t = self.arg.ty();
        let ok = match self.op {
            ReduceOp::Count => true,
            ReduceOp::Sum => matches!(
                t,
                Ty::I32 | Ty::I64 | Ty::F32 | Ty::F64 | Ty::Decimal { .. }
            ),
            ReduceOp::Min | ReduceOp::Max => matches!(t, Ty::I32 | Ty::I64 | Ty::Decimal { .. }),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{:?} of {t}", self.op))
        }
    }

    /// Whether the fold runs in f64 (else in i64).
    pub fn is_float(&self) -> bool {
        self.op == ReduceOp::Sum && self.arg.ty().is_float()
    }
}

/// Everything one fused kernel computes per row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Program {
    /// Types of the stage's input columns, in order.
    pub inputs: Vec<Ty>,
    /// Rows where this is not TRUE (FALSE or NULL) are dropped.
    pub predicate: Option<Expr>,
    /// The output columns.
    pub outputs: Vec<Expr>,
    /// Aggregates over the kept rows. A program has outputs or reductions,
    /// not both: with reductions the kernel returns one partial result per
    /// block of rows instead of rows.
    pub reduce: Vec<Reduce>,
    /// With reductions: each kept row's group, a `u32` below the launch's
    /// group count (at most [`MAX_GROUPS`]); the reductions are folded per
    /// group. `None` folds all kept rows as one group.
    pub group: Option<Expr>,
    /// Of the rows the predicate keeps, keep in each block of
    /// [`super::wgsl::BLOCK`] rows only those that can be among the first
    /// `k` by `key`: the rows with fewer than `k` kept rows of their block
    /// strictly before them. The first `k` rows of the whole input by `key`
    /// (and every row tied with them on `key`) are always among those kept.
    pub topk: Option<BlockTopK>,
}

/// A per-block ORDER BY `key` LIMIT `k` filter (see [`Program::topk`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockTopK {
    pub key: Expr,
    pub descending: bool,
    pub nulls_first: bool,
    pub k: u32,
}

/// The largest `k` of a [`BlockTopK`]: beyond, most rows of a block would be
/// kept anyway.
pub const MAX_TOPK: u32 = 128;

/// The most groups one launch of a grouped program folds: each thread of a
/// 256-thread workgroup owns the running results of one group.
pub const MAX_GROUPS: usize = 256;

impl Program {
    /// Checks every expression against the input types.
    pub fn check(&self) -> Result<(), String> {
        if let Some(p) = &self.predicate
            && p.check(&self.inputs)? != Ty::Bool
        {
            return Err("predicate is not boolean".into());
        }
        for e in &self.outputs {
            e.check(&self.inputs)?;
        }
        if !self.reduce.is_empty() && !self.outputs.is_empty() {
            return Err("a program has outputs or reductions, not both".into());
        }
        for r in &self.reduce {
            r.arg.check(&self.inputs)?;
            r.supported()?;
        }
        if let Some(t) = &self.topk {
            t.key.check(&self.inputs)?;
            if !self.reduce.is_empty() {
                return Err("a program has a top-k or reductions, not both".into());
            }
            if t.k == 0 || t.k > MAX_TOPK {
                return Err(format!("top-{} (the device keeps 1 to {MAX_TOPK})", t.k));
            }
        }
        if let Some(g) = &self.group {
            if self.reduce.is_empty() {
                return Err("a group key without reductions".into());
            }
            if g.check(&self.inputs)? != Ty::U32 {
                return Err("the group key is not a u32 group index".into());
            }
        }
        Ok(())
    }

    /// Why the program has no atomic grouped fold in any dialect.
    pub fn atomic_fold_check(&self) -> Result<(), String> {
        if self.reduce.is_empty() || self.group.is_none() {
            return Err("an atomic fold is for grouped reductions".into());
        }
        Ok(())
    }

    /// Whether the program's atomic fold has a second pass (for the low
    /// words of minima and maxima).
    pub fn atomic_lo_pass(&self) -> bool {
        self.reduce
            .iter()
            .any(|r| matches!(r.op, ReduceOp::Min | ReduceOp::Max))
    }

    /// Whether the program needs 64-bit integer or float shader arithmetic.
    pub fn uses_64bit(&self) -> (bool, bool) {
        let (mut ints, mut floats) = (false, false);
        let mut see = |t: Ty| {
            if t == Ty::F64 {
                floats = true;
            } else if t.is_64bit() {
                ints = true;
            }
        };
        self.inputs.iter().for_each(|t| see(*t));
        let mut walk = |e: &Expr| e.visit(&mut |n| see(n.ty()));
        self.predicate.iter().for_each(&mut walk);
        self.outputs.iter().for_each(&mut walk);
        self.reduce.iter().for_each(|r| walk(&r.arg));
        self.group.iter().for_each(&mut walk);
        self.topk.iter().for_each(|t| walk(&t.key));
        // Sort keys compare as 64-bit words.
        if self.topk.is_some() {
            ints = true;
        }
        // Reductions fold in i64 or f64 whatever their argument's width.
        for r in &self.reduce {
            if r.is_float() {
                floats = true;
            } else {
                ints = true;
            }
        }
        (ints, floats)
    }

    /// Input columns some expression reads.
    pub fn used_inputs(&self) -> Vec<bool> {
        let mut used = vec![false; self.inputs.len()];
        let mut walk = |e: &Expr| {
            e.visit(&mut |n| {
                if let Expr::Column { index, .. } = n
                    && let Some(u) = used.get_mut(*index)
                {
                    *u = true;
                }
            })
        };
        self.predicate.iter().for_each(&mut walk);
        self.outputs.iter().for_each(&mut walk);
        self.reduce.iter().for_each(|r| walk(&r.arg));
        self.group.iter().for_each(&mut walk);
        self.topk.iter().for_each(|t| walk(&t.key));
        used
    }

    /// Whether the kernel drops rows (a predicate or a top-k), so the kept
    /// rows are compacted and come back with their input indices.
    pub fn compacts(&self) -> bool {
        self.predicate.is_some() || self.topk.is_some()
    }

    /// A stable hash of the program, the key of the compiled-kernel cache.
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a over the Debug rendering: stable across runs and processes
        // (std's SipHash keys are not), and programs are small.
        let text = format!("{self:?}");
        let mut h = Fnv::new();
        text.hash(&mut h);
        h.finish()
    }
}

/// FNV-1a: stable across runs and processes.
pub(super) struct Fnv(u64);

impl Fnv {
    pub(super) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
