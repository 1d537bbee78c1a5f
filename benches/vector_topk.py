#!/usr/bin/env python3
"""Exact top-k vector search: Kiln against faiss-cpu and numpy, side by side.

Two comparisons, each run in this one invocation with the engines interleaved
(A B C A B C ...), reporting medians, min-max and ratios:

1. Kernel: the search alone, corpus and queries already in memory.
   - Kiln: `VectorSearch` (kiln-kernels) in a long-lived process
     (benches/vector_topk_kernel.rs) driven over a pipe, so process start-up and
     loading are outside the timing, as they are for the Python peers.
   - faiss: IndexFlatIP.search, with distance_compute_blas_threshold lowered to
     1 so it takes its GEMM path for every query batch.
   - numpy: corpus @ queries.T, argpartition, then a sort of the k winners,
     one corpus block at a time (so the score matrix stays bounded).
2. Whole job: Parquet in, top-k to Parquet out, each a fresh process.
   - Kiln: `kiln sql` running COPY (SELECT ... FROM knn_join(...)) TO '...'.
   - pyarrow + faiss: read both tables, build IndexFlatIP, search, write.

The corpus is N seeded random unit vectors (so inner product = cosine, as for
embeddings); the metric is the inner product. Threads: every engine uses all
cores of the machine (rayon, OpenMP, BLAS).

Usage (from the repository root; scripts/bench-vector sets up the environment):
    python benches/vector_topk.py [--quick] [--n N] [--dim D] [--k K]
        [--queries 1,16,256] [--reps R] [--out benches/results/vector_topk.md]
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import faiss

from benchlib import cargo_artifact, git_rev, machine, process_peak_rss, run_measured, self_peak_rss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(f"[vector_topk] {msg}", file=sys.stderr, flush=True)


def make_data(work, n, dim, max_q, seed=42):
    """Seeded unit vectors: raw f32 files for the kernels, Parquet for the jobs."""
    tag = f"n{n}_d{dim}_q{max_q}_s{seed}"
    base = os.path.join(work, tag)
    done = os.path.join(base, "done")
    if os.path.exists(done):
        return base
    os.makedirs(base, exist_ok=True)
    rng = np.random.default_rng(seed)
    log(f"generating {n} x {dim} corpus and {max_q} queries in {base}")
    corpus = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        block = rng.standard_normal((min(step, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        corpus[start:start + len(block)] = block
    queries = rng.standard_normal((max_q, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    corpus.tofile(os.path.join(base, "corpus.f32"))
    queries.tofile(os.path.join(base, "queries.f32"))

    def table(ids, vectors):
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        emb = pa.FixedSizeListArray.from_arrays(flat, dim)
        return pa.table({"id": pa.array(ids, type=pa.int64()), "embedding": emb})

    writer = None
    for start in range(0, n, step):
        t = table(np.arange(start, min(start + step, n)), corpus[start:start + step])
        if writer is None:
            writer = pq.ParquetWriter(os.path.join(base, "corpus.parquet"), t.schema)
        writer.write_table(t, row_group_size=step)
    writer.close()
    os.makedirs(os.path.join(base, "queries"), exist_ok=True)
    for q in sorted(set([1, 16, 256, max_q])):
        if q <= max_q:
            pq.write_table(table(np.arange(q), queries[:q]),
                           os.path.join(base, "queries", f"q{q}.parquet"))
    open(done, "w").close()
    return base


def build_kiln():
    log("building Kiln (release): kiln binary and the kernel bench")
    kiln = cargo_artifact(["cargo", "build", "--release", "--bin", "kiln"], "kiln")
    exe = cargo_artifact(["cargo", "bench", "--bench", "vector_topk_kernel", "--no-run"],
                         "vector_topk_kernel")
    return kiln, exe


class KilnKernel:
    def __init__(self, exe, base, dim, device):
        self.proc = subprocess.Popen(
            [exe, "--corpus", os.path.join(base, "corpus.f32"),
             "--queries", os.path.join(base, "queries.f32"), "--dim", str(dim),
             "--device", device],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            sys.exit(f"error: kernel process did not start: {ready}")

    def run(self, q, k):
        self.proc.stdin.write(f"run {q} {k} dot\n")
        self.proc.stdin.flush()
        seconds, ids = self.proc.stdout.readline().split()
        return float(seconds), [int(i) for i in ids.split(",")]

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait()


def settle():
    time.sleep(0.5)


def faiss_search(index, queries, k):
    start = time.perf_counter()
    _, ids = index.search(queries, k)
    return time.perf_counter() - start, [int(i) for i in ids[0]]


def numpy_search(corpus, queries, k, block=262_144):
    start = time.perf_counter()
    best_s = None
    best_i = None
    for b0 in range(0, len(corpus), block):
        s = queries @ corpus[b0:b0 + block].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(s, part, axis=1)
        pi = part + b0
        if best_s is None:
            best_s, best_i = ps, pi
        else:
            cs = np.concatenate([best_s, ps], axis=1)
            ci = np.concatenate([best_i, pi], axis=1)
            top = np.argpartition(-cs, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(cs, top, axis=1)
            best_i = np.take_along_axis(ci, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    ids = np.take_along_axis(best_i, order, axis=1)
    return time.perf_counter() - start, [int(i) for i in ids[0]]


PEER_JOB = r'''
import sys, time
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, faiss
corpus_path, query_path, out_path, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def load(path):
    t = pq.read_table(path)
    emb = t.column("embedding").combine_chunks()
    dim = emb.type.list_size
    return t.column("id").to_numpy(), emb.flatten().to_numpy().reshape(-1, dim)
cid, c = load(corpus_path)
qid, q = load(query_path)
faiss.cvar.distance_compute_blas_threshold = 1
index = faiss.IndexFlatIP(c.shape[1])
index.add(c)
scores, ids = index.search(q, k)
rank = np.tile(np.arange(1, k + 1, dtype=np.uint32), len(q))
pq.write_table(pa.table({
    "query_id": np.repeat(qid, k), "corpus_id": cid[ids.reshape(-1)],
    "rank": rank, "score": scores.reshape(-1)}), out_path)
'''


def run_job(cmd, env, peaks, name):
    elapsed, peak, proc = run_measured(cmd, env)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr}")
    peaks[name] = max(peaks.get(name, 0), peak)
    return elapsed


def summarize(times):
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "runs": len(times)}


def recall(a, b):
    return len(set(a) & set(b)) / max(1, len(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=200000, 3 reps, Q in 1,16,256")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", default="1,16,256")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/kiln/bench-data"))
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "vector_topk.md"))
    ap.add_argument("--skip-jobs", action="store_true", help="kernel comparison only")
    ap.add_argument("--kiln-device", default="auto",
                    help="the device Kiln runs on: auto (default: a GPU when present, else the CPU), cpu, wgpu, cuda")
    args = ap.parse_args()
    if args.quick:
        args.n, args.reps = 200_000, 3
    qs = [int(q) for q in args.queries.split(",")]
    base = make_data(args.work, args.n, args.dim, max(qs))
    kiln_bin, kernel_exe = build_kiln()

    corpus = np.fromfile(os.path.join(base, "corpus.f32"), dtype=np.float32).reshape(-1, args.dim)
    queries = np.fromfile(os.path.join(base, "queries.f32"), dtype=np.float32).reshape(-1, args.dim)
    faiss.cvar.distance_compute_blas_threshold = 1
    index = faiss.IndexFlatIP(args.dim)
    index.add(corpus)
    kernel = KilnKernel(kernel_exe, base, args.dim, args.kiln_device)

    kernel_rows = []
    for q in qs:
        times = {"Kiln": [], "faiss": [], "numpy": []}
        ids = {}
        xq = np.ascontiguousarray(queries[:q])
        # One untimed warm-up each, then interleaved timed runs.
        kernel.run(q, args.k), faiss_search(index, xq, args.k), numpy_search(corpus, xq, args.k)
        for _ in range(args.reps):
            # A pause before each run lets the previous engine's worker
            # threads (OpenMP and BLAS spin after a parallel region) go idle.
            settle()
            t, ids["Kiln"] = kernel.run(q, args.k)
            times["Kiln"].append(t)
            settle()
            t, ids["faiss"] = faiss_search(index, xq, args.k)
            times["faiss"].append(t)
            settle()
            t, ids["numpy"] = numpy_search(corpus, xq, args.k)
            times["numpy"].append(t)
        row = {"q": q, "stats": {e: summarize(v) for e, v in times.items()},
               "recall_vs_faiss": recall(ids["Kiln"], ids["faiss"]),
               "recall_numpy_vs_faiss": recall(ids["numpy"], ids["faiss"])}
        kernel_rows.append(row)
        log(f"kernel Q={q}: " + ", ".join(
            f"{e} {s['median'] * 1000:.1f} ms" for e, s in row["stats"].items()))
    # Peak memory: Kiln's kernel process holds the corpus and its search;
    # faiss and numpy share this harness process (corpus, index, scores).
    kernel_peaks = {"Kiln": process_peak_rss(kernel.proc.pid), "faiss+numpy (harness)": self_peak_rss()}
    kernel.close()

    job_rows = []
    if not args.skip_jobs:
        peer = os.path.join(args.work, "peer_knn_job.py")
        with open(peer, "w") as f:
            f.write(PEER_JOB)
        out_dir = os.path.join(args.work, "out")
        os.makedirs(out_dir, exist_ok=True)
        env = dict(os.environ, NODEVICE_SELECT="1")
        corpus_pq = os.path.join(base, "corpus.parquet")
        for q in qs:
            qpath = os.path.join(base, "queries", f"q{q}.parquet")
            kiln_out = os.path.join(out_dir, f"kiln_q{q}.parquet")
            peer_out = os.path.join(out_dir, f"peer_q{q}.parquet")
            sql = (f"COPY (SELECT id AS query_id, corpus_id, rank, score FROM "
                   f"knn_join('q', 'embedding', 'c', 'embedding', {args.k}, 'dot')) "
                   f"TO '{kiln_out}' STORED AS PARQUET")
            kiln_cmd = [kiln_bin, "sql", "--device", args.kiln_device, "--table", f"c={corpus_pq}",
                        "--table", f"q={qpath}", "-c", sql]
            peer_cmd = [sys.executable, peer, corpus_pq, qpath, peer_out, str(args.k)]
            times = {"Kiln": [], "pyarrow+faiss": []}
            peaks = {}
            for _ in range(args.reps):
                times["Kiln"].append(run_job(kiln_cmd, env, peaks, "Kiln"))
                times["pyarrow+faiss"].append(run_job(peer_cmd, env, peaks, "pyarrow+faiss"))
            a = pq.read_table(kiln_out).sort_by([("query_id", "ascending"), ("rank", "ascending")])
            b = pq.read_table(peer_out).sort_by([("query_id", "ascending"), ("rank", "ascending")])
            pairs = lambda t: list(zip(t.column("query_id").to_pylist(), t.column("corpus_id").to_pylist()))
            same = recall(pairs(a), pairs(b))
            job_rows.append({"q": q, "stats": {e: summarize(v) for e, v in times.items()},
                             "rows": a.num_rows, "recall_vs_faiss": same, "peak_rss": peaks,
                             "kiln_cmd": " ".join(kiln_cmd[:-2]) + f' -c "{sql}"',
                             "peer_cmd": " ".join(peer_cmd)})
            log(f"job Q={q}: " + ", ".join(
                f"{e} {s['median']:.2f} s" for e, s in job_rows[-1]["stats"].items()))

    write_report(args, kernel_rows, job_rows, kernel_peaks)


def fmt_ms(s):
    return f"{s['median'] * 1000:.1f} ms ({s['min'] * 1000:.1f}–{s['max'] * 1000:.1f})"


def mib(b):
    return f"{b / 2**20:,.0f} MiB" if b else "?"


def write_report(args, kernel_rows, job_rows, kernel_peaks):
    rev = git_rev()
    lines = [
        "# Exact top-k vector search: Kiln vs faiss-cpu and numpy",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {machine()}; Kiln on device {args.kiln_device}",
        f"- Kiln {rev}; faiss {faiss.__version__}; "
        f"numpy {np.__version__}; pyarrow {pa.__version__}; Python {platform.python_version()}",
        f"- Data: N = {args.n:,} seeded random unit vectors, D = {args.dim}, k = {args.k}, "
        f"inner product; {args.reps} interleaved runs per engine after one warm-up; "
        "median (min–max)",
        f"- Command: `python benches/vector_topk.py {' '.join(sys.argv[1:])}`",
        "",
        "## Kernel (data in memory)",
        "",
        "| Q | Kiln | faiss | numpy | Kiln queries/s | corpus GB/s (Kiln) | Kiln vs best peer | recall@k vs faiss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in kernel_rows:
        s = r["stats"]
        best = min(s["faiss"]["median"], s["numpy"]["median"])
        qps = r["q"] / s["Kiln"]["median"]
        gbs = args.n * args.dim * 4 / s["Kiln"]["median"] / 1e9
        lines.append(
            f"| {r['q']} | {fmt_ms(s['Kiln'])} | {fmt_ms(s['faiss'])} | {fmt_ms(s['numpy'])} "
            f"| {qps:,.1f} | {gbs:.1f} | {best / s['Kiln']['median']:.2f}× | {r['recall_vs_faiss']:.3f} |")
    lines += ["", "Ratio = best peer's median time / Kiln's (above 1 means Kiln is faster).", "",
              "Peak memory (RSS): " + ", ".join(f"{e} {mib(b)}" for e, b in kernel_peaks.items())
              + " (faiss and numpy run in the harness's process, which also holds the data).", ""]
    if job_rows:
        lines += [
            "## Whole job (Parquet in, top-k Parquet out, fresh process each run)",
            "",
            "| Q | Kiln | pyarrow + faiss | Kiln vs peer | rows out | same ids as faiss | peak memory Kiln / peer |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in job_rows:
            s = r["stats"]
            lines.append(
                f"| {r['q']} | {s['Kiln']['median']:.2f} s ({s['Kiln']['min']:.2f}–{s['Kiln']['max']:.2f}) "
                f"| {s['pyarrow+faiss']['median']:.2f} s ({s['pyarrow+faiss']['min']:.2f}–{s['pyarrow+faiss']['max']:.2f}) "
                f"| {s['pyarrow+faiss']['median'] / s['Kiln']['median']:.2f}× | {r['rows']} | {r['recall_vs_faiss']:.3f} "
                f"| {mib(r['peak_rss'].get('Kiln'))} / {mib(r['peak_rss'].get('pyarrow+faiss'))} |")
        lines += ["", "Commands (Q = 256):", "", f"- Kiln: `{job_rows[-1]['kiln_cmd']}`",
                  f"- Peer: `{job_rows[-1]['peer_cmd']}` (script written by the harness)", ""]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    # Machine-readable summary for the combined report (benches/report.py).
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"n": args.n, "dim": args.dim, "k": args.k, "kernel": kernel_rows,
                   "jobs": job_rows, "kernel_peak_rss": kernel_peaks, "kiln": rev,
                   "versions": {"faiss": faiss.__version__, "numpy": np.__version__,
                                "pyarrow": pa.__version__},
                   "command": f"scripts/bench-vector {' '.join(sys.argv[1:])}"},
                  f, indent=1, default=str)
    log(f"report written to {args.out}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
