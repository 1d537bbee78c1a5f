"""The cost of distribution: Kiln on `kiln cluster local` against Kiln in one
process, on the same machine, interleaved in one invocation.

- TPC-H: each query as `kiln sql -f` locally and `kiln --cluster URL sql -f`
  on a local cluster (a scheduler and N executors as processes of this
  machine), A B A B ..., medians per query, the ratio cluster / local per
  query and for the sum of medians.
- Embedding: `kiln embed` of TPC-H's part names (p_name) with
  all-MiniLM-L6-v2, locally and on the cluster, interleaved, medians.

Both sides start a fresh `kiln` process per run (process start and table
registration are in both). The cluster's executors share this machine's
cores with each other, so the ratio measures what distribution costs
(planning on a scheduler, task scheduling, shuffles through files and
Arrow Flight), not what more machines would gain.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, cargo_artifact, git_rev, machine  # noqa: E402

TABLES = ["lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region"]


def log(msg):
    print(f"[bench-cluster] {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sf", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--executors", type=int, default=2)
    p.add_argument("--queries", default=",".join(str(i) for i in range(1, 23)))
    p.add_argument("--embed-rows", type=int, default=20000,
                   help="part names embedded (0: skip the embedding job)")
    p.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "cluster"))
    a = p.parse_args()
    a.query_list = [int(q) for q in a.queries.split(",") if q]
    return a


def sf_label(sf):
    return str(int(sf)) if sf == int(sf) else str(sf)


def timed(cmd):
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return elapsed, proc.stdout


def start_cluster(kiln, executors):
    proc = subprocess.Popen([kiln, "cluster", "local", "--port", "0", "--executors", str(executors)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("df://"):
        proc.kill()
        sys.exit("error: kiln cluster local did not start")
    return proc, url


def main():
    args = parse_args()
    log("building Kiln (release)")
    kiln = cargo_artifact(["cargo", "build", "--release", "--bin", "kiln"], "kiln")
    base = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                        "kiln", "bench-data", f"tpch-sf{sf_label(args.sf)}")
    if not os.path.isdir(os.path.join(base, "lineitem")):
        log(f"generating TPC-H SF {sf_label(args.sf)} into {base}")
        subprocess.run([kiln, "datagen", "tpch", "--scale", str(args.sf), "--output", base], check=True)
    cluster, url = start_cluster(kiln, args.executors)
    log(f"cluster at {url} with {args.executors} executors")
    work = tempfile.mkdtemp()
    ddl = "".join(f"CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{base}/{t}/';\n" for t in TABLES)
    results = []
    try:
        for q in args.query_list:
            with open(os.path.join(ROOT, "benches", "tpch", "queries", f"q{q}.sql")) as f:
                sql = f.read()
            script = os.path.join(work, f"q{q}.sql")
            with open(script, "w") as f:
                f.write(ddl + sql)
            sides = {"local": [kiln, "sql", "--format", "csv", "-f", script],
                     "cluster": [kiln, "--cluster", url, "sql", "--format", "csv", "-f", script]}
            times = {s: [] for s in sides}
            outputs = {}
            for rep in range(args.reps + 1):  # round 0 warms caches, untimed
                for side, cmd in sides.items():
                    seconds, out = timed(cmd)
                    outputs[side] = out
                    if rep > 0:
                        times[side].append(seconds)
            med = {s: statistics.median(t) for s, t in times.items()}
            same_rows = len(outputs["local"].splitlines()) == len(outputs["cluster"].splitlines())
            results.append({"q": q, "median": med, "runs": times, "same_row_count": same_rows})
            log(f"Q{q}: local {med['local'] * 1000:.0f} ms, cluster {med['cluster'] * 1000:.0f} ms, "
                f"x{med['cluster'] / med['local']:.2f}")
        embed = None
        if args.embed_rows > 0:
            subprocess.run([kiln, "model", "fetch", "all-MiniLM-L6-v2"], check=True, capture_output=True)
            texts = os.path.join(work, "names")
            subprocess.run([kiln, "sql", "-c", f"COPY (SELECT p_partkey, p_name FROM '{base}/part/' "
                            f"ORDER BY p_partkey LIMIT {args.embed_rows}) TO '{texts}/' STORED AS PARQUET"],
                           check=True, capture_output=True)
            times = {"local": [], "cluster": []}
            for rep in range(args.reps + 1):
                for side in times:
                    out = os.path.join(work, f"emb-{side}-{rep}")
                    cmd = ([kiln] + (["--cluster", url] if side == "cluster" else [])
                           + ["embed", texts, out, "--column", "p_name"])
                    seconds, _ = timed(cmd)
                    if rep > 0:
                        times[side].append(seconds)
            embed = {"rows": args.embed_rows, "runs": times,
                     "median": {s: statistics.median(t) for s, t in times.items()}}
            log(f"embed {args.embed_rows} rows: local {embed['median']['local']:.1f} s, "
                f"cluster {embed['median']['cluster']:.1f} s")
    finally:
        cluster.terminate()
        cluster.wait()
    write_report(args, results, embed)


def write_report(args, results, embed):
    os.makedirs(args.out, exist_ok=True)
    doc = {"sf": args.sf, "reps": args.reps, "executors": args.executors, "machine": machine(),
           "kiln": git_rev(), "queries": results, "embed": embed}
    with open(os.path.join(args.out, "cluster.json"), "w") as f:
        json.dump(doc, f, indent=1)
    local = sum(r["median"]["local"] for r in results)
    remote = sum(r["median"]["cluster"] for r in results)
    lines = [
        f"# Kiln on `kiln cluster local --executors {args.executors}` vs Kiln in one process",
        "",
        f"- TPC-H SF {sf_label(args.sf)}, {args.reps} interleaved runs per side after a warm-up round; "
        "medians; each run a fresh `kiln` process (`kiln sql -f` / `kiln --cluster URL sql -f`).",
        f"- Machine: {machine()}; Kiln {git_rev()}; all executors on this machine, on the CPU.",
        f"- Command: `scripts/bench-cluster --sf {sf_label(args.sf)} --reps {args.reps} "
        f"--executors {args.executors}`",
        "",
        "| query | local (ms) | cluster (ms) | cluster / local | same row count |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results:
        m = r["median"]
        lines.append(f"| Q{r['q']} | {m['local'] * 1000:.0f} | {m['cluster'] * 1000:.0f} | "
                     f"{m['cluster'] / m['local']:.2f} | {'yes' if r['same_row_count'] else 'NO'} |")
    lines.append(f"| **total** | **{local * 1000:.0f}** | **{remote * 1000:.0f}** | "
                 f"**{remote / local:.2f}** | |")
    if embed:
        m = embed["median"]
        lines += ["", f"Embedding {embed['rows']} part names with all-MiniLM-L6-v2 (`kiln embed`): "
                  f"local {m['local']:.1f} s, cluster {m['cluster']:.1f} s, "
                  f"cluster / local {m['cluster'] / m['local']:.2f}."]
    with open(os.path.join(args.out, "cluster.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    log(f"wrote {args.out}/cluster.md")


if __name__ == "__main__":
    main()
