//! As-of joins in SQL, as DuckDB and Snowflake spell them:
//!
//! - DuckDB: `FROM e ASOF JOIN f ON e.k = f.k AND e.ts >= f.ts` (events
//!   without a match dropped) and `ASOF LEFT JOIN` (kept, NULL features);
//! - Snowflake: `FROM e ASOF JOIN f MATCH_CONDITION (e.ts >= f.ts) ON e.k =
//!   f.k` (kept, as Snowflake's is an outer join).
//!
//! The SQL parser knows Snowflake's form only, so DuckDB's is first given
//! a `MATCH_CONDITION` naming the dialect ([`rewrite_text`]). Each as-of
//! join of the parsed statement then becomes a plain `[LEFT] JOIN` whose
//! `ON` holds `__kiln_asof(left_time, right_time, '>=')` and the keys
//! ([`rewrite_statement`]); the planner's analyzer rule
//! (`kiln_planner::asof_join::AsofJoinRule`) turns that join into the
//! sort-merge as-of join before anything else sees it.

use std::borrow::Cow;
use std::ops::ControlFlow;

use datafusion::sql::parser::{CopyToSource, Statement};
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    FunctionArguments, Ident, Join, JoinConstraint, JoinOperator, ObjectName, Query, SetExpr,
    TableFactor, TableWithJoins, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use kiln_planner::asof_join::{ASOF_MARKER, DUCKDB_INNER, DUCKDB_LEFT};

/// DuckDB's `ASOF [LEFT [OUTER]] JOIN rel ON ...` given a
/// `MATCH_CONDITION (__kiln_duckdb_asof('inner'|'left'))` before its `ON`,
/// so that the parser takes it; other SQL is returned as it is.
pub fn rewrite_text(sql: &str) -> Cow<'_, str> {
    if !sql.to_ascii_lowercase().contains("asof") {
        return Cow::Borrowed(sql);
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return Cow::Borrowed(sql);
    };
    // Byte offsets of each token (locations are lines and characters).
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |line: u64, column: u64| -> Option<usize> {
        let start = *line_starts.get(line.checked_sub(1)? as usize)?;
        let rest = &sql[start..];
        let chars = column.checked_sub(1)? as usize;
        Some(
            start
                + rest
                    .char_indices()
                    .nth(chars)
                    .map_or(rest.len(), |(i, _)| i),
        )
    };
    let words: Vec<(usize, &Token)> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t.token, Token::Whitespace(_)))
        .map(|(i, t)| (i, &t.token))
        .collect();
    let keyword = |i: usize, k: Keyword| matches!(words.get(i), Some((_, Token::Word(w))) if w.keyword == k && w.quote_style.is_none());
    // (byte range to delete, or an insertion point with its text)
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if !keyword(i, Keyword::ASOF) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let mut left = false;
        if keyword(j, Keyword::LEFT) {
            left = true;
            j += 1;
            if keyword(j, Keyword::OUTER) {
                j += 1;
            }
        }
        if !keyword(j, Keyword::JOIN) {
            i += 1;
            continue;
        }
        if left {
            // ASOF [LEFT [OUTER]] JOIN -> ASOF JOIN
            let from = &tokens[words[i + 1].0].span.start;
            let to = &tokens[words[j].0].span.start;
            if let (Some(a), Some(b)) = (offset(from.line, from.column), offset(to.line, to.column))
            {
                edits.push((a, b, String::new()));
            }
        }
        // The relation ends at the first ON, USING or MATCH_CONDITION at
        // its own depth.
        let mut depth = 0i32;
        let mut k = j + 1;
        while k < words.len() {
            match words[k].1 {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                _ => {}
            }
            if depth == 0 && (keyword(k, Keyword::ON) || keyword(k, Keyword::USING)) {
                let at = &tokens[words[k].0].span.start;
                if let Some(a) = offset(at.line, at.column) {
                    let kind = if left { DUCKDB_LEFT } else { DUCKDB_INNER };
                    edits.push((a, a, format!("MATCH_CONDITION ({ASOF_MARKER}('{kind}')) ")));
                }
                break;
            }
            if depth == 0 && keyword(k, Keyword::MATCH_CONDITION) || depth < 0 {
                break;
            }
            k += 1;
        }
        i = k;
    }
    if edits.is_empty() {
        return Cow::Borrowed(sql);
    }
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(sql.len() + 64 * edits.len());
    let mut at = 0;
    for (from, to, text) in edits {
        out.push_str(&sql[at..from]);
        out.push_str(&text);
        at = to;
    }
    out.push_str(&sql[at..]);
    Cow::Owned(out)
}

