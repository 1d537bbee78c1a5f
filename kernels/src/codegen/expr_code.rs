//! Expression code for fused kernels: every IR expression node becomes
//! straight-line statements computing a value and a validity flag, so NULL
//! handling is explicit, in either dialect ([`Dialect`] supplies the
//! spelling). Overflow, a division by zero and a value the device cannot
//! represent call `raise()`: the batch goes to the CPU.

use std::fmt::Write as _;

use super::dialect::Dialect;
use super::ir::{BinOp, Expr, Ty, UnOp, Value};

/// Writes expressions as statements into `body`, naming each value and
/// validity flag with a fresh number.
pub(super) struct Gen {
    d: Dialect,
    pub(super) body: String,
    next: usize,
}

fn pow10(e: i32) -> i64 {
    10i64.pow(e as u32)
}

impl Gen {
    pub(super) fn new(d: Dialect) -> Gen {
        Gen {
            d,
            body: String::new(),
            next: 0,
        }
    }

    fn fresh(&mut self) -> usize {
        self.next += 1;
        self.next
    }

    fn line(&mut self, s: &str) {
        self.body.push_str(s);
    }

    /// `if (cond) { raise(); }`: the batch needs the CPU.
    fn raise_if(&mut self, cond: &str) {
        let _ = writeln!(self.body, "    if ({cond}) {{ raise(); }}");
    }

