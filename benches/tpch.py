#!/usr/bin/env python3
"""TPC-H side by side: Kiln against DataFusion, DuckDB and Polars.

Data comes from `kiln datagen tpch` (deterministic), cached under
~/.cache/kiln/bench-data/tpch-sf<SF>. Kiln and DataFusion run in one
long-lived process (benches/tpch_runner.rs, same build, same partitions);
DuckDB and Polars run in this process, every engine limited to the same
number of threads. For each query the engines run in turn (A B C D A B C D
...) after one warm-up round; the report gives medians, min–max, ratios and
row counts (a row count that differs from DataFusion's is flagged).

Run through scripts/bench-tpch, which installs the peers into an isolated
environment. Writes benches/results/tpch.md, tpch.json and tpch.png.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from benchlib import cargo_artifact, git_rev, machine, process_peak_rss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES = os.path.join(ROOT, "benches", "tpch", "queries")
TABLES = ["customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier"]


def log(msg):
    print(f"[bench-tpch] {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sf", type=float, default=1.0, help="TPC-H scale factor (default 1)")
    p.add_argument("--reps", type=int, default=5, help="timed runs per engine and query (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="routine mode: 2 timed runs per engine and query")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                   help="threads/partitions for every engine (default: all cores)")
    p.add_argument("--queries", default="1-22", help="e.g. 1-22 or 1,6,14")
    p.add_argument("--engines", default="kiln,datafusion,duckdb,polars")
    p.add_argument("--kiln-devices", default="auto",
                   help="Kiln runs once per device listed, e.g. auto,wgpu or cpu,cuda "
                        "(engine kiln for auto, kiln@DEVICE otherwise)")
    p.add_argument("--out", default=os.path.join(ROOT, "benches", "results"),
                   help="directory for tpch.md, tpch.json and tpch.png")
    a = p.parse_args()
    if a.quick:
        a.reps = 2
    if a.reps < 1 or a.sf <= 0 or a.threads < 1:
        p.error("--reps, --sf and --threads must be positive")
    qs = []
    for part in a.queries.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            qs += range(int(lo), int(hi) + 1)
        else:
            qs.append(int(part))
    if not qs or any(q < 1 or q > 22 for q in qs):
        p.error("--queries must name queries 1..22")
    a.query_list = qs
    a.engine_list = a.engines.split(",")
    unknown = set(a.engine_list) - {"kiln", "datafusion", "duckdb", "polars"}
    if unknown:
        p.error(f"unknown engines: {', '.join(sorted(unknown))}")
    if "kiln" in a.engine_list:
        at = a.engine_list.index("kiln")
        kilns = ["kiln" if d == "auto" else f"kiln@{d}" for d in a.kiln_devices.split(",") if d]
        if not kilns:
            p.error("--kiln-devices names no device")
        a.engine_list[at:at + 1] = kilns
    return a


def sf_label(sf):
    return f"{sf:g}"


def build():
    log("building Kiln (release): the kiln binary and the TPC-H runner")
    kiln = cargo_artifact(["cargo", "build", "--release", "--bin", "kiln"], "kiln")
    runner = cargo_artifact(["cargo", "bench", "--bench", "tpch_runner", "--no-run"], "tpch_runner")
    return kiln, runner


def data(kiln, sf):
    base = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")),
                        "kiln", "bench-data", f"tpch-sf{sf_label(sf)}")
    done = os.path.join(base, ".complete")
    if not os.path.exists(done):
        log(f"generating TPC-H SF {sf_label(sf)} with kiln datagen into {base}")
        subprocess.run([kiln, "datagen", "tpch", "--scale", str(sf), "--output", base], check=True)
        open(done, "w").close()
    return base


class Worker:
    """One engine in its own process, answering `run <engine> <query file>`
    with `ok <seconds> <rows>` or `err <message>`: Kiln and DataFusion in
    benches/tpch_runner.rs, DuckDB and Polars in this script's --worker
    mode. Separate processes keep each engine's peak memory its own."""

    def __init__(self, engine, cmd):
        # kiln@DEVICE is the runner's "kiln" engine on another device.
        self.engine = engine.split("@")[0]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            sys.exit(f"error: the {engine} worker did not start")
        self.version = ready[1] if len(ready) > 1 else None

    def run(self, q):
        self.proc.stdin.write(f"run {self.engine} {os.path.join(QUERIES, f'q{q}.sql')}\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        if reply.startswith("ok "):
            _, seconds, rows = reply.split()
            return float(seconds), int(rows), None
        return None, None, reply[4:] if reply.startswith("err ") else (reply or "worker exited")

    def peak_rss(self):
        return process_peak_rss(self.proc.pid)

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait()


def worker_main(engine, base, threads):
    """--worker mode: DuckDB or Polars behind the Worker protocol."""
    if engine == "duckdb":
        import duckdb
        con = duckdb.connect()
        con.execute(f"SET threads = {threads}")
        for t in TABLES:
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{base}/{t}/*.parquet')")
        version = duckdb.__version__
        run = lambda sql: len(con.execute(sql).fetchall())
    else:
        os.environ["POLARS_MAX_THREADS"] = str(threads)
        import polars as pl
        ctx = pl.SQLContext({t: pl.scan_parquet(f"{base}/{t}/*.parquet") for t in TABLES})
        version = pl.__version__
        run = lambda sql: ctx.execute(sql.rstrip().rstrip(";"), eager=False).collect().height
    print(f"ready {version}", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if parts == ["quit"]:
            break
        sql = open(parts[2]).read()
        started = time.perf_counter()
        try:
            rows = run(sql)
        except Exception as e:  # a query the engine rejects is reported, not fatal
            print(f"err {str(e).splitlines()[0][:160]}", flush=True)
            continue
        print(f"ok {time.perf_counter() - started:.6f} {rows}", flush=True)


def summarize(times):
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "runs": times}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, engine, base, threads = sys.argv
        return worker_main(engine, base, int(threads))
    args = parse_args()
    kiln, runner_exe = build()
    base = data(kiln, args.sf)
    workers = {}
    for e in args.engine_list:
        if e.split("@")[0] in ("kiln", "datafusion"):
            cmd = [runner_exe, "--data", base, "--partitions", str(args.threads),
                   "--engine", e.split("@")[0]]
            if "@" in e:
                cmd += ["--device", e.split("@")[1]]
        else:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", e, base, str(args.threads)]
        workers[e] = Worker(e, cmd)
    engines = {e: w.run for e, w in workers.items()}
    versions = {"kiln": git_rev()}
    versions.update({e: w.version for e, w in workers.items() if w.version})
    results = []
    for q in args.query_list:
        times = {e: [] for e in engines}
        rows, errors = {}, {}
        for rep in range(args.reps + 1):  # round 0 warms caches, untimed
            for e, run in engines.items():
                if e in errors:
                    continue
                seconds, n, err = run(q)
                if err is not None:
                    errors[e] = err
                    continue
                rows[e] = n
                if rep > 0:
                    times[e].append(seconds)
        stats = {e: summarize(t) for e, t in times.items() if t}
        results.append({"q": q, "stats": stats, "rows": rows, "errors": errors})
        log(f"Q{q}: " + ", ".join(f"{e} {s['median'] * 1000:.0f} ms" for e, s in stats.items())
            + "".join(f", {e} failed" for e in errors))
    peaks = {e: w.peak_rss() for e, w in workers.items()}
    for w in workers.values():
        w.close()
    write_report(args, results, versions, peaks)


def write_report(args, results, versions, peaks):
    engines = args.engine_list
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tpch.json"), "w") as f:
        json.dump({"args": vars(args), "machine": machine(), "versions": versions,
                   "peak_rss": peaks, "results": results}, f, indent=1)
    lines = [
        f"# TPC-H SF {sf_label(args.sf)}: Kiln vs DataFusion, DuckDB and Polars",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {machine()}; Kiln on device(s) {args.kiln_devices} (auto: a GPU when one is "
        "present, else the CPU; `kiln@wgpu` on a software adapter such as lavapipe measures plumbing, not a GPU)",
        "- Versions: Kiln " + versions["kiln"] + " (DataFusion 55.2 inside, and as the DataFusion peer)"
        + "".join(f"; {k} {v}" for k, v in versions.items() if k != "kiln")
        + f"; Python {platform.python_version()}",
        f"- {args.threads} threads/partitions per engine; {args.reps} timed runs per engine and query "
        "after one warm-up round, engines interleaved; median (min–max) in ms",
        f"- Data: `kiln datagen tpch --scale {sf_label(args.sf)}` (Parquet); queries: benches/tpch/queries/",
        f"- Command: `scripts/bench-tpch {' '.join(sys.argv[1:])}`",
        "",
        "| Query | " + " | ".join(engines) + " | Kiln / DataFusion | Kiln / best peer |",
        "|---|" + "---|" * (len(engines) + 2),
    ]
    totals = {e: 0.0 for e in engines}
    complete = {e: True for e in engines}
    for r in results:
        cells = []
        for e in engines:
            s = r["stats"].get(e)
            if s is None:
                cells.append("failed")
                complete[e] = False
                continue
            totals[e] += s["median"]
            flag = ""
            if "datafusion" in r["rows"] and r["rows"].get(e) != r["rows"]["datafusion"]:
                flag = f" ⚠ {r['rows'].get(e)} rows"
            cells.append(f"{s['median'] * 1000:.0f} ({s['min'] * 1000:.0f}–{s['max'] * 1000:.0f}){flag}")
        k = r["stats"].get("kiln")
        df = r["stats"].get("datafusion")
        vs_df = f"{k['median'] / df['median']:.2f}" if k and df else "–"
        peers = [r["stats"][e]["median"] for e in engines
                 if not e.startswith("kiln") and e in r["stats"]]
        vs_best = f"{k['median'] / min(peers):.2f}" if k and peers else "–"
        lines.append(f"| Q{r['q']} | " + " | ".join(cells) + f" | {vs_df} | {vs_best} |")
    lines.append("| **total** | " + " | ".join(
        f"{totals[e] * 1000:.0f}" + ("" if complete[e] else " (incomplete)") for e in engines)
        + (f" | {totals['kiln'] / totals['datafusion']:.2f} | |"
           if "kiln" in totals and "datafusion" in totals and complete["kiln"] and complete["datafusion"]
           else " | | |"))
    lines.append("| peak memory (RSS) | " + " | ".join(
        f"{peaks[e] / 2**20:,.0f} MiB" if peaks.get(e) else "?" for e in engines) + " | | |")
    lines += ["", "Ratios are of medians: below 1 means Kiln is faster. Each engine runs in its own "
              "process (peak memory is that process's high-water mark over all queries).", ""]
    failures = [(r["q"], e, msg) for r in results for e, msg in r["errors"].items()]
    if failures:
        lines += ["Queries an engine could not run:", ""]
        lines += [f"- Q{q} on {e}: {msg}" for q, e, msg in failures]
        lines.append("")
    chart = plot(args, results, engines)
    if chart:
        lines += [f"![per-query medians]({os.path.basename(chart)})", ""]
    path = os.path.join(args.out, "tpch.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    log(f"wrote {path}")
    print("\n".join(lines))


def plot(args, results, engines):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no chart")
        return None
    fig, ax = plt.subplots(figsize=(14, 5))
    width = 0.8 / len(engines)
    for i, e in enumerate(engines):
        xs, ys = [], []
        for j, r in enumerate(results):
            s = r["stats"].get(e)
            if s:
                xs.append(j + i * width)
                ys.append(s["median"] * 1000)
        ax.bar(xs, ys, width, label=e)
    ax.set_xticks([j + width * (len(engines) - 1) / 2 for j in range(len(results))])
    ax.set_xticklabels([f"Q{r['q']}" for r in results])
    ax.set_ylabel("median time (ms), log scale")
    ax.set_yscale("log")
    ax.set_title(f"TPC-H SF {sf_label(args.sf)}, {args.threads} threads")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(args.out, "tpch.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
