//! Runs one statement of the command line under its guards: the statement
//! timeout and Ctrl-C cancel it (dropping its streams stops every task it
//! started), and a panic anywhere below it (in Kiln or in a library it
//! uses) becomes that statement's one-line error instead of a crash.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use kiln_engine::exec::decode_guard::{panic_message, short_path};

use crate::error::{KilnError, Result};

/// Guarded statements running now: while there is one, a panic is kept
/// for it to report rather than printed.
static GUARDS: AtomicUsize = AtomicUsize::new(0);

/// The last panic's message, for the guard that catches it.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Installs the process's panic hook: one line, never a backtrace. Inside a
/// guard the line becomes the statement's error; elsewhere it is printed.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = panic_message(info.payload());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", short_path(l.file()), l.line()))
            .unwrap_or_default();
        let line = kiln_engine::io::redact(&format!("{}{at}", msg.replace('\n', " ")));
        if GUARDS.load(Ordering::SeqCst) > 0
            && let Ok(mut last) = LAST_PANIC.lock()
        {
            *last = Some(line);
            return;
        }
        eprintln!("error: internal error: {line} (a bug in Kiln; please report it)");
    }));
}

/// One guarded statement running: counted in [`GUARDS`] while alive.
struct Scope;

impl Scope {
    fn enter() -> Scope {
        GUARDS.fetch_add(1, Ordering::SeqCst);
        Scope
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        GUARDS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `work` to its end, or until `timeout` passes or Ctrl-C is pressed
/// (then `work` is dropped, which cancels it). A panic inside it comes back
/// as [`KilnError::Panic`].
pub async fn guarded<T>(
    work: impl Future<Output = Result<T>>,
    timeout: Option<Duration>,
) -> Result<T> {
    let _scope = Scope::enter();
    let work = AssertUnwindSafe(work).catch_unwind();
    let expired = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        done = work => done.unwrap_or_else(|payload| {
            let caught = LAST_PANIC.lock().ok().and_then(|mut last| last.take());
            let message = caught.unwrap_or_else(|| panic_message(payload.as_ref()));
            Err(KilnError::Panic(message))
        }),
        () = expired => Err(KilnError::Timeout(timeout.unwrap_or_default())),
        _ = tokio::signal::ctrl_c() => Err(KilnError::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_the_statements_error() {
        install_panic_hook();
        let err = guarded(
            async {
                let v: Vec<u8> = Vec::new();
                let i = v.len() + 3;
                Ok(v[i])
            },
            None,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, KilnError::Panic(m) if m.contains("index out of bounds")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_timeout_cancels() {
        let err = guarded(
            async {
                std::future::pending::<()>().await;
                Ok(())
            },
            Some(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, KilnError::Timeout(_)), "{err}");
    }
}
