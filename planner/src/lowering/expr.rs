//! DataFusion physical expressions → the fused-kernel IR
//! ([`kiln_kernels::codegen::ir`]), or the reason an expression stays on the
//! CPU.
//!
//! The IR is over the stage's *input* columns: a column reference to an
//! output of a lower operator of the same stage is replaced by that
//! operator's expression, which is how a chain fuses into one kernel.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, Literal,
    NegativeExpr, NotExpr, TryCastExpr,
};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use kiln_engine::exec::device_columns::device_ty;
use kiln_kernels::codegen::ir::cast_supported;
use kiln_kernels::codegen::{BinOp, Expr, Ty, UnOp, Value};

/// What a column of an operator's input is, in terms of the stage's input.
#[derive(Debug, Clone)]
pub enum Source {
    /// Stage input column `i`, unchanged.
    Input(usize),
    /// Computed by a lower operator of the stage.
    Computed(Expr),
}

/// Translates expressions bound to `schema` (an operator's input), whose
/// columns are `columns`; `inputs` is the stage's input schema.
pub struct Translator<'a> {
    pub schema: &'a Schema,
    pub columns: &'a [Source],
    pub inputs: &'a Schema,
}

type Outcome = Result<Expr, String>;

impl Translator<'_> {
    /// The IR of `e`, or why it stays on the CPU (naming the sub-expression
    /// that does not lower).
    pub fn translate(&self, e: &Arc<dyn PhysicalExpr>) -> Outcome {
        let ir = self.node(e)?;
        let dt = e
            .data_type(self.schema)
            .map_err(|err| format!("{e}: {err}"))?;
        let want = device_ty(&dt).ok_or_else(|| format!("{e} is {dt}"))?;
        if !same_kind(ir.ty(), want) {
            return Err(format!(
                "{e}: computes {} where DataFusion has {dt}",
                ir.ty()
            ));
        }
        Ok(ir)
    }

    pub fn input_column(&self, index: usize) -> Outcome {
        let field = self.inputs.field(index);
        match device_ty(field.data_type()) {
            Some(ty) => Ok(Expr::column(index, ty)),
            None => Err(format!("column {} is {}", field.name(), field.data_type())),
        }
    }

    fn data_type(&self, e: &Arc<dyn PhysicalExpr>) -> Result<DataType, String> {
        e.data_type(self.schema)
            .map_err(|err| format!("{e}: {err}"))
    }

    fn node(&self, e: &Arc<dyn PhysicalExpr>) -> Outcome {
        let any: &dyn PhysicalExpr = e.as_ref();
        if let Some(c) = any.downcast_ref::<Column>() {
            return match self.columns.get(c.index()) {
                Some(Source::Input(i)) => self.input_column(*i),
                Some(Source::Computed(x)) => Ok(x.clone()),
                None => Err(format!("column {c} out of range")),
            };
        }
        if let Some(l) = any.downcast_ref::<Literal>() {
            return literal(l.value())
                .ok_or_else(|| format!("literal {} of type {}", l.value(), l.value().data_type()));
        }
        if let Some(b) = any.downcast_ref::<BinaryExpr>() {
            return self.binary(e, b);
        }
        if let Some(n) = any.downcast_ref::<NotExpr>() {
            return Ok(Expr::unary(UnOp::Not, self.node(n.arg())?));
        }
        if let Some(n) = any.downcast_ref::<IsNullExpr>() {
            return Ok(Expr::unary(UnOp::IsNull, self.node(n.arg())?));
        }
        if let Some(n) = any.downcast_ref::<IsNotNullExpr>() {
            return Ok(Expr::unary(UnOp::IsNotNull, self.node(n.arg())?));
        }
        if let Some(n) = any.downcast_ref::<NegativeExpr>() {
            let arg = self.node(n.arg())?;
            if !arg.ty().is_signed() {
                return Err(format!("{e}: negation of {}", arg.ty()));
            }
            return Ok(Expr::unary(UnOp::Neg, arg));
        }
        if let Some(c) = any.downcast_ref::<CastExpr>() {
            return self.cast(e, c.expr(), c.cast_type());
        }
        if let Some(c) = any.downcast_ref::<TryCastExpr>() {
            return self.cast(e, c.expr(), c.cast_type());
        }
        if let Some(c) = any.downcast_ref::<CaseExpr>() {
            return self.case(e, c);
        }
        if let Some(l) = any.downcast_ref::<InListExpr>() {
            let arg = self.node(l.expr())?;
            let list = l
                .list()
                .iter()
                .map(|x| self.node(x).and_then(|x| coerce(x, arg.ty(), e)))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Expr::InList {
                arg: Box::new(arg),
                list,
                negated: l.negated(),
            });
        }
        if let Some(f) = any.downcast_ref::<ScalarFunctionExpr>() {
            return self.function(e, f);
        }
        Err(format!("{e} has no GPU kernel"))
    }

    fn binary(&self, e: &Arc<dyn PhysicalExpr>, b: &BinaryExpr) -> Outcome {
        let op = match b.op() {
            Operator::Plus => BinOp::Add,
            Operator::Minus => BinOp::Sub,
            Operator::Multiply => BinOp::Mul,
            Operator::Divide => BinOp::Div,
            Operator::Modulo => BinOp::Mod,
            Operator::Eq => BinOp::Eq,
            Operator::NotEq => BinOp::NotEq,
            Operator::Lt => BinOp::Lt,
            Operator::LtEq => BinOp::LtEq,
            Operator::Gt => BinOp::Gt,
            Operator::GtEq => BinOp::GtEq,
            Operator::And => BinOp::And,
            Operator::Or => BinOp::Or,
            other => return Err(format!("{e}: operator {other} has no GPU kernel")),
        };
        let (lt, rt) = (self.data_type(b.left())?, self.data_type(b.right())?);
        if op.is_arithmetic() && (lt != rt) && !(is_decimal(&lt) && is_decimal(&rt)) {
            return Err(format!("{e}: {op:?} of {lt} and {rt}"));
        }
        let (mut l, mut r) = (self.node(b.left())?, self.node(b.right())?);
        if let (Ty::Decimal { scale: s1, .. }, Ty::Decimal { scale: s2, .. }) = (l.ty(), r.ty()) {
            match op {
                BinOp::Mul => {
                    let out = self.data_type(e)?;
                    if !matches!(out, DataType::Decimal128(_, s) if s == s1 + s2) {
                        return Err(format!("{e}: decimal product of type {out}"));
                    }
                }
                BinOp::Div | BinOp::Mod => return Err(format!("{e}: decimal division")),
                _ => {
                    // Sums and comparisons work at one scale: the result's
                    // for arithmetic, the larger one for comparisons.
                    let scale = match self.data_type(e)? {
                        DataType::Decimal128(_, s) => s,
                        _ => s1.max(s2),
                    };
                    if scale < s1.max(s2) {
                        return Err(format!(
                            "{e}: decimal result scale {scale} below its operands'"
                        ));
                    }
                    l = rescale(l, scale);
                    r = rescale(r, scale);
                }
            }
        }
        if op.is_comparison()
            && l.ty() != r.ty()
            && !matches!((l.ty(), r.ty()), (Ty::Decimal { .. }, Ty::Decimal { .. }))
        {
            return Err(format!("{e}: comparison of {lt} and {rt}"));
        }
        let ir = Expr::binary(op, l, r);
        if op.is_arithmetic() {
            let out = self.data_type(e)?;
            if !device_ty(&out).is_some_and(|t| same_kind(t, ir.ty())) {
                return Err(format!("{e}: {op:?} of {lt} and {rt} gives {out}"));
            }
        }
        Ok(ir)
    }

    fn cast(
        &self,
        e: &Arc<dyn PhysicalExpr>,
        arg: &Arc<dyn PhysicalExpr>,
        to: &DataType,
    ) -> Outcome {
        let from = self.data_type(arg)?;
        let x = self.node(arg)?;
        if &from == to {
            return Ok(x);
        }
        let (Some(ft), Some(tt)) = (device_ty(&from), device_ty(to)) else {
            return Err(format!("{e}: cast from {from} to {to}"));
        };
        if !numeric_cast(&from, to) || !cast_supported(ft, tt) {
            return Err(format!("{e}: cast from {from} to {to}"));
        }
        Ok(if ft == tt { x } else { Expr::cast(x, tt) })
    }

    fn case(&self, e: &Arc<dyn PhysicalExpr>, c: &CaseExpr) -> Outcome {
        let dt = self.data_type(e)?;
        let ty = device_ty(&dt).ok_or_else(|| format!("{e} is {dt}"))?;
        let base = c.expr().map(|b| self.node(b)).transpose()?;
        let mut branches = Vec::new();
        for (when, then) in c.when_then_expr() {
            let mut cond = self.node(when)?;
            if let Some(base) = &base {
                cond = Expr::binary(BinOp::Eq, base.clone(), coerce(cond, base.ty(), e)?);
            }
            branches.push((cond, coerce(self.node(then)?, ty, e)?));
        }
        let otherwise = c
            .else_expr()
            .map(|x| self.node(x).and_then(|x| coerce(x, ty, e)))
            .transpose()?
            .map(Box::new);
        Ok(Expr::Case {
            branches,
            otherwise,
            ty,
        })
    }

    fn function(&self, e: &Arc<dyn PhysicalExpr>, f: &ScalarFunctionExpr) -> Outcome {
        let args = f.args();
        let unary = |op: UnOp| -> Outcome {
            match args {
                [a] => Ok(Expr::unary(op, self.node(a)?)),
                _ => Err(format!("{e}: {} arguments", args.len())),
            }
        };
        match f.name() {
            "abs" => unary(UnOp::Abs),
            "floor" => unary(UnOp::Floor),
            "ceil" => unary(UnOp::Ceil),
            "round" => unary(UnOp::Round),
            "sqrt" => unary(UnOp::Sqrt),
            "exp" => unary(UnOp::Exp),
            "ln" => unary(UnOp::Ln),
            "power" | "pow" => match args {
                [a, b] => Ok(Expr::binary(BinOp::Pow, self.node(a)?, self.node(b)?)),
                _ => Err(format!("{e}: {} arguments", args.len())),
            },
            "coalesce" => {
                let ty = device_ty(f.return_type())
                    .ok_or_else(|| format!("{e} is {}", f.return_type()))?;
                let args = args
                    .iter()
                    .map(|a| self.node(a).and_then(|x| coerce(x, ty, e)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Expr::Coalesce { args })
            }
            "date_part" => {
                let [part, arg] = args else {
                    return Err(format!("{e}: {} arguments", args.len()));
                };
                let part = part.downcast_ref::<Literal>().and_then(|l| {
                    l.value()
                        .try_as_str()
                        .flatten()
                        .map(str::to_ascii_lowercase)
                });
                let op = match part.as_deref() {
                    Some("year") => UnOp::Year,
                    Some("month") => UnOp::Month,
                    Some("day") => UnOp::Day,
                    other => return Err(format!("{e}: date part {other:?} has no GPU kernel")),
                };
                let dt = self.data_type(arg)?;
                if dt != DataType::Date32 {
                    return Err(format!("{e}: date_part of {dt}"));
                }
                Ok(Expr::unary(op, self.node(arg)?))
            }
            name => Err(format!("function {name} has no GPU kernel")),
        }
    }
}

