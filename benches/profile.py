#!/usr/bin/env python3
"""Profiling: `kiln profile` against whylogs (issue 20).

The table: TPC-H SF 1 lineitem (6 M rows, 16 columns, from `kiln datagen`),
its decimals as doubles (pandas reads decimals as Python objects, which
whylogs profiles as opaque objects), written once to Parquet.

Timed, interleaved after one warm-up each, medians of `--reps` runs:
  - kiln: a fresh `kiln profile FILE --out FILE` process (start-up, Parquet
    reading, every column's statistics, distinct count, quantiles and most
    frequent values), on all cores and on one (`taskset`);
  - whylogs: a fresh Python process that reads the file with pandas and
    runs `why.log(df).view()` (counts, types, distribution with KLL
    quantiles, HyperLogLog cardinality, frequent items per column), timed
    from the read to the finished view (its import left out), and the whole
    process.

Each run's figures are compared: every column's count; for numeric columns
the mean (1e-9 relative), min and max (equal), the median within 2% of the
column's range (both are sketches: a t-digest interpolates between the
integer quantities, KLL does not); the distinct estimates within 5% of each
other (both HyperLogLog; whylogs estimates none for dates).

Usage (scripts/bench-profile sets up the environment):
    python benches/profile.py --kiln PATH [--reps R] [--quick]
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

DECIMALS = ["l_quantity", "l_extendedprice", "l_discount", "l_tax"]
COLUMNS = ["l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", *DECIMALS, "l_returnflag",
           "l_linestatus", "l_shipdate", "l_commitdate", "l_receiptdate", "l_shipinstruct",
           "l_shipmode", "l_comment"]
NUMERIC = ["l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", *DECIMALS]

WHYLOGS = """
import json, sys, time
start = time.perf_counter()
import pandas as pd
import whylogs as why
imported = time.perf_counter()
df = pd.read_parquet(sys.argv[1])
view = why.log(df).view().to_pandas()
seconds = time.perf_counter() - imported
out = {}
for column, row in view.iterrows():
    def num(key):
        value = row.get(key)
        return None if value is None or value != value else float(value)
    out[column] = {"n": num("counts/n"), "mean": num("distribution/mean"),
                   "min": num("distribution/min"), "max": num("distribution/max"),
                   "median": num("distribution/median"), "distinct": num("cardinality/est")}
