//! Kills a job at a chosen point, for the tests that check what a killed
//! job leaves and how `--resume` finishes it: `KILN_FAULT=kill-after-step:N`
//! (once step N has committed), `KILN_FAULT=kill-before-commit:N` (with
//! step N's rows written to staging, not yet committed),
//! `KILN_FAULT=kill-after-part:N/P` (once part P of step N's output is
//! checkpointed) or `KILN_FAULT=kill-in-part:N/P` (with part P's files
//! written, not yet recorded); `KILN_FAULT=slow-parts:MS` waits MS
//! milliseconds after each part, for a test to kill the process from
//! outside. At a kill point the process aborts at once, running no
//! destructor and no cleanup, as a SIGKILL would.

/// Aborts the process if `KILN_FAULT` names `point` at `step` (a step's
/// number, or `<step>/<part>` for a part of an output run in parts).
pub(crate) fn kill_at(point: &str, step: impl std::fmt::Display) {
    let Ok(fault) = std::env::var("KILN_FAULT") else {
        return;
    };
    if fault == format!("{point}:{step}") {
        eprintln!("KILN_FAULT: killed at {point} {step}");
        std::process::abort();
    }
}

/// Waits after each checkpointed part when `KILN_FAULT=slow-parts:MS`, so
/// that a test can kill the process (SIGKILL, from outside) mid-output.
pub(crate) async fn pause_after_part() {
    let Ok(fault) = std::env::var("KILN_FAULT") else {
        return;
    };
    if let Some(ms) = fault
        .strip_prefix("slow-parts:")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