    /// Emits statements computing `e`; returns the names of its value and
    /// validity.
    pub(super) fn expr(&mut self, e: &Expr) -> Result<(String, String), String> {
        let d = self.d;
        let id = self.fresh();
        let (v, n) = (format!("v{id}"), format!("n{id}"));
        let ty = e.ty();
        match e {
            Expr::Column { index, ty: t } => {
                let voff = format!("params[{}]", self.d.index(2 + 2 * index));
                let noff = format!("params[{}]", self.d.index(3 + 2 * index));
                let word = format!("data[{voff} + row]");
                let load = match t {
                    Ty::Bool => format!("{word} != {}", d.zero(Ty::U32)),
                    _ if t.width() == 4 => d.of_bits32(*t, &word),
                    _ => d.of_bits64(*t, &format!("ld64({voff}, row)")),
                };
                self.line(&d.let_(&v, ty, &load));
                self.line(&d.let_(&n, Ty::Bool, &format!("is_valid({noff}, row)")));
            }
            Expr::Literal { value, ty: t } => {
                self.line(&d.let_(&v, ty, &d.literal(*value, *t)));
                self.line(&d.let_(&n, Ty::Bool, &(*value != Value::Null).to_string()));
            }
            Expr::Unary { op, arg } => {
                let at = arg.ty();
                let (a, an) = self.expr(arg)?;
                let value = match op {
                    UnOp::Not => format!("!{a}"),
                    UnOp::IsNull => format!("!{an}"),
                    UnOp::IsNotNull => an.clone(),
                    UnOp::Neg if at.is_float() => format!("(-{a})"),
                    UnOp::Neg => d.wrapping("-", at, &d.zero(at), &a),
                    UnOp::Abs if at.is_float() => d.math("abs", at, &[&a]),
                    UnOp::Abs => {
                        let min = d.literal(
                            Value::Int(if at == Ty::I32 {
                                i64::from(i32::MIN)
                            } else {
                                i64::MIN
                            }),
                            at,
                        );
                        // Arrow's abs of the most negative integer overflows.
                        self.raise_if(&format!("{an} && {a} == {min}"));
                        let negated = d.wrapping("-", at, &d.zero(at), &a);
                        d.select(&a, &negated, &format!("{a} < {}", d.zero(at)))
                    }
                    UnOp::Floor => d.math("floor", at, &[&a]),
                    UnOp::Ceil => d.math("ceil", at, &[&a]),
                    UnOp::Round => {
                        // Half away from zero, as Rust's round: the
                        // fraction `a - trunc(a)` is exact.
                        let t = format!("t{id}");
                        self.line(&d.let_(&t, at, &d.math("trunc", at, &[&a])));
                        let half = d.literal(Value::Float(0.5), at);
                        let one = d.literal(Value::Float(1.0), at);
                        let away = d.select(
                            &format!("{t} + {one}"),
                            &format!("{t} - {one}"),
                            &format!("{a} < {}", d.zero(at)),
                        );
                        d.select(
                            &t,
                            &away,
                            &format!("{} >= {half}", d.math("abs", at, &[&format!("{a} - {t}")])),
                        )
                    }
                    UnOp::Sqrt => {
                        // Vulkan's sqrt of a negative number is undefined;
                        // the CPU's (and CUDA's) is NaN.
                        if d == Dialect::Wgsl {
                            self.raise_if(&format!("{an} && !({a} >= {})", d.zero(at)));
                        }
                        d.math("sqrt", at, &[&a])
                    }
                    UnOp::Exp | UnOp::Ln => {
                        let (name, vulkan) = if *op == UnOp::Exp {
                            ("exp", "exp")
                        } else {
                            ("log", "log")
                        };
                        if at == Ty::F64 && d == Dialect::Wgsl {
                            return Err(format!(
                                "{} of f64 (Vulkan has no 64-bit {vulkan})",
                                if *op == UnOp::Exp { "exp" } else { "ln" }
                            ));
                        }
                        let guard = if *op == UnOp::Ln {
                            format!("!({a} > {})", d.zero(at))
                        } else {
                            format!(
                                "!({} < {})",
                                d.math("abs", at, &[&a]),
                                d.literal(Value::Float(80.0), at)
                            )
                        };
                        // Vulkan leaves log of x ≤ 0 undefined and exp's
                        // error grows with |x|; CUDA follows IEEE as the CPU.
                        if d == Dialect::Wgsl {
                            self.raise_if(&format!("{an} && {guard}"));
                        }
                        d.math(name, at, &[&a])
                    }
                    UnOp::Year | UnOp::Month | UnOp::Day => self.civil(*op, &a, &an, id),
                };
                let valid = match op {
                    UnOp::IsNull | UnOp::IsNotNull => "true".to_string(),
                    _ => an,
                };
                self.line(&d.let_(&v, ty, &value));
                self.line(&d.let_(&n, Ty::Bool, &valid));
            }
            Expr::Binary { op, left, right } => {
                let lt = left.ty();
                let (l, ln) = self.expr(left)?;
                let (r, rn) = self.expr(right)?;
                let both = format!("({ln} && {rn})");
                match op {
                    BinOp::And => {
                        let valid = format!("{both} || ({ln} && !{l}) || ({rn} && !{r})");
                        self.line(&d.let_(&n, Ty::Bool, &valid));
                        self.line(&d.let_(&v, Ty::Bool, &format!("{l} && {r}")));
                    }
                    BinOp::Or => {
                        let valid = format!("{both} || ({ln} && {l}) || ({rn} && {r})");
                        self.line(&d.let_(&n, Ty::Bool, &valid));
                        self.line(&d.let_(
                            &v,
                            Ty::Bool,
                            &format!("({ln} && {l}) || ({rn} && {r})"),
                        ));
                    }
                    op if op.is_comparison() => {
                        let sym = match op {
                            BinOp::Eq => "==",
                            BinOp::NotEq => "!=",
                            BinOp::Lt => "<",
                            BinOp::LtEq => "<=",
                            BinOp::Gt => ">",
                            _ => ">=",
                        };
                        let (a, b) = match lt {
                            Ty::F32 => (format!("key32({l})"), format!("key32({r})")),
                            Ty::F64 => (format!("key64({l})"), format!("key64({r})")),
                            Ty::Bool => {
                                let (zero, one) =
                                    (d.zero(Ty::U32), d.literal(Value::Int(1), Ty::U32));
                                (d.select(&zero, &one, &l), d.select(&zero, &one, &r))
                            }
                            _ => (l.clone(), r.clone()),
                        };
                        self.line(&d.let_(&v, Ty::Bool, &format!("{a} {sym} {b}")));
                        self.line(&d.let_(&n, Ty::Bool, &both));
                    }
                    _ => {
                        let value = self.arithmetic(*op, lt, &l, &r, &both, id)?;
                        self.line(&d.let_(&v, ty, &value));
                        self.line(&d.let_(&n, Ty::Bool, &both));
                    }
                }
            }
            Expr::Cast { arg, to } => {
                let from = arg.ty();
                let (a, an) = self.expr(arg)?;
                let value = match (from, *to) {
                    (f, t) if f == t => a.clone(),
                    (_, Ty::Decimal { precision, scale }) => {
                        let up = match from {
                            Ty::Decimal { scale: s, .. } => i32::from(scale) - i32::from(s),
                            _ => i32::from(scale),
                        };
                        let wide = if from == Ty::I32 {
                            d.sext(&a)
                        } else {
                            a.clone()
                        };
                        self.scaled(&wide, up, Some(precision), &an, id)
                    }
                    (Ty::Decimal { scale, .. }, t) => {
                        // As Arrow: the value as f64 over 10^scale, exact for
                        // scale ≤ 22, then rounded to the target.
                        let q = format!(
                            "{} / {}",
                            d.convert(Ty::F64, &a),
                            d.f64(10f64.powi(i32::from(scale)))
                        );
                        if t == Ty::F64 { q } else { d.convert(t, &q) }
                    }
                    (Ty::I32, Ty::I64) => d.sext(&a),
                    (_, t) => d.convert(t, &a),
                };
                self.line(&d.let_(&v, ty, &value));
                self.line(&d.let_(&n, Ty::Bool, &an));
            }
            Expr::Case {
                branches,
                otherwise,
                ty: t,
            } => {
                let mut arms = Vec::new();
                for (when, then) in branches {
                    let (c, cn) = self.expr(when)?;
                    let (x, xn) = self.expr(then)?;
                    arms.push((format!("{cn} && {c}"), x, xn));
                }
                let (ev, en) = match otherwise {
                    Some(o) => self.expr(o)?,
                    None => (d.zero(*t), "false".to_string()),
                };
                self.line(&d.var(&v, ty, &ev));
                self.line(&d.var(&n, Ty::Bool, &en));
                // Later arms first, so the first true condition is assigned last.
                for (c, x, xn) in arms.iter().rev() {
                    let _ = writeln!(self.body, "    if ({c}) {{ {v} = {x}; {n} = {xn}; }}");
                }
            }
            Expr::Coalesce { args } => {
                let mut parts = Vec::new();
                for a in args {
                    parts.push(self.expr(a)?);
                }
                self.line(&d.var(&v, ty, &d.zero(ty)));
                self.line(&d.var(&n, Ty::Bool, "false"));
                for (x, xn) in parts.iter().rev() {
                    let _ = writeln!(self.body, "    if ({xn}) {{ {v} = {x}; {n} = true; }}");
                }
            }
            Expr::InList { arg, list, negated } => {
                let at = arg.ty();
                let (a, an) = self.expr(arg)?;
                let (found, nulls) = (format!("f{id}"), format!("u{id}"));
                let mut items = Vec::new();
                for item in list {
                    items.push(self.expr(item)?);
                }
                self.line(&d.var(&found, Ty::Bool, "false"));
                self.line(&d.var(&nulls, Ty::Bool, "false"));
                for (x, xn) in &items {
                    let eq = match at {
                        Ty::F32 => format!("key32({a}) == key32({x})"),
                        Ty::F64 => format!("key64({a}) == key64({x})"),
                        _ => format!("{a} == {x}"),
                    };
                    let _ = writeln!(self.body, "    {found} = {found} || ({xn} && {eq});");
                    let _ = writeln!(self.body, "    {nulls} = {nulls} || !{xn};");
                }
                let not = if *negated { "!" } else { "" };
                self.line(&d.let_(&v, Ty::Bool, &format!("{not}{found}")));
                self.line(&d.let_(&n, Ty::Bool, &format!("{an} && ({found} || !{nulls})")));
            }
        }
        Ok((v, n))
    }

