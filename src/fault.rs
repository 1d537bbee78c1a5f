//! Kills a job at a chosen point, for the tests that check what a killed
//! job leaves and how `--resume` finishes it: `KILN_FAULT=kill-after-step:N`
//! (once step N has committed) or `KILN_FAULT=kill-before-commit:N` (with
//! step N's rows written to staging, not yet committed). The process aborts
//! at once, running no destructor and no cleanup, as a SIGKILL would.

/// Aborts the process if `KILN_FAULT` names `point` at `step`.
pub(crate) fn kill_at(point: &str, step: usize) {
    let Ok(fault) = std::env::var("KILN_FAULT") else {
        return;
    };
    if fault == format!("{point}:{step}") {
        eprintln!("KILN_FAULT: killed at {point} {step}");
        std::process::abort();
    }
}