/// Rewrites the as-of joins of `statement` into joins the planner's rule
/// recognizes (see the module's docs); a malformed one is an error naming
/// what it needs.
pub fn rewrite_statement(statement: &mut Statement) -> Result<(), String> {
    let mut visitor = Rewriter;
    let result = match statement {
        Statement::Statement(s) => s.visit(&mut visitor),
        Statement::CopyTo(copy) => match &mut copy.source {
            CopyToSource::Query(q) => q.visit(&mut visitor),
            CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        Statement::Explain(explain) => return rewrite_statement(&mut explain.statement),
        Statement::CreateExternalTable(_) | Statement::Reset(_) => ControlFlow::Continue(()),
    };
    match result {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

struct Rewriter;

impl VisitorMut for Rewriter {
    type Break = String;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<String> {
        set_expr(&mut query.body)
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<String> {
        if let TableFactor::NestedJoin {
            table_with_joins, ..
        } = factor
        {
            return joins(table_with_joins);
        }
        ControlFlow::Continue(())
    }
}

fn set_expr(body: &mut SetExpr) -> ControlFlow<String> {
    match body {
        SetExpr::Select(select) => {
            for from in &mut select.from {
                joins(from)?;
            }
            ControlFlow::Continue(())
        }
        SetExpr::SetOperation { left, right, .. } => {
            set_expr(left)?;
            set_expr(right)
        }
        _ => ControlFlow::Continue(()),
    }
}

fn joins(from: &mut TableWithJoins) -> ControlFlow<String> {
    for join in &mut from.joins {
        if let Err(e) = asof(join) {
            return ControlFlow::Break(e);
        }
    }
    ControlFlow::Continue(())
}

/// `name(args...)` as an expression.
fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

fn text(s: &str) -> Expr {
    Expr::Value(Value::SingleQuotedString(s.to_string()).into())
}

/// The DuckDB marker's kind, if `e` is it.
fn duckdb_kind(e: &Expr) -> Option<String> {
    let Expr::Function(f) = e else {
        return None;
    };
    if !f.name.to_string().eq_ignore_ascii_case(ASOF_MARKER) {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    match list.args.first() {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => match &v.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn conjuncts(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(*left, out);
            conjuncts(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                *inner,
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner, out)
        }
        other => out.push(other),
    }
}

fn inequality(e: &Expr) -> Option<(&Expr, &'static str, &Expr)> {
    let Expr::BinaryOp { left, op, right } = e else {
        return None;
    };
    let op = match op {
        BinaryOperator::GtEq => ">=",
        BinaryOperator::Gt => ">",
        BinaryOperator::LtEq => "<=",
        BinaryOperator::Lt => "<",
        _ => return None,
    };
    Some((left, op, right))
}

fn asof(join: &mut Join) -> Result<(), String> {
    let JoinOperator::AsOf {
        match_condition,
        constraint,
    } = &join.join_operator
    else {
        return Ok(());
    };
    let on = match constraint {
        JoinConstraint::On(e) => Some(e.clone()),
        JoinConstraint::None => None,
        _ => {
            return Err(
                "ASOF JOIN: the keys go in ON (ON e.k = f.k ...); USING and NATURAL are not supported"
                    .to_string(),
            );
        }
    };
    let mut rest = Vec::new();
    if let Some(on) = on {
        conjuncts(on, &mut rest);
    }
    let (time, keep_unmatched) = match duckdb_kind(match_condition) {
        Some(kind) => {
            // DuckDB: the one inequality of ON is the time condition.
            let found: Vec<usize> = rest
                .iter()
                .enumerate()
                .filter(|(_, e)| inequality(e).is_some())
                .map(|(i, _)| i)
                .collect();
            let [at] = found[..] else {
                return Err(format!(
                    "ASOF JOIN: ON needs exactly one inequality (e.ts >= f.ts) besides the keys, \
                     found {}",
                    found.len()
                ));
            };
            (rest.remove(at), kind == DUCKDB_LEFT)
        }
        // Snowflake: MATCH_CONDITION holds it; unmatched rows are kept.
        None => (match_condition.clone(), true),
    };
    let Some((a, op, b)) = inequality(&time) else {
        return Err(format!(
            "ASOF JOIN: the match condition must compare the two times with >=, >, <= or <, got {time}"
        ));
    };
    let mut condition = call(ASOF_MARKER, vec![a.clone(), b.clone(), text(op)]);
    for e in rest {
        condition = Expr::BinaryOp {
            left: Box::new(condition),
            op: BinaryOperator::And,
            right: Box::new(e),
        };
    }
    let constraint = JoinConstraint::On(condition);
    join.join_operator = if keep_unmatched {
        JoinOperator::LeftOuter(constraint)
    } else {
        JoinOperator::Inner(constraint)
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duckdb_forms_get_a_match_condition() {
        assert_eq!(
            rewrite_text("SELECT * FROM e ASOF JOIN f ON e.k = f.k AND e.t >= f.t"),
            format!(
                "SELECT * FROM e ASOF JOIN f MATCH_CONDITION ({ASOF_MARKER}('{DUCKDB_INNER}')) ON e.k = f.k AND e.t >= f.t"
            )
        );
        assert_eq!(
            rewrite_text(
                "select * from e asof left outer join (select * from f) x\n  on e.t >= x.t"
            ),
            format!(
                "select * from e asof join (select * from f) x\n  MATCH_CONDITION ({ASOF_MARKER}('{DUCKDB_LEFT}')) on e.t >= x.t"
            )
        );
        let snowflake = "SELECT * FROM e ASOF JOIN f MATCH_CONDITION (e.t >= f.t) ON e.k = f.k";
        assert_eq!(rewrite_text(snowflake), snowflake);
        let quoted = "SELECT 'asof join x on' FROM \"asof\"";
        assert_eq!(rewrite_text(quoted), quoted);
    }
}