    /// Year, month or day of `days` since 1970-01-01 (Howard Hinnant's
    /// civil_from_days, all in i32: dates beyond ±2·10⁹ days go to the CPU).
    fn civil(&mut self, op: UnOp, days: &str, valid: &str, id: usize) -> String {
        let d = self.d;
        let i = |v: i64| d.literal(Value::Int(v), Ty::I32);
        let name = |s: &str| format!("{s}{id}");
        self.raise_if(&format!(
            "{valid} && ({days} > {} || {days} < {})",
            i(2_000_000_000),
            i(-2_000_000_000)
        ));
        let z = name("cz");
        self.line(&d.let_(&z, Ty::I32, &format!("{days} + {}", i(719_468))));
        let era = name("ce");
        let neg = format!("{z} - {}", i(146_096));
        self.line(&d.let_(
            &era,
            Ty::I32,
            &format!(
                "({}) / {}",
                d.select(&neg, &z, &format!("{z} >= {}", i(0))),
                i(146_097)
            ),
        ));
        let doe = name("cd");
        self.line(&d.let_(&doe, Ty::I32, &format!("{z} - {era} * {}", i(146_097))));
        let yoe = name("cy");
        self.line(&d.let_(
            &yoe,
            Ty::I32,
            &format!(
                "({doe} - {doe} / {} + {doe} / {} - {doe} / {}) / {}",
                i(1460),
                i(36_524),
                i(146_096),
                i(365)
            ),
        ));
        let doy = name("cj");
        self.line(&d.let_(
            &doy,
            Ty::I32,
            &format!(
                "{doe} - ({} * {yoe} + {yoe} / {} - {yoe} / {})",
                i(365),
                i(4),
                i(100)
            ),
        ));
        let mp = name("cm");
        self.line(&d.let_(
            &mp,
            Ty::I32,
            &format!("({} * {doy} + {}) / {}", i(5), i(2), i(153)),
        ));
        let month = d.select(
            &format!("{mp} - {}", i(9)),
            &format!("{mp} + {}", i(3)),
            &format!("{mp} < {}", i(10)),
        );
        match op {
            UnOp::Month => month,
            UnOp::Day => format!(
                "{doy} - ({} * {mp} + {}) / {} + {}",
                i(153),
                i(2),
                i(5),
                i(1)
            ),
            _ => {
                let m = name("cn");
                self.line(&d.let_(&m, Ty::I32, &month));
                format!(
                    "{yoe} + {era} * {} + {}",
                    i(400),
                    d.select(&i(0), &i(1), &format!("{m} <= {}", i(2)))
                )
            }
        }
    }

