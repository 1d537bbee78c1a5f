#!/usr/bin/env python3
"""Drift detection: `kiln drift` against Evidently's DataDriftPreset (issue 20).

The two tables: TPC-H SF 1 lineitem (from `kiln datagen`), the rows shipped
in 1993 as the reference and those shipped in 1997 as the current data
(about 0.9 M rows each), 12 columns: 8 numeric (keys, line number;
quantity, price, discount and tax as doubles) and 4 categorical (return flag, line
status, ship instructions, ship mode). Both sides are written once to
Parquet; every run reads them from there.

Timed, interleaved after one warm-up each, medians of `--reps` runs:
  - kiln: a fresh `kiln drift REF CUR --out FILE` process (start-up, Parquet
    reading and every column's test), on all cores and on one (`taskset`);
  - Evidently: a fresh Python process that reads the two files with pandas
    and runs `Report([DataDriftPreset()])` (numerical and categorical
    columns declared), timed from the read to the finished report (its
    import, ~3 s, left out), and the whole process.

Each run's figures are compared: the same test per column and the same
drift score within 1e-6 relative.

Usage (scripts/bench-drift sets up the environment):
    python benches/drift.py --kiln PATH [--reps R] [--quick]
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

NUMERIC = ["l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", "l_quantity",
           "l_extendedprice", "l_discount", "l_tax"]
CATEGORICAL = ["l_returnflag", "l_linestatus", "l_shipinstruct", "l_shipmode"]
TESTS = {"Wasserstein distance (normed)": "wasserstein", "Jensen-Shannon distance": "jensenshannon",
         "K-S p_value": "ks", "chi-square p_value": "chisquare", "Z-test p_value": "z"}

EVIDENTLY = """
import json, sys, time
start = time.perf_counter()
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset
imported = time.perf_counter()
numeric, categorical = json.loads(sys.argv[3]), json.loads(sys.argv[4])
ref = pd.read_parquet(sys.argv[1])
cur = pd.read_parquet(sys.argv[2])
dd = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=dd),
                                       Dataset.from_pandas(ref, data_definition=dd))
out = {}
for m in snap.dict()["metrics"]:
    c = m["config"]
    if c.get("type", "").endswith("ValueDrift"):
        out[c["column"]] = [c["method"], m["value"]]