fn is_decimal(dt: &DataType) -> bool {
    matches!(dt, DataType::Decimal128(_, _))
}

/// Whether a cast between two Arrow types is one the kernels reproduce:
/// among numeric types, never losing a value Arrow would keep.
fn numeric_cast(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let int_bits = |t: &DataType| match t {
        Int8 | UInt8 => Some(8),
        Int16 | UInt16 => Some(16),
        Int32 | UInt32 => Some(32),
        Int64 | UInt64 => Some(64),
        _ => None,
    };
    let signed = |t: &DataType| matches!(t, Int8 | Int16 | Int32 | Int64);
    match (from, to) {
        (f, t) if int_bits(f).is_some() && int_bits(t).is_some() => {
            let (fb, tb) = (int_bits(f).unwrap_or(0), int_bits(t).unwrap_or(0));
            match (signed(f), signed(t)) {
                (true, true) | (false, false) => tb >= fb,
                (false, true) => tb > fb,
                (true, false) => false,
            }
        }
        (f, Float32 | Float64) if int_bits(f).is_some() => true,
        (Float32, Float64) => true,
        (Decimal128(_, _), Decimal128(_, _)) => true,
        (Int8 | Int16 | Int32 | Int64, Decimal128(_, _)) => true,
        (Decimal128(_, _), Float32 | Float64) => true,
        _ => false,
    }
}