print(json.dumps({"seconds": seconds, "columns": out}))
"""


def log(msg):
    print(f"[bench-profile] {msg}", file=sys.stderr, flush=True)


def table(kiln, work):
    base = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")),
                        "kiln", "bench-data", "tpch-sf1")
    if not os.path.exists(os.path.join(base, ".complete")):
        log(f"generating TPC-H SF 1 with kiln datagen into {base}")
        subprocess.run([kiln, "datagen", "tpch", "--scale", "1", "--output", base], check=True)
        open(os.path.join(base, ".complete"), "w").close()
    columns = ", ".join(f"CAST({c} AS DOUBLE) AS {c}" if c in DECIMALS else c for c in COLUMNS)
    path = os.path.join(work, "lineitem.parquet")
    subprocess.run([kiln, "sql", "-c", f"COPY (SELECT {columns} FROM '{base}/lineitem') "
                    f"TO '{path}'"], check=True, capture_output=True)
    return path


def run_kiln(cmd, out):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr}")
    with open(out) as f:
        doc = json.load(f)
    return elapsed, {c["column"]: c for c in doc["columns"]}


def run_whylogs(python, path):
    start = time.perf_counter()
    proc = subprocess.run([python, "-c", WHYLOGS, path], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: whylogs failed:\n{proc.stderr}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return elapsed, doc["seconds"], doc["columns"]


def agreement(ours, theirs):
    """The largest relative differences: (mean, median / range, distinct)."""
    worst = [0.0, 0.0, 0.0]
    for column in COLUMNS:
        k, w = ours[column], theirs[column]
        if int(k["rows"]) != int(w["n"]):
            sys.exit(f"error: {column}: kiln counts {k['rows']} rows, whylogs {w['n']}")
        # whylogs estimates no cardinality for dates (pandas objects): 0.
        if w["distinct"]:
            d = abs(k["distinct_approx"] - w["distinct"]) / max(w["distinct"], 1.0)
            worst[2] = max(worst[2], d)
        if column not in NUMERIC:
            continue
        if float(k["min"]) != w["min"] or float(k["max"]) != w["max"]:
            sys.exit(f"error: {column}: min/max {k['min']}/{k['max']} against "
                     f"{w['min']}/{w['max']}")
        worst[0] = max(worst[0], abs(k["mean"] - w["mean"]) / max(abs(w["mean"]), 1e-300))
        span = max(w["max"] - w["min"], 1e-300)
        worst[1] = max(worst[1], abs(k["p50"] - w["median"]) / span)
    if worst[0] > 1e-9 or worst[1] > 0.02 or worst[2] > 0.05:
        sys.exit(f"error: the profiles differ: mean {worst[0]:.1e}, median {worst[1]:.1e} of "
                 f"the range, distinct {worst[2]:.1e}")
    return worst


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", required=True)
    p.add_argument("--whylogs-python", default=sys.executable)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    reps = 2 if args.quick else args.reps
    work = tempfile.mkdtemp(prefix="kiln-bench-profile-")
    try:
        path = table(args.kiln, work)
        out = os.path.join(work, "profile.json")
        kiln_all = [args.kiln, "profile", path, "--out", out]
        kiln_one = ["taskset", "-c", "0"] + kiln_all
        times = {"kiln": [], "kiln_1core": [], "whylogs": [], "whylogs_process": []}
        worst = [0.0, 0.0, 0.0]
        for rep in range(reps + 1):
            t_all, ours = run_kiln(kiln_all, out)
            t_one, _ = run_kiln(kiln_one, out)
            t_proc, t_why, theirs = run_whylogs(args.whylogs_python, path)
            worst = [max(a, b) for a, b in zip(worst, agreement(ours, theirs))]
            log(f"run {rep}: kiln {t_all:.2f} s, kiln 1 core {t_one:.2f} s, "
                f"whylogs {t_why:.2f} s ({t_proc:.2f} s with its process)")
            if rep == 0:
                continue  # warm-up
            times["kiln"].append(t_all)
            times["kiln_1core"].append(t_one)
            times["whylogs"].append(t_why)
            times["whylogs_process"].append(t_proc)
        report(times, worst, reps, args.whylogs_python)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(times, worst, reps, python):
    med = {k: statistics.median(v) for k, v in times.items()}
    version = subprocess.run([python, "-c", "import whylogs; print(whylogs.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    lines = [
        "# Profiling: kiln profile vs whylogs",
        "",
        f"{datetime.date.today()}, {git_rev()}, {machine()}; whylogs {version}. "
        f"Produced by `scripts/bench-profile` (benches/profile.py); medians of {reps} "
        "interleaved runs after a warm-up.",
        "",
        "TPC-H SF 1 lineitem (6,001,215 rows, 16 columns: 8 numeric, 3 dates, 5 text), from "
        "Parquet. Kiln: a fresh `kiln profile --out` process (start-up and reading included; "
        "counts, NULLs, HyperLogLog distinct, min/max, mean, stddev, t-digest quantiles, text "
        "lengths and the 20 most frequent values per column). whylogs: pandas reading the same "
        "file and `why.log(df).view()` (counts, types, KLL quantiles, HyperLogLog, frequent "
        "items per column), its import left out (and the whole process).",
        "",
        "| | median (min–max) | whylogs ÷ Kiln |",
        "| --- | --- | --- |",
        f"| kiln profile, all cores | {fmt_times(times['kiln'])} | "
        f"{med['whylogs'] / med['kiln']:.1f}× |",
        f"| kiln profile, 1 core | {fmt_times(times['kiln_1core'])} | "
        f"{med['whylogs'] / med['kiln_1core']:.1f}× |",
        f"| whylogs (read + profile) | {fmt_times(times['whylogs'])} | 1.0× |",
        f"| whylogs (whole process) | {fmt_times(times['whylogs_process'])} | "
        f"{med['whylogs_process'] / med['whylogs']:.1f}× |",
        "",
        f"Agreement: every column's count equal; numeric columns' min and max equal, means "
        f"within {worst[0]:.1e} relative, medians (both sketches) within {worst[1]:.1e} of the "
        f"column's range; distinct estimates (both HyperLogLog) within {worst[2]:.1e} of each "
        "other (whylogs gives none for the three date columns, which pandas reads as objects).",
    ]
    text = "\n".join(lines) + "\n"
    path = os.path.join(ROOT, "benches", "results", "profile.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
