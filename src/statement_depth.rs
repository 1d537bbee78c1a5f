//! How deeply a parsed statement nests, checked before planning.
//!
//! DataFusion's planner walks expressions recursively and names every
//! sub-expression as it goes, so a generated `1+1+...`, `a OR b OR ...` or
//! `UNION ALL` chain costs time with the square of its length and stack with
//! its length. Kiln refuses a statement deeper than
//! `kiln.max_expression_depth` with an error that says so, rather than
//! planning for minutes or overflowing a stack.

use std::ops::ControlFlow;

use datafusion::sql::parser::{CopyToSource, Statement};
use datafusion::sql::sqlparser::ast::{Expr, Query, SetExpr, TableFactor, Visit, Visitor};

/// The first depth found beyond `limit`, if any. The walk stops there, so a
/// huge statement costs no more than its first `limit` levels.
pub fn exceeds(statement: &Statement, limit: usize) -> Option<usize> {
    let mut walk = Depth {
        depth: 0,
        limit,
        queries: Vec::new(),
    };
    match visit(statement, &mut walk) {
        ControlFlow::Break(depth) => Some(depth),
        ControlFlow::Continue(()) => None,
    }
}

/// Walks the SQL of `statement` (the query of a `COPY`, the statement an
/// `EXPLAIN` explains) with `visitor`.
fn visit<V: Visitor>(statement: &Statement, visitor: &mut V) -> ControlFlow<V::Break> {
    match statement {
        Statement::Statement(s) => s.visit(visitor),
        Statement::CopyTo(copy) => match &copy.source {
            CopyToSource::Query(q) => q.visit(visitor),
            CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        Statement::Explain(explain) => visit(&explain.statement, visitor),
        Statement::CreateExternalTable(_) | Statement::Reset(_) => ControlFlow::Continue(()),
    }
}

/// The first table named with a version clause (`t VERSION AS OF 3`,
/// `t FOR SYSTEM_TIME AS OF ...`, which some dialects parse): DataFusion
/// plans it as the table's current rows, without a word, so Kiln refuses
/// it and names the form it reads (`FROM 'loc@v3'` for a Delta table).
pub fn table_version(statement: &Statement) -> Option<String> {
    struct Versioned;
    impl Visitor for Versioned {
        type Break = String;
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<String> {
            match factor {
                TableFactor::Table {
                    name,
                    version: Some(version),
                    ..
                } => ControlFlow::Break(format!("{name} {version}")),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    match visit(statement, &mut Versioned) {
        ControlFlow::Break(clause) => Some(clause),
        ControlFlow::Continue(()) => None,
    }
}

struct Depth {
    depth: usize,
    limit: usize,
    /// The set-operation depth each open query added, to take off again.
    queries: Vec<usize>,
}

impl Depth {
    fn enter(&mut self, levels: usize) -> ControlFlow<usize> {
        self.depth += levels;
        if self.depth > self.limit {
            ControlFlow::Break(self.depth)
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl Visitor for Depth {
    type Break = usize;

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<usize> {
        self.enter(1)
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<usize> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<usize> {
        let levels = set_operation_depth(&query.body);
        self.queries.push(levels);
        self.enter(levels)
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<usize> {
        self.depth -= self.queries.pop().unwrap_or(0);
        ControlFlow::Continue(())
    }
}

/// The longest chain of set operations (`UNION`, `INTERSECT`, `EXCEPT`) in
/// a query's body, walked without recursion; 1 for a plain `SELECT`.
fn set_operation_depth(body: &SetExpr) -> usize {
    let mut deepest = 1;
    let mut pending = vec![(body, 1)];
    while let Some((expr, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        if let SetExpr::SetOperation { left, right, .. } = expr {
            pending.push((left, depth + 1));
            pending.push((right, depth + 1));
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn parse(sql: &str) -> Statement {
        DFParser::parse_sql(sql).unwrap().pop_front().unwrap()
    }

    #[test]
    fn counts_expressions_and_set_operations() {
        let sum = format!("SELECT {}", vec!["1"; 50].join(" + "));
        assert_eq!(exceeds(&parse(&sum), 100), None);
        assert!(exceeds(&parse(&sum), 40).is_some());
        let union = vec!["SELECT 1"; 30].join(" UNION ALL ");
        assert_eq!(exceeds(&parse(&union), 100), None);
        assert!(exceeds(&parse(&union), 20).is_some());
        // Inside COPY and EXPLAIN too.
        let copy = format!("COPY ({sum}) TO 'x.parquet'");
        assert!(exceeds(&parse(&copy), 40).is_some());
        let explain = format!("EXPLAIN {sum}");
        assert!(exceeds(&parse(&explain), 40).is_some());
        // A wide but shallow statement passes.
        let wide = format!("SELECT {}", vec!["1"; 500].join(", "));
        assert_eq!(exceeds(&parse(&wide), 10), None);
    }
}