    /// `a · 10^up` for a decimal or integer in `i64`, raising the fallback
    /// flag when the result leaves `i64` or `precision` digits.
    fn scaled(
        &mut self,
        a: &str,
        up: i32,
        precision: Option<u8>,
        valid: &str,
        id: usize,
    ) -> String {
        let d = self.d;
        let s = format!("s{id}");
        if up == 0 {
            self.line(&d.let_(&s, Ty::I64, a));
        } else if up > 18 {
            // 10^up leaves i64 (a cast to a scale above 18): every value but
            // 0 overflows.
            let zero = d.literal(Value::Int(0), Ty::I64);
            self.raise_if(&format!("{valid} && {a} != {zero}"));
            self.line(&d.let_(&s, Ty::I64, &zero));
        } else {
            let m = pow10(up);
            let magnitude = d.math("abs", Ty::F64, &[&d.convert(Ty::F64, a)]);
            self.raise_if(&format!(
                "{valid} && {magnitude} * {} >= {}",
                d.f64(m as f64),
                d.f64(9.0e18)
            ));
            let product = d.wrapping("*", Ty::I64, a, &d.literal(Value::Int(m), Ty::I64));
            self.line(&d.let_(&s, Ty::I64, &product));
        }
        if let Some(p) = precision.filter(|p| *p <= 18) {
            let bound = d.literal(Value::Int(pow10(i32::from(p))), Ty::I64);
            self.raise_if(&format!("{valid} && ({s} >= {bound} || {s} <= -{bound})"));
        }
        s
    }