fn same_kind(a: Ty, b: Ty) -> bool {
    match (a, b) {
        (Ty::Decimal { scale: s1, .. }, Ty::Decimal { scale: s2, .. }) => s1 == s2,
        _ => a == b,
    }
}

/// `x` as decimal scale `scale` (a no-op at its own scale).
fn rescale(x: Expr, scale: i8) -> Expr {
    match x.ty() {
        Ty::Decimal {
            precision,
            scale: s,
        } if s != scale => Expr::cast(
            x,
            Ty::Decimal {
                precision: (i16::from(precision) + i16::from(scale - s)).min(38) as u8,
                scale,
            },
        ),
        _ => x,
    }
}

/// `x` as type `ty`, where DataFusion's coercion made them one kind.
fn coerce(x: Expr, ty: Ty, e: &Arc<dyn PhysicalExpr>) -> Outcome {
    let t = x.ty();
    if t == ty {
        return Ok(x);
    }
    match (t, ty) {
        (Ty::Decimal { scale: a, .. }, Ty::Decimal { scale: b, .. }) if b >= a => {
            Ok(Expr::cast(x, ty))
        }
        _ if matches!(
            &x,
            Expr::Literal {
                value: Value::Null,
                ..
            }
        ) =>
        {
            Ok(Expr::lit(Value::Null, ty))
        }
        _ => Err(format!("{e}: mixes {t} and {ty}")),
    }
}