print(json.dumps({"seconds": time.perf_counter() - imported, "columns": out}))
"""


def log(msg):
    print(f"[bench-drift] {msg}", file=sys.stderr, flush=True)


def tables(kiln, work):
    base = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")),
                        "kiln", "bench-data", "tpch-sf1")
    if not os.path.exists(os.path.join(base, ".complete")):
        log(f"generating TPC-H SF 1 with kiln datagen into {base}")
        subprocess.run([kiln, "datagen", "tpch", "--scale", "1", "--output", base], check=True)
        open(os.path.join(base, ".complete"), "w").close()
    # Decimals as doubles: pandas reads decimals as Python objects, which
    # Evidently cannot test.
    decimal = {"l_quantity", "l_extendedprice", "l_discount", "l_tax"}
    columns = ", ".join(f"CAST({c} AS DOUBLE) AS {c}" if c in decimal else c
                        for c in NUMERIC + CATEGORICAL)
    paths = {}
    for name, year in (("reference", 1993), ("current", 1997)):
        path = os.path.join(work, f"{name}.parquet")
        subprocess.run([kiln, "sql", "-c",
                        f"COPY (SELECT {columns} FROM '{base}/lineitem' WHERE l_shipdate >= "
                        f"DATE '{year}-01-01' AND l_shipdate < DATE '{year + 1}-01-01') "
                        f"TO '{path}'"], check=True, capture_output=True)
        paths[name] = path
    return paths


def run_kiln(cmd, out):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr}")
    with open(out) as f:
        doc = json.load(f)
    return elapsed, {c["column"]: [c["test"], c["drift_score"]] for c in doc["columns"]}


def run_evidently(python, paths):
    start = time.perf_counter()
    proc = subprocess.run([python, "-c", EVIDENTLY, paths["reference"], paths["current"],
                           json.dumps(NUMERIC), json.dumps(CATEGORICAL)],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: Evidently failed:\n{proc.stderr}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    columns = {c: [TESTS.get(m, m), v] for c, (m, v) in doc["columns"].items()}
    return elapsed, doc["seconds"], columns


def agreement(kiln, evidently):
    worst = 0.0
    for column, (test, score) in evidently.items():
        ours = kiln[column]
        if ours[0] != test:
            sys.exit(f"error: {column}: kiln chose {ours[0]}, Evidently {test}")
        rel = abs(ours[1] - score) / max(abs(score), 1e-300) if ours[1] != score else 0.0
        worst = max(worst, rel)
    if worst > 1e-6:
        sys.exit(f"error: drift scores differ by {worst:.2e} relative")
    return worst


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", required=True)
    p.add_argument("--evidently-python", default=sys.executable)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    reps = 2 if args.quick else args.reps
    work = tempfile.mkdtemp(prefix="kiln-bench-drift-")
    try:
        paths = tables(args.kiln, work)
        out = os.path.join(work, "drift.json")
        kiln_all = [args.kiln, "drift", paths["reference"], paths["current"], "--out", out]
        kiln_one = ["taskset", "-c", "0"] + kiln_all
        times = {"kiln": [], "kiln_1core": [], "evidently": [], "evidently_process": []}
        worst = 0.0
        for rep in range(reps + 1):
            t_all, ours = run_kiln(kiln_all, out)
            t_one, _ = run_kiln(kiln_one, out)
            t_proc, t_ev, theirs = run_evidently(args.evidently_python, paths)
            worst = max(worst, agreement(ours, theirs))
            log(f"run {rep}: kiln {t_all:.2f} s, kiln 1 core {t_one:.2f} s, "
                f"Evidently {t_ev:.2f} s ({t_proc:.2f} s with its process)")
            if rep == 0:
                continue  # warm-up
            times["kiln"].append(t_all)
            times["kiln_1core"].append(t_one)
            times["evidently"].append(t_ev)
            times["evidently_process"].append(t_proc)
        report(times, ours, worst, reps)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(times, columns, worst, reps):
    med = {k: statistics.median(v) for k, v in times.items()}
    import evidently
    lines = [
        "# Drift: kiln drift vs Evidently's DataDriftPreset",
        "",
        f"{datetime.date.today()}, {git_rev()}, {machine()}; Evidently {evidently.__version__}. "
        f"Produced by `scripts/bench-drift` (benches/drift.py); medians of {reps} interleaved "
        "runs after a warm-up.",
        "",
        "TPC-H SF 1 lineitem shipped in 1993 (reference) against 1997 (current), 12 columns "
        "(8 numeric, 4 categorical), from Parquet. Kiln: a fresh `kiln drift --out` process "
        "(start-up and reading included). Evidently: pandas reading the same files and "
        "`Report([DataDriftPreset()]).run(...)`, its import left out (and the whole process).",
        "",
        "| | median (min–max) | Evidently ÷ Kiln |",
        "| --- | --- | --- |",
        f"| kiln drift, all cores | {fmt_times(times['kiln'])} | "
        f"{med['evidently'] / med['kiln']:.1f}× |",
        f"| kiln drift, 1 core | {fmt_times(times['kiln_1core'])} | "
        f"{med['evidently'] / med['kiln_1core']:.1f}× |",
        f"| Evidently (read + report) | {fmt_times(times['evidently'])} | 1.0× |",
        f"| Evidently (whole process) | {fmt_times(times['evidently_process'])} | "
        f"{med['evidently_process'] / med['evidently']:.1f}× |",
        "",
        f"Agreement: every column got the same test, and the drift scores differ by at most "
        f"{worst:.1e} relative.",
        "",
        "| column | test | drift score |",
        "| --- | --- | --- |",
    ]
    for column in NUMERIC + CATEGORICAL:
        test, score = columns[column]
        lines.append(f"| {column} | {test} | {score:.6g} |")
    text = "\n".join(lines) + "\n"
    path = os.path.join(ROOT, "benches", "results", "drift.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
