//! The pieces of a job's DAG: which statement a syntax error is in, what a
//! plan reads, which steps read a view, where a plan's operators run, and
//! the metrics an executed plan kept.

use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::Step;
use crate::error::{KilnError, Result};
use crate::session::Session;

/// The statements of `sql`; a syntax error names the statement it is in
/// ("statement 5 of 7 (line 12): ...").
pub(super) fn parse_naming_statement(session: &Session, sql: &str) -> Result<Vec<Statement>> {
    let error = match session.parse(sql) {
        Ok(statements) if statements.is_empty() => return Err(KilnError::EmptySql),
        Ok(statements) => return Ok(statements),
        Err(e) => e,
    };
    let Some((line, column)) = error_location(&error.to_string()) else {
        return Err(error);
    };
    let dialect = session
        .context()
        .state()
        .config()
        .options()
        .sql_parser
        .dialect
        .to_string();
    let Some(dialect) = dialect_from_str(&dialect) else {
        return Err(error);
    };
    let Ok(tokens) = Tokenizer::new(dialect.as_ref(), sql).tokenize_with_location() else {
        return Err(error);
    };
    // Statements are the runs of tokens between semicolons that hold more
    // than whitespace and comments.
    let mut statements = 0;
    let mut at = None;
    let mut current_start: Option<(u64, u64)> = None;
    for token in &tokens {
        let start = (token.span.start.line, token.span.start.column);
        match &token.token {
            Token::SemiColon => {
                if current_start.take().is_some() {
                    statements += 1;
                }
            }
            Token::Whitespace(_) => {}
            _ => {
                if current_start.is_none() {
                    current_start = Some(start);
                }
            }
        }
        if at.is_none() && start >= (line, column) {
            // The error is in the statement open here, or the next one.
            at = Some((statements + 1, current_start.unwrap_or(start).0));
        }
    }
    if current_start.is_some() {
        statements += 1;
    }
    let (index, from_line) = at.unwrap_or((statements.max(1), line));
    Err(KilnError::JobSyntax {
        index,
        total: statements.max(index),
        line: from_line,
        source: Box::new(error),
    })
}

