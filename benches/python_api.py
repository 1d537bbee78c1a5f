#!/usr/bin/env python3
"""Kiln's Python API against the `kiln` CLI, and Kiln → polars against Polars.

Four comparisons, each interleaved (A B A B ...) after one warm-up round,
reported as medians, min–max and ratios:

1. **TPC-H SF 1 in a long-lived process**: Kiln's Rust API
   (benches/tpch_runner.rs, `session.sql(q)` + `collect()`) against Kiln's
   Python API in this process (`s.sql(q).to_arrow()`), same session
   settings and tables: the Python layer's own overhead per query.
2. **TPC-H SF 1 as scripts**: a fresh `kiln sql` process against a fresh
   Python process doing `kiln.Session()`, `register_parquet` of the eight
   tables and `s.sql(q).to_arrow()` (interpreter start and `import kiln`
   included, as a user's script pays them), and the start-up alone
   (`SELECT 1` both ways).
3. **An embedding job**: `kiln embed IN OUT --column text` against
   `s.read_parquet(IN).embed("text").write_parquet(OUT)` in a fresh Python
   process, on the embedding benchmark's seeded corpus.
4. **A large result into polars**, in one long-lived process each:
   `polars.from_arrow(s.sql(q).to_arrow())` against Polars' own engine
   (`pl.scan_parquet(...).filter(...).select(...).collect()`) on the same
   Parquet, the same filter and columns.

Run through scripts/bench-python, which builds the `kiln` binary and the
Python wheel (release) and installs the wheel and polars into an isolated
environment. Writes benches/results/python_api.md and python_api.json.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

from benchlib import cargo_artifact, corpus, fmt_times, git_rev, machine, model_dir, run_timed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES = os.path.join(ROOT, "benches", "tpch", "queries")
TABLES = ["customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier"]

PY_QUERY = """
import sys, kiln
s = kiln.Session(device=sys.argv[3])
base = sys.argv[1]
for t in {tables!r}:
    s.register_parquet(t, f"{{base}}/{{t}}")
sql = open(sys.argv[2]).read()
statements = [x for x in sql.split(";") if x.strip()]
for x in statements[:-1]:
    s.sql(x).to_arrow()
