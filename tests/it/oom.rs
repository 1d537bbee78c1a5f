//! Out of device memory (issue 15): results never depend on retries.
//!
//! The TPC-H queries on the GPU, an embedding job and knn_join are re-run in
//! a child process of this test binary with `KILN_INJECT_OOM` set (devices
//! are opened once per process and read it then, so the injection must not
//! reach the other tests running here): every one of their assertions —
//! the same results as the CPU, the same hits as a brute-force reference —
//! must still hold while device allocations fail. A tight
//! `kiln.device_memory_limit` splits GPU stage launches, and EXPLAIN
//! ANALYZE counts it.

use std::process::Command;

use crate::common::*;

/// Runs test `name` of this binary in a child process with
/// `KILN_INJECT_OOM=inject`; its output, after checking that it passed and
/// that allocations did fail.
fn rerun_injected(name: &str, inject: &str) -> String {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env("KILN_INJECT_OOM", inject)
        .output()
        .expect("spawn the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} with KILN_INJECT_OOM={inject} failed:\n{text}"
    );
    let injected: u64 = text
        .split("kiln-injected-oom=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no injection report in\n{text}"));
    assert!(
        injected > 0,
        "{name}: no allocation failed under {inject}:\n{text}"
    );
    text
}

#[test]
fn tpch_on_the_gpu_gives_the_cpu_results_while_allocations_fail() {
    if !has_gpu() {
        return;
    }
    rerun_injected(
        "gpu_transforms::tpch_results_are_the_same_with_the_gpu_on_and_off",
        "p:0.1,seed:7",
    );
}

#[test]
fn embeddings_keep_their_contract_while_allocations_fail() {
    if !has_gpu() {
        return;
    }
    // Rare failures, so that the weights mostly fit and the encoder
    // batches are what splits (every batch allocates about a hundred times).
    rerun_injected(
        "embed::sql_embed_runs_on_the_gpu_when_the_session_says_so",
        "p:0.005,seed:11",
    );
}

#[test]
fn knn_join_keeps_exact_hits_while_allocations_fail() {
    // On the CPU (always) and the test GPU: the CPU's search reserves its
    // score matrix too, so injection reaches it.
    rerun_injected(
        "vector_search::knn_join_matches_a_window_function_reference_on_every_device",
        "p:0.2,seed:5",
    );
}

#[test]
fn every_allocation_failing_still_gives_the_results() {
    // The worst case: nothing fits any device, every piece ends on the CPU.
    rerun_injected(
        "vector_search::knn_join_matches_a_window_function_reference_on_every_device",
        "every:1",
    );
}

/// A budget far below a launch's buffers: each GPU stage launch is halved
/// until its pieces fit, EXPLAIN ANALYZE counts the splits, and the result
/// is the CPU's. Through the CLI: the limit is the process's device's.
#[test]
fn a_tight_device_memory_limit_splits_stage_launches() {
    if !has_gpu() {
        return;
    }
    let query = "SELECT l_returnflag, sum(l_extendedprice * (1 - l_discount)) AS revenue, count(*) AS n \
                 FROM lineitem WHERE l_quantity < 30 GROUP BY l_returnflag ORDER BY l_returnflag";
    let tables = tpch_tables(&["lineitem"]);
    let with = |device: &str, settings: &str, sql: &str| {
        let mut args: Vec<String> = vec!["--device".into(), device.into(), "sql".into()];
        args.extend(tables.iter().cloned());
        args.push("-c".into());
        args.push(format!("{settings} {sql}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&args)
    };
    let tight = "SET kiln.gpu_min_rows = 0; SET kiln.device_memory_limit = '256KiB';";
    let want = with("cpu", "", &format!("{query};"));
    let got = with(test_gpu(), tight, &format!("{query};"));
    assert_eq!(got, want, "a tight limit changed the result");
    let analyzed = with(test_gpu(), tight, &format!("EXPLAIN ANALYZE {query};"));
    // Summed over the stages (the partial aggregate's launches split; the
    // final one's merge of a few states does not need to).
    let count = |name: &str| -> u64 {
        analyzed
            .lines()
            .filter(|l| l.contains("GpuStageExec"))
            .map(|l| {
                l.split(&format!("{name}="))
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no {name} in {l}"))
            })
            .sum()
    };
    assert!(count("oom_splits") > 0, "{analyzed}");
    assert!(count("oom_retries") > 0, "{analyzed}");
    // A bad limit is a one-line error naming the setting.
    let r = run(kiln().args(["sql", "-c", "SET kiln.device_memory_limit = 'lots';"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("kiln.device_memory_limit"),
        "{}",
        r.stderr
    );
}

/// A bad `KILN_INJECT_OOM` is refused in one line naming it, before any
/// work (devices read it only when they open).
#[test]
fn a_bad_injection_setting_is_a_clear_error() {
    let r = run(kiln()
        .args(["--device", "cpu", "sql", "-c", "SELECT 1;"])
        .env("KILN_INJECT_OOM", "sometimes"));
    // A usage error, as a bad KILN_DEVICE is.
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("KILN_INJECT_OOM"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
}