/// The IR constant of a DataFusion scalar, if the kernels hold its type.
pub fn literal(v: &ScalarValue) -> Option<Expr> {
    let ty = device_ty(&v.data_type())?;
    if v.is_null() {
        return Some(Expr::lit(Value::Null, ty));
    }
    let value = match v {
        ScalarValue::Boolean(Some(b)) => Value::Bool(*b),
        ScalarValue::Int8(Some(x)) => Value::Int(i64::from(*x)),
        ScalarValue::Int16(Some(x)) => Value::Int(i64::from(*x)),
        ScalarValue::Int32(Some(x)) | ScalarValue::Date32(Some(x)) => Value::Int(i64::from(*x)),
        ScalarValue::Int64(Some(x))
        | ScalarValue::Date64(Some(x))
        | ScalarValue::TimestampSecond(Some(x), _)
        | ScalarValue::TimestampMillisecond(Some(x), _)
        | ScalarValue::TimestampMicrosecond(Some(x), _)
        | ScalarValue::TimestampNanosecond(Some(x), _) => Value::Int(*x),
        ScalarValue::UInt8(Some(x)) => Value::Int(i64::from(*x)),
        ScalarValue::UInt16(Some(x)) => Value::Int(i64::from(*x)),
        ScalarValue::UInt32(Some(x)) => Value::Int(i64::from(*x)),
        ScalarValue::UInt64(Some(x)) => Value::UInt(*x),
        ScalarValue::Float32(Some(x)) => Value::Float(f64::from(*x)),
        ScalarValue::Float64(Some(x)) => Value::Float(*x),
        ScalarValue::Decimal128(Some(x), _, _) => Value::Int(i64::try_from(*x).ok()?),
        _ => return None,
    };
    Some(Expr::lit(value, ty))
}