print(s.sql(statements[-1]).to_arrow().num_rows)
""".format(tables=TABLES)

PY_START = """
import sys, kiln
kiln.Session(device=sys.argv[1]).sql("SELECT 1").to_arrow()
"""

PY_EMBED = """
import sys, kiln
s = kiln.Session(device=sys.argv[4])
n = s.read_parquet(sys.argv[1]).embed("text", as_="embedding", model=sys.argv[3]).write_parquet(sys.argv[2])
print(n)
"""

POLARS_FILTER = "l_shipdate >= DATE '1995-01-01' AND l_discount > 0.05"


def log(msg):
    print(f"[bench-python] {msg}", file=sys.stderr, flush=True)


def tpch_data(kiln, sf):
    base = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")),
                        "kiln", "bench-data", f"tpch-sf{sf:g}")
    if not os.path.exists(os.path.join(base, ".complete")):
        log(f"generating TPC-H SF {sf:g} with kiln datagen into {base}")
        subprocess.run([kiln, "datagen", "tpch", "--scale", str(sf), "--output", base], check=True)
        open(os.path.join(base, ".complete"), "w").close()
    return base


def interleave(cmds, reps, env):
    """Each command once to warm up, then `reps` rounds in turn: seconds per command."""
    for cmd in cmds.values():
        run_timed(cmd, env)
    times = {name: [] for name in cmds}
    for _ in range(reps):
        for name, cmd in cmds.items():
            times[name].append(run_timed(cmd, env))
    return times


def in_process_comparison(runner, base, qs, reps, device):
    """Per query: the Rust runner's time (its own clock) and this process's
    `s.sql(q).to_arrow()`, interleaved after a warm-up of each."""
    import kiln

    threads = os.cpu_count() or 2
    proc = subprocess.Popen([runner, "--data", base, "--partitions", str(threads), "--device", device,
                             "--engine", "kiln"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        sys.exit("error: the TPC-H runner did not start")

    def rust(path):
        proc.stdin.write(f"run kiln {path}\n")
        proc.stdin.flush()
        reply = proc.stdout.readline().split()
        if not reply or reply[0] != "ok":
            sys.exit(f"error: the runner failed on {path}: {' '.join(reply)}")
        return float(reply[1]), int(reply[2])

    s = kiln.Session(device=device, target_partitions=threads)
    for t in TABLES:
        s.register_parquet(t, f"{base}/{t}/")

    def python(path):
        sql = open(path).read()
        start = time.perf_counter()
        rows = s.sql(sql).to_arrow().num_rows
        return time.perf_counter() - start, rows

    out = {}
    for q in qs:
        path = os.path.join(QUERIES, f"q{q}.sql")
        log(f"in-process q{q}")
        _, rust_rows = rust(path)
        _, py_rows = python(path)
        if rust_rows != py_rows:
            sys.exit(f"error: q{q}: the Rust API gave {rust_rows} rows, Python {py_rows}")
        times = {"rust": [], "python": []}
        for _ in range(reps):
            times["rust"].append(rust(path)[0])
            times["python"].append(python(path)[0])
        out[q] = times
    proc.stdin.write("quit\n")
    proc.stdin.flush()
    proc.wait()
    return out


def polars_comparison(base, reps):
    import polars as pl

    import kiln

    s = kiln.Session(device="cpu")
    s.register_parquet("lineitem", f"{base}/lineitem")
    columns = ["l_orderkey", "l_partkey", "l_quantity", "l_extendedprice", "l_discount", "l_shipdate"]
    query = f"SELECT {', '.join(columns)} FROM lineitem WHERE {POLARS_FILTER}"

    def via_kiln():
        return pl.from_arrow(s.sql(query).to_arrow())

    def via_polars():
        import datetime as dt
        return (
            pl.scan_parquet(f"{base}/lineitem/*.parquet")
            .filter((pl.col("l_shipdate") >= dt.date(1995, 1, 1)) & (pl.col("l_discount") > 0.05))
            .select(columns)
            .collect()
        )

    def via_kiln_arrow():
        return s.sql(query).to_arrow()

    runs = {
        "Kiln → to_arrow (pyarrow Table)": via_kiln_arrow,
        "Kiln → to_arrow → polars": via_kiln,
        "Polars (scan_parquet, lazy)": via_polars,
    }
    rows = {}
    for name, f in runs.items():
        result = f()
        rows[name] = result.num_rows if hasattr(result, "num_rows") else result.height
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, f in runs.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return query, rows, times


def ratio_table(results, base, name, base_name, digits):
    """Markdown rows: per query the base's and Python's times and their
    ratio, the sum of medians, and the median ratio."""
    med = statistics.median
    lines = [f"| query | {base_name} | {name} | {name} / {base_name} |", "|---|---|---|---|"]
    ratios = []
    for q, t in results.items():
        r = med(t["python"]) / med(t[base])
        ratios.append(r)
        lines.append(f"| q{q} | {fmt_times(t[base], digits)} | {fmt_times(t['python'], digits)} | {r:.2f}× |")
    total_base = sum(med(t[base]) for t in results.values())
    total = sum(med(t["python"]) for t in results.values())
    lines += [
        f"| **sum of medians** | {total_base:.2f} s | {total:.2f} s | {total / total_base:.2f}× |",
        "",
        f"Median ratio over the queries: {med(ratios):.2f}× (range {min(ratios):.2f}–{max(ratios):.2f}).",
        "",
    ]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", required=True, help="the kiln binary (release)")
    ap.add_argument("--sf", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--queries", default="1-22")
    ap.add_argument("--rows", type=int, default=2000, help="texts in the embedding job")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="queries 1,3,6,12,18; 1000 texts; 2 runs")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results"))
    a = ap.parse_args()
    if a.quick:
        a.queries, a.rows, a.reps = "1,3,6,12,18", 1000, 2
    qs = []
    for part in a.queries.split(","):
        lo, _, hi = part.partition("-")
        qs += range(int(lo), int(hi or lo) + 1)

    env = dict(os.environ, NODEVICE_SELECT="1")
    base = tpch_data(a.kiln, a.sf)
    table_args = [f"--table={t}={base}/{t}" for t in TABLES]
    py = sys.executable

    log("building the TPC-H runner (Kiln's Rust API in a long-lived process)")
    runner = cargo_artifact(["cargo", "bench", "--bench", "tpch_runner", "--no-run"], "tpch_runner")
    in_process = in_process_comparison(runner, base, qs, a.reps, a.device)

    log("start-up: SELECT 1")
    startup = interleave({
        "cli": [a.kiln, "sql", "--device", a.device, "-c", "SELECT 1", "--format", "csv"],
        "python": [py, "-c", PY_START, a.device],
    }, a.reps, env)

    tpch = {}
    for q in qs:
        path = os.path.join(QUERIES, f"q{q}.sql")
        log(f"TPC-H q{q}")
        cmds = {
            "cli": [a.kiln, "sql", "--device", a.device, *table_args, "-f", path, "--format", "csv"],
            "python": [py, "-c", PY_QUERY, base, path, a.device],
        }
        tpch[q] = interleave(cmds, a.reps, env)

    log(f"embedding job: {a.rows} texts")
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = os.path.expanduser("~/.cache/kiln/bench-data/python_api")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, f"texts_{a.rows}.parquet")
    if not os.path.exists(src):
        pq.write_table(pa.table({"id": list(range(a.rows)), "text": corpus(a.rows)}), src)
    mdir = model_dir()
    embed = interleave({
        "cli": [a.kiln, "embed", src, os.path.join(work, "cli.parquet"), "--column", "text",
                "--model", mdir, "--device", a.device],
        "python": [py, "-c", PY_EMBED, src, os.path.join(work, "py.parquet"), mdir, a.device],
    }, a.reps, env)

    log("lineitem into polars")
    pl_query, pl_rows, pl_times = polars_comparison(base, max(a.reps, 3))

    med = statistics.median
    lines = [
        "# Python API: overhead against the CLI, and Kiln → polars against Polars",
        "",
        f"- Run: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, commit {git_rev()}",
        f"- Machine: {machine()}",
        f"- Command: `{' '.join(['scripts/bench-python'] + sys.argv[3:])}`",
        f"- One warm-up round, then {a.reps} interleaved runs; device `{a.device}`; TPC-H SF {a.sf:g} "
        f"from `kiln datagen`. Scripts and jobs: a fresh process per run (interpreter start and "
        f"`import kiln` included); the first and last sections: one long-lived process per side.",
        "",
        "## TPC-H in a long-lived process: Rust API against Python API",
        "",
        "Rust: `session.sql(q).await?.collect()` in benches/tpch_runner.rs; Python: `s.sql(q).to_arrow()` "
        "in one interpreter; same device, partitions and tables.",
        "",
    ]
    lines += ratio_table(in_process, "rust", "Python", "Rust", digits=3)
    lines += [
        "## TPC-H as scripts: `kiln sql -f qN.sql` against a Python script, fresh processes",
        "",
        f"Start-up alone (`SELECT 1`): CLI {fmt_times(startup['cli'])}, Python {fmt_times(startup['python'])} "
        f"(interpreter, `import kiln` and pyarrow).",
        "",
    ]
    lines += ratio_table(tpch, "cli", "Python", "CLI", digits=2)
    lines += [
        f"## Embedding job ({a.rows} texts, all-MiniLM-L6-v2, Parquet in and out)",
        "",
        "| | time | Python / CLI |",
        "|---|---|---|",
        f"| `kiln embed` | {fmt_times(embed['cli'])} | |",
        f"| `read_parquet().embed().write_parquet()` | {fmt_times(embed['python'])} | "
        f"{med(embed['python']) / med(embed['cli']):.2f}× |",
        "",
        "## A large result into polars (one long-lived process each)",
        "",
        f"`{pl_query}` — {pl_rows['Kiln → to_arrow → polars']:,} rows "
        f"(Polars: {pl_rows['Polars (scan_parquet, lazy)']:,}). The first row is the query alone: "
        f"the polars conversion costs the difference (no copy).",
        "",
        "| | time | vs Polars |",
        "|---|---|---|",
    ]
    polars_med = med(pl_times["Polars (scan_parquet, lazy)"])
    for name, t in pl_times.items():
        lines.append(f"| {name} | {fmt_times(t, 3)} | {polars_med / med(t):.2f}× as fast |")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "python_api.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "python_api.json"), "w") as f:
        json.dump({"in_process": {str(q): t for q, t in in_process.items()}, "startup": startup,
                   "tpch": {str(q): t for q, t in tpch.items()}, "embed": embed,
                   "polars": pl_times, "rows": pl_rows}, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