/// The `Line: N, Column: M` sqlparser puts in its errors.
fn error_location(message: &str) -> Option<(u64, u64)> {
    let number = |text: &str| -> Option<u64> {
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let at = message.rfind("Line: ")?;
    let rest = &message[at + "Line: ".len()..];
    let line = number(rest)?;
    let column_at = rest.find("Column: ")?;
    let column = number(&rest[column_at + "Column: ".len()..])?;
    Some((line, column))
}

/// The tables, views and locations `plan` reads (scans, subqueries
/// included), each once, in the order first met. DataFusion inlines a view
/// where it is read, under an alias of its name: an alias `is_view` names
/// is recorded as a read of the view, and what is under it is not.
pub(super) fn reads(plan: &LogicalPlan, is_view: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: String| {
        if !names.contains(&name) {
            names.push(name);
        }
    };
    let _ = plan.apply_with_subqueries(|node| match node {
        LogicalPlan::TableScan(scan) => {
            add(scan.table_name.table().to_string());
            Ok(TreeNodeRecursion::Continue)
        }
        LogicalPlan::SubqueryAlias(alias) if is_view(alias.alias.table()) => {
            add(alias.alias.table().to_string());
            Ok(TreeNodeRecursion::Jump)
        }
        _ => Ok(TreeNodeRecursion::Continue),
    });
    names
}

/// Every location `plan` reads, views and tables looked through (a view is
/// inlined where it is read; a table's files are its listing's paths, a
/// Delta table's its location), and the names of its scans (the job's own
/// outputs are stand-ins named after their location while it is planned):
/// each as [`super::normalized`] gives it, once.
pub(super) fn read_locations(plan: &LogicalPlan) -> Vec<String> {
    use datafusion::datasource::listing::ListingTable;
    let mut found: Vec<String> = Vec::new();
    let mut add = |location: String| {
        let location = super::normalized(&location);
        if !found.contains(&location) {
            found.push(location);
        }
    };
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            add(scan.table_name.table().to_string());
            if let Ok(provider) = datafusion::datasource::source_as_provider(&scan.source) {
                if let Some(table) = provider.downcast_ref::<ListingTable>() {
                    for url in table.table_paths() {
                        add(url.as_str().to_string());
                    }
                }
                if let Some(delta) = provider.downcast_ref::<crate::delta::DeltaProvider>() {
                    add(delta.location.clone());
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The files `plan` reads from listing tables (a location, an external
/// table, a registered directory), each as a line of its path, size, etag
/// and modification time: what the job's fingerprint covers. The job's own
/// outputs are stand-ins while it is planned, not listing tables, so they
/// are not among them; a table at a location `written` names (an output
/// of the job, read by a DataFrame built over its last commit) is skipped.
pub(super) async fn input_versions(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    written: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>> {
    use datafusion::datasource::listing::ListingTable;
    use futures::TryStreamExt;
    let mut sources = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            sources.push(Arc::clone(&scan.source));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let state = ctx.state();
    let mut lines = Vec::new();
    for source in sources {
        let Ok(provider) = datafusion::datasource::source_as_provider(&source) else {
            continue;
        };
        let Some(table) = provider.downcast_ref::<ListingTable>() else {
            continue;
        };
        let extension = table.options().file_extension.clone();
        for url in table.table_paths() {
            if written(url.as_str()) {
                continue;
            }
            let store = ctx.runtime_env().object_store(url)?;
            let files: Vec<_> = url
                .list_all_files(&state, store.as_ref(), &extension)
                .await?
                .try_collect()
                .await?;
            for file in files {
                lines.push(format!(
                    "{}\t{}\t{}\t{}",
                    file.location,
                    file.size,
                    file.e_tag.unwrap_or_default(),
                    file.last_modified.timestamp_nanos_opt().unwrap_or_default()
                ));
            }
        }
    }
    lines.sort();
    lines.dedup();
    Ok(lines)
}

/// Fills each view's `read_by`: the later steps that read it.
pub(super) fn link_readers(steps: &mut [Step]) {
    for i in 0..steps.len() {
        let super::StepKind::View { name } = &steps[i].kind else {
            continue;
        };
        let name = name.clone();
        let readers: Vec<usize> = steps[i + 1..]
            .iter()
            .take_while(|s| s.kind.creates() != Some(name.as_str()))
            .filter(|s| s.reads.contains(&name))
            .map(|s| s.index)
            .collect();
        steps[i].read_by = readers;
    }
}

/// The Kiln operators `plan`'s physical plan runs on a device.
pub(super) async fn device_operators(
    ctx: &SessionContext,
    plan: &LogicalPlan,
) -> Result<Vec<String>> {
    let state = ctx.state();
    let physical = state.create_physical_plan(plan).await?;
    let config = state.config_options();
    let mut found = Vec::new();
    walk(&physical, &mut |node| {
        if let Some(device) = kiln_planner::device_of(node, config) {
            found.push(format!("{} ({device})", node.name()));
        }
    });
    Ok(found)
}

/// The sum of metric `name` over every operator of `plan`.
pub(super) fn metric_sum(plan: &Arc<dyn ExecutionPlan>, name: &str) -> u64 {
    let mut sum = 0;
    walk(plan, &mut |node| {
        if let Some(value) = node.metrics().and_then(|m| m.sum_by_name(name)) {
            sum += value.as_usize() as u64;
        }
    });
    sum
}

fn walk(plan: &Arc<dyn ExecutionPlan>, visit: &mut dyn FnMut(&Arc<dyn ExecutionPlan>)) {
    visit(plan);
    for child in plan.children() {
        walk(child, visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_location_of_a_parser_error() {
        assert_eq!(
            error_location(
                "SQL error: ParserError(\"Expected: end of statement, found: x at Line: 12, Column: 5\")"
            ),
            Some((12, 5))
        );
        assert_eq!(error_location("no location"), None);
    }
}