    fn arithmetic(
        &mut self,
        op: BinOp,
        lt: Ty,
        l: &str,
        r: &str,
        both: &str,
        id: usize,
    ) -> Result<String, String> {
        let d = self.d;
        let sym = match op {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            _ => "",
        };
        Ok(match (op, lt) {
            (BinOp::Pow, t) => {
                if t == Ty::F64 && d == Dialect::Wgsl {
                    return Err("power of f64 (Vulkan has no 64-bit pow)".into());
                }
                // Vulkan's pow is undefined for x ≤ 0.
                if d == Dialect::Wgsl {
                    self.raise_if(&format!("{both} && !({l} > {})", d.zero(t)));
                }
                d.math("pow", t, &[l, r])
            }
            (BinOp::Mod, t) if t.is_float() => {
                if d == Dialect::Cuda {
                    d.math("fmod", t, &[l, r])
                } else {
                    return Err(format!("% of {t} (WGSL's float remainder is not fmod)"));
                }
            }
            (BinOp::Div | BinOp::Mod, t) if t.is_integer() => {
                let z = d.zero(t);
                let mut bad = format!("{r} == {z}");
                if t.is_signed() {
                    let min = d.literal(
                        Value::Int(if t == Ty::I32 {
                            i64::from(i32::MIN)
                        } else {
                            i64::MIN
                        }),
                        t,
                    );
                    let minus_one = d.literal(Value::Int(-1), t);
                    bad = format!("{bad} || ({l} == {min} && {r} == {minus_one})");
                }
                let safe = format!("d{id}");
                let one = d.literal(Value::Int(1), t);
                self.raise_if(&format!("{both} && ({bad})"));
                self.line(&d.let_(&safe, t, &d.select(r, &one, &bad)));
                format!("({l} {sym} {safe})")
            }
            (BinOp::Div | BinOp::Mod, Ty::Decimal { .. }) => {
                return Err("decimal division".into());
            }
            (BinOp::Add | BinOp::Sub, Ty::Decimal { .. }) => {
                let x = format!("x{id}");
                self.line(&d.let_(&x, Ty::I64, &d.wrapping(sym, Ty::I64, l, r)));
                // Signed overflow: the result's sign differs from what both
                // operands (for -, the left and the negated right) agree on.
                let rr = if op == BinOp::Sub {
                    d.wrapping("-", Ty::I64, &d.zero(Ty::I64), r)
                } else {
                    r.to_string()
                };
                self.raise_if(&format!(
                    "{both} && ((({l} ^ {x}) & ({rr} ^ {x})) < {})",
                    d.zero(Ty::I64)
                ));
                x
            }
            (BinOp::Mul, Ty::Decimal { .. }) => {
                let product = format!(
                    "{} * {}",
                    d.math("abs", Ty::F64, &[&d.convert(Ty::F64, l)]),
                    d.math("abs", Ty::F64, &[&d.convert(Ty::F64, r)])
                );
                self.raise_if(&format!("{both} && {product} >= {}", d.f64(9.0e18)));
                d.wrapping("*", Ty::I64, l, r)
            }
            (_, t) if t.is_float() => format!("({l} {sym} {r})"),
            (_, t) => d.wrapping(sym, t, l, r),
        })
    }
}
