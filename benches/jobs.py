#!/usr/bin/env python3
"""Jobs: what the embedding cache and the shared DAG save (issue 16).

Both comparisons run Kiln against Kiln without the feature, on the same
seeded corpus and model (all-MiniLM-L6-v2, CPU), interleaved in one
invocation, a fresh `kiln` process per run:

1. **A rerun with 5% of the texts changed.** Each repetition starts an
   empty cache, runs the embedding job over the corpus (the first run: every
   text embedded, the cache filled), changes every 20th text, and runs the
   job again with the cache (the rerun: 5% embedded, 95% read from the
   cache); beside them, the changed corpus embedded without a cache (what a
   rerun cost before). Reported: medians, rerun / first run, and the cache
   hits and misses of the rerun's report.
2. **One DAG against statement by statement.** A job whose two outputs
   read one `embed()` view: `kiln run job.sql` (the view computed once, its
   rows shared) against `kiln sql -f job.sql` (each statement on its own:
   the view computed again for each reader), alternately.

Usage (scripts/bench-jobs sets up the environment):
    python benches/jobs.py [--quick] [--rows N] [--reps R]
"""

import datetime
import json
import os
import shutil
import statistics
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (cargo_artifact, corpus, corpus_args, fmt_times, git_rev, machine,
                      model_dir, ROOT, run_timed)  # noqa: E402


def log(msg):
    print(f"[bench-jobs] {msg}", file=sys.stderr, flush=True)


def write_corpus(path, texts):
    pq.write_table(pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": texts}), path)


def changed(texts):
    """Every 20th text replaced: 5% of the corpus."""
    return [f"Changed: {t}" if i % 20 == 0 else t for i, t in enumerate(texts)]




def main():
    ap = corpus_args(__doc__, "jobs")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.reps = 1000, 2
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    texts = corpus(args.rows)
    original = os.path.join(args.work, "corpus.parquet")
    edited = os.path.join(args.work, "corpus_changed.parquet")
    write_corpus(original, texts)
    write_corpus(edited, changed(texts))
    mdir = model_dir()
    log("building Kiln (release)")
    kiln = cargo_artifact(["cargo", "build", "--release", "--bin", "kiln"], "kiln")
    env = dict(os.environ, NODEVICE_SELECT="1", KILN_DEVICE="cpu")

    def embed_job(name, src, cache):
        path = os.path.join(args.work, f"{name}.sql")
        out = os.path.join(args.work, f"{name}_out")
        set_cache = f"SET kiln.embed_cache = '{cache}';\n" if cache else ""
        with open(path, "w") as f:
            f.write(f"{set_cache}COPY (SELECT id, embed(text, '{mdir}') AS v FROM '{src}') "
                    f"TO '{out}' STORED AS PARQUET;\n")
        return path

    cache = os.path.join(args.work, "cache")
    first_job = embed_job("first", original, cache)
    rerun_job = embed_job("rerun", edited, cache)
    nocache_job = embed_job("nocache", edited, None)
    times = {"first run (cache empty)": [], "rerun, 5% changed (cache)": [],
             "rerun, 5% changed (no cache)": []}
    rerun_report = None
    for rep in range(args.reps):
        shutil.rmtree(cache, ignore_errors=True)
        report = os.path.join(args.work, "report.json")
        for name, job in [("rerun, 5% changed (no cache)", nocache_job),
                          ("first run (cache empty)", first_job),
                          ("rerun, 5% changed (cache)", rerun_job)]:
            time.sleep(0.5)
            times[name].append(run_timed([kiln, "run", job, "--report", report], env))
            if name.startswith("rerun, 5% changed (cache)"):
                rerun_report = json.load(open(report))
        log(f"run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))

    # 2. One DAG against statement by statement.
    dag_job = os.path.join(args.work, "dag.sql")
    with open(dag_job, "w") as f:
        f.write(f"CREATE VIEW e AS SELECT id, text, embed(text, '{mdir}') AS v FROM '{original}';\n"
                f"COPY (SELECT id, v FROM e) TO '{args.work}/dag_a' STORED AS PARQUET;\n"
                f"COPY (SELECT id, v FROM e WHERE length(text) > 100) TO '{args.work}/dag_b' "
                f"STORED AS PARQUET;\n")
    dag_times = {"kiln run (one DAG, view shared)": [], "kiln sql -f (statement by statement)": []}
    for rep in range(args.reps):
        time.sleep(0.5)
        dag_times["kiln run (one DAG, view shared)"].append(run_timed([kiln, "run", dag_job], env))
        time.sleep(0.5)
        dag_times["kiln sql -f (statement by statement)"].append(run_timed([kiln, "sql", "-f", dag_job], env))
        log(f"dag run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in dag_times.items()))

    med = {k: statistics.median(v) for k, v in {**times, **dag_times}.items()}
    rerun_ratio = med["rerun, 5% changed (cache)"] / med["first run (cache empty)"]
    nocache_ratio = med["rerun, 5% changed (cache)"] / med["rerun, 5% changed (no cache)"]
    dag_ratio = med["kiln run (one DAG, view shared)"] / med["kiln sql -f (statement by statement)"]
    rev = git_rev()
    lines = [
        "# Jobs: the embedding cache and the shared DAG (Kiln against Kiln without them)",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {machine()}; Kiln {rev}, release build, device cpu",
        f"- Model: all-MiniLM-L6-v2; corpus: {len(texts)} seeded mixed-length texts "
        f"(benchlib.corpus, the embedding benchmark's generator); 5% changed = every 20th text",
        f"- {args.reps} interleaved runs each, a fresh `kiln run` process per run; median (min–max)",
        f"- Command: `scripts/bench-jobs {' '.join(sys.argv[1:])}`",
        "",
        "## A rerun with 5% of the texts changed",
        "",
        "| run | time |",
        "|---|---|",
    ]
    for k, v in times.items():
        lines.append(f"| {k} | {fmt_times(v)} |")
    lines += [
        "",
        f"Rerun with the cache / first run: **{rerun_ratio:.3f}×**; "
        f"rerun with the cache / rerun without: **{nocache_ratio:.3f}×**.",
        f"The cached rerun's report: {rerun_report['embedded_rows']} rows embedded, "
        f"{rerun_report['embed_cache_hits']} cache hits, {rerun_report['embed_cache_misses']} misses.",
        "",
        "## Two outputs reading one embed() view",
        "",
        "| run | time |",
        "|---|---|",
    ]
    for k, v in dag_times.items():
        lines.append(f"| {k} | {fmt_times(v)} |")
    lines += ["", f"One DAG / statement by statement: **{dag_ratio:.3f}×**.", ""]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"texts": len(texts), "times": times, "dag_times": dag_times,
                   "rerun_over_first": rerun_ratio, "rerun_over_nocache": nocache_ratio,
                   "dag_over_one_by_one": dag_ratio, "rerun_report": rerun_report,
                   "kiln": rev, "command": f"scripts/bench-jobs {' '.join(sys.argv[1:])}"},
                  f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
