//! The interactive prompt of `kiln sql`: line editing and history (kept in
//! `KILN_HISTORY`, default `~/.kiln_history`), statements over several
//! lines ending with ';', `\q` / `quit` / `exit` to leave, `help` / `\?`.
//! Ctrl-C at the prompt clears the statement being typed; Ctrl-D leaves,
//! with a warning when it drops an unfinished statement.

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::error::{KilnError, Result};

const HELP: &str = "\
Statements end with ';' and may span lines.
  \\q, quit, exit   leave (Ctrl-D too)
  \\?, help         this text
  Ctrl-C           clear the statement being typed, or cancel the one running
SET kiln.<option> = 'value' changes an option (see SHOW ALL); EXPLAIN shows a plan.";

/// A line editor reading one statement at a time.
pub struct Prompt {
    editor: DefaultEditor,
    history: Option<std::path::PathBuf>,
}

impl Prompt {
    pub fn open() -> Result<Prompt> {
        let mut editor = DefaultEditor::new()
            .map_err(|e| KilnError::Usage(format!("cannot open the prompt: {e}")))?;
        let history = std::env::var_os("KILN_HISTORY")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".kiln_history"))
            });
        if let Some(path) = &history {
            // No history yet is the usual first run.
            let _ = editor.load_history(path);
        }
        Ok(Prompt { editor, history })
    }

    /// The next complete statement (or statements) typed; `None` to leave.
    pub fn next_statement(&mut self) -> Result<Option<String>> {
        let mut buffer = String::new();
        loop {
            let prompt = if buffer.is_empty() {
                "kiln> "
            } else {
                "  ..> "
            };
            let line = match self.editor.readline(prompt) {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => {
                    buffer.clear();
                    continue;
                }
                Err(ReadlineError::Eof) => {
                    if !buffer.trim().is_empty() {
                        eprintln!(
                            "warning: the unfinished statement was not run (end it with ';'): {}",
                            buffer.split_whitespace().collect::<Vec<_>>().join(" ")
                        );
                    }
                    return Ok(None);
                }
                Err(e) => {
                    return Err(KilnError::File {
                        path: "<terminal>".into(),
                        source: std::io::Error::other(e),
                    });
                }
            };
            let trimmed = line.trim();
            if buffer.is_empty() {
                match trimmed.trim_end_matches(';') {
                    "\\q" | "quit" | "exit" => return Ok(None),
                    "\\?" | "help" | "\\h" => {
                        println!("{HELP}");
                        continue;
                    }
                    "" => continue,
                    _ => {}
                }
            }
            buffer.push_str(&line);
            buffer.push('\n');
            if trimmed.ends_with(';') {
                let statement = buffer.trim_end().to_string();
                let _ = self.editor.add_history_entry(statement.as_str());
                if let Some(path) = &self.history {
                    // History is a convenience: a read-only home loses it, not the session.
                    let _ = self.editor.save_history(path);
                }
                return Ok(Some(statement));
            }
        }
    }
}
