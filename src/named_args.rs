//! Named arguments DataFusion cannot resolve by position, rewritten before
//! planning: `chunk_text(text, max_chars => N [, overlap_chars => M])` (a
//! character budget, where `chunk_text(text, max_tokens, ...)` counts
//! tokens) becomes `chunk_text_chars(text, N [, M])`.

use std::ops::ControlFlow;

use datafusion::sql::parser::{CopyToSource, Statement};
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, visit_expressions_mut,
};

/// Rewrites the calls of `statement`; a call mixing the two budgets is an
/// error naming what it takes.
pub fn rewrite(statement: &mut Statement) -> Result<(), String> {
    let result = match statement {
        Statement::Statement(s) => visit_expressions_mut(s.as_mut(), rewrite_call),
        Statement::CopyTo(copy) => match &mut copy.source {
            CopyToSource::Query(q) => visit_expressions_mut(q.as_mut(), rewrite_call),
            CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        Statement::Explain(explain) => return rewrite(&mut explain.statement),
        Statement::CreateExternalTable(_) | Statement::Reset(_) => ControlFlow::Continue(()),
    };
    match result {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// The name of a named argument, lowercased unless quoted.
fn arg_name(arg: &FunctionArg) -> Option<String> {
    let ident = match arg {
        FunctionArg::Named { name, .. } => name,
        FunctionArg::ExprNamed {
            name: Expr::Identifier(name),
            ..
        } => name,
        _ => return None,
    };
    Some(match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    })
}

fn value(arg: &FunctionArg) -> FunctionArgExpr {
    match arg {
        FunctionArg::Named { arg, .. }
        | FunctionArg::ExprNamed { arg, .. }
        | FunctionArg::Unnamed(arg) => arg.clone(),
    }
}

fn rewrite_call(expr: &mut Expr) -> ControlFlow<String> {
    let Expr::Function(call) = expr else {
        return ControlFlow::Continue(());
    };
    let is_chunk = call
        .name
        .0
        .last()
        .and_then(|part| part.as_ident())
        .is_some_and(|i| i.value.eq_ignore_ascii_case("chunk_text"));
    let FunctionArguments::List(list) = &mut call.args else {
        return ControlFlow::Continue(());
    };
    if !is_chunk
        || !list
            .args
            .iter()
            .any(|a| arg_name(a).as_deref() == Some("max_chars"))
    {
        return ControlFlow::Continue(());
    }
    const USAGE: &str = "chunk_text takes (text, max_tokens [, overlap_tokens [, model]]) or \
                         (text, max_chars => N [, overlap_chars => M])";
    let mut text = None;
    let (mut max_chars, mut overlap) = (None, None);
    for arg in &list.args {
        match arg_name(arg).as_deref() {
            None if text.is_none() => text = Some(value(arg)),
            Some("text") if text.is_none() => text = Some(value(arg)),
            Some("max_chars") => max_chars = Some(value(arg)),
            Some("overlap_chars") => overlap = Some(value(arg)),
            _ => return ControlFlow::Break(format!("{USAGE}: got {call}")),
        }
    }
    let (Some(text), Some(max_chars)) = (text, max_chars) else {
        return ControlFlow::Break(format!("{USAGE}: got {call}"));
    };
    call.name = ObjectName::from(vec![Ident::new("chunk_text_chars")]);
    list.args = [Some(text), Some(max_chars), overlap]
        .into_iter()
        .flatten()
        .map(FunctionArg::Unnamed)
        .collect();
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn rewritten(sql: &str) -> Result<String, String> {
        let mut statement = DFParser::parse_sql(sql).unwrap().pop_front().unwrap();
        rewrite(&mut statement).map(|()| statement.to_string())
    }

    #[test]
    fn character_budgets_become_chunk_text_chars() {
        assert_eq!(
            rewritten("SELECT chunk_text(body, max_chars => 500) FROM t").unwrap(),
            "SELECT chunk_text_chars(body, 500) FROM t"
        );
        assert_eq!(
            rewritten("SELECT unnest(CHUNK_TEXT(body, overlap_chars => 20, MAX_CHARS => 200))")
                .unwrap(),
            "SELECT unnest(chunk_text_chars(body, 200, 20))"
        );
        // Token budgets are left to DataFusion.
        assert_eq!(
            rewritten("SELECT chunk_text(body, 100, 10)").unwrap(),
            "SELECT chunk_text(body, 100, 10)"
        );
        let e = rewritten("SELECT chunk_text(body, 100, max_chars => 5)").unwrap_err();
        assert!(e.starts_with("chunk_text takes"), "{e}");
    }
}
