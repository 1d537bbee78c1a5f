#!/usr/bin/env python3
"""As-of joins: Kiln against DuckDB's ASOF JOIN and Polars' join_asof (issue 20).

The data (numpy, seeded, written once to Parquet): `--events` events (id,
key of 1,000, integer time) and `--features` feature rows (key, time,
value), both in random order. Each engine computes, for every event, the
latest feature row of its key at or before its time (a left join), and
returns the count and the sum of the matched values — the same two
numbers, checked, from every engine.

Timed, interleaved after one warm-up each, medians of `--reps` runs:
  - Kiln: a fresh `kiln sql -c "SELECT count(f.v), sum(f.v) FROM ... e ASOF
    LEFT JOIN ... f ON e.k = f.k AND e.ts >= f.ts"` process (start-up and
    Parquet reading included), on all cores and on one (`taskset`);
  - DuckDB: the same statement in a Python process, timed from the query to
    its result (import left out), on all cores and on one (`threads`);
  - Polars: `scan_parquet(...).sort("ts").join_asof(..., on="ts", by="k")`
    with the two aggregates, collected; the sorts are part of the work
    (join_asof needs sorted input); likewise timed.

Usage (scripts/bench-asof sets up the environment):
    python benches/asof_join.py --kiln PATH [--events N] [--features N] [--reps R] [--quick]
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import fmt_times, git_rev, machine, ROOT  # noqa: E402

SQL = ("SELECT count(f.v) AS n, sum(f.v) AS total FROM '{events}' e ASOF LEFT JOIN '{features}' f "
       "ON e.k = f.k AND e.ts >= f.ts")

PEER = """
import json, sys, time
engine, events, features, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sql = sys.argv[5]
if engine == "duckdb":
    import duckdb
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    if threads:
        con.execute(f"SET threads = {threads}")
    start = time.perf_counter()
    n, total = con.execute(sql.format(events=events, features=features)).fetchone()
else:
    import os
    import polars as pl
    start = time.perf_counter()
    e = pl.scan_parquet(events).sort("ts")
    f = pl.scan_parquet(features).sort("ts")
    out = e.join_asof(f, on="ts", by="k", strategy="backward").select(
        pl.col("v").count().alias("n"), pl.col("v").sum().alias("total")).collect()
    n, total = out["n"][0], out["total"][0]
print(json.dumps({"seconds": time.perf_counter() - start, "n": int(n), "total": int(total)}))
"""


def log(msg):
    print(f"[bench-asof] {msg}", file=sys.stderr, flush=True)


def write_data(work, n_events, n_features):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(20261203)
    span = 10 * n_events
    events = pa.table({
        "id": np.arange(n_events, dtype=np.int64),
        "k": rng.integers(0, 1000, n_events, dtype=np.int64),
        "ts": rng.integers(0, span, n_events, dtype=np.int64),
    })
    features = pa.table({
        "k": rng.integers(0, 1000, n_features, dtype=np.int64),
        "ts": rng.integers(0, span, n_features, dtype=np.int64),
        "v": rng.integers(0, 1_000_000, n_features, dtype=np.int64),
    })
    paths = {}
    for name, table in (("events", events), ("features", features)):
        paths[name] = os.path.join(work, f"{name}.parquet")
        pq.write_table(table, paths[name], row_group_size=1 << 20)
    return paths


def run_kiln(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return elapsed, (int(row["n"]), int(row["total"]))


def run_peer(engine, paths, threads):
    cmd = [sys.executable, "-c", PEER, engine, paths["events"], paths["features"], str(threads), SQL]
    env = dict(os.environ)
    if engine == "polars" and threads:
        env["POLARS_MAX_THREADS"] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"error: {engine} failed:\n{proc.stderr}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return row["seconds"], (row["n"], row["total"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", required=True)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--features", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.events, args.features, args.reps = 1_000_000, 100_000, 2
    work = tempfile.mkdtemp(prefix="kiln-bench-asof-")
    try:
        log(f"writing {args.events:,} events and {args.features:,} feature rows")
        paths = write_data(work, args.events, args.features)
        sql = SQL.format(**paths)
        kiln = [args.kiln, "sql", "--format", "json", "-c", sql]
        runs = {
            "kiln": lambda: run_kiln(kiln),
            "kiln_1core": lambda: run_kiln(["taskset", "-c", "0"] + kiln),
            "duckdb": lambda: run_peer("duckdb", paths, 0),
            "duckdb_1core": lambda: run_peer("duckdb", paths, 1),
            "polars": lambda: run_peer("polars", paths, 0),
            "polars_1core": lambda: run_peer("polars", paths, 1),
        }
        times = {name: [] for name in runs}
        answer = None
        for rep in range(args.reps + 1):
            line = []
            for name, fn in runs.items():
                seconds, result = fn()
                if answer is None:
                    answer = result
                elif result != answer:
                    sys.exit(f"error: {name} answered {result}, others {answer}")
                if rep > 0:
                    times[name].append(seconds)
                line.append(f"{name} {seconds:.2f} s")
            log(f"run {rep}{' (warm-up)' if rep == 0 else ''}: " + ", ".join(line))
        report(times, answer, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(times, answer, args):
    import duckdb
    import polars
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        ("Kiln (fresh process), all cores", "kiln", "duckdb", "polars"),
        ("Kiln (fresh process), 1 core", "kiln_1core", "duckdb_1core", "polars_1core"),
    ]
    lines = [
        "# As-of join: Kiln vs DuckDB's ASOF JOIN and Polars' join_asof",
        "",
        f"{datetime.date.today()}, {git_rev()}, {machine()}; DuckDB {duckdb.__version__}, "
        f"Polars {polars.__version__}. Produced by `scripts/bench-asof` (benches/asof_join.py); "
        f"medians of {args.reps} interleaved runs after a warm-up.",
        "",
        f"{args.events:,} events × {args.features:,} feature rows (1,000 keys, integer times, "
        "random order, Parquet); for each event the latest feature row of its key at or before "
        f"its time, a left join; every engine answered count {answer[0]:,} and sum "
        f"{answer[1]:,}. Kiln: a fresh `kiln sql` process (start-up and reading included); "
        "DuckDB and Polars: timed in their process from the query to the result (reading "
        "included, import left out); Polars' sorts included (join_asof needs sorted input).",
        "",
        "| engine | all cores | 1 core |",
        "| --- | --- | --- |",
        f"| Kiln | {fmt_times(times['kiln'])} | {fmt_times(times['kiln_1core'])} |",
        f"| DuckDB | {fmt_times(times['duckdb'])} | {fmt_times(times['duckdb_1core'])} |",
        f"| Polars | {fmt_times(times['polars'])} | {fmt_times(times['polars_1core'])} |",
        "",
        "| | DuckDB ÷ Kiln | Polars ÷ Kiln |",
        "| --- | --- | --- |",
    ]
    for label, k, d, pl in rows:
        lines.append(f"| {label} | {med[d] / med[k]:.2f}× | {med[pl] / med[k]:.2f}× |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(ROOT, "benches", "results", "asof_join.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
