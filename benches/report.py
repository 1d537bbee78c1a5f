#!/usr/bin/env python3
"""One report from Kiln's benchmark runs: benches/results/REPORT.md and report.png.

Reads what the harnesses wrote (vector_topk.json, embed.json, tpch.json under
benches/results/, and criterion's estimates under target/criterion/), measures
this machine's limits — memory bandwidth (numpy array copies) and sustained
f32 GEMM FLOP/s (numpy/OpenBLAS matmul), best of several runs — and gives
each workload's speed ratio against its peers and, where it means something,
the fraction of the hardware limit Kiln reached. Every figure comes from the
runs on disk; a workload that was not run is listed as missing.

Run through scripts/bench, which runs the harnesses first.
"""

import datetime
import glob
import platform
import json
import os
import statistics
import sys
import time

import subprocess

import numpy as np

from benchlib import git_rev, machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.environ.get("KILN_BENCH_RESULTS", os.path.join(ROOT, "benches", "results"))
# all-MiniLM-L6-v2 forward pass, FLOPs per token at 128 tokens (issue 3).
MINILM_FLOP_PER_TOKEN = 22.4e6


def load(name):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def bandwidth():
    """Best memory read bandwidth: numpy sums of a 512 MiB array's slices,
    one per core, in parallel (numpy releases the GIL while it sums)."""
    from concurrent.futures import ThreadPoolExecutor
    a = np.ones(64 * 1024 * 1024, dtype=np.float64)
    parts = np.array_split(a, os.cpu_count() or 1)
    best = 0.0
    with ThreadPoolExecutor(len(parts)) as pool:
        for _ in range(5):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = max(best, a.nbytes / (time.perf_counter() - start))
    return best


def gemm_peak():
    """Best sustained f32 GEMM FLOP/s (numpy's BLAS, all cores)."""
    n = 2048
    a = np.random.default_rng(1).random((n, n), dtype=np.float32)
    b = np.random.default_rng(2).random((n, n), dtype=np.float32)
    a @ b
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


def criterion_estimates():
    """Median time (s) of every criterion benchmark, by 'group/id'."""
    out = {}
    base = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "criterion")
    for path in glob.glob(os.path.join(base, "**", "new", "estimates.json"), recursive=True):
        bench = os.path.join(os.path.dirname(path), "benchmark.json")
        try:
            with open(path) as f:
                est = json.load(f)
            with open(bench) as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        key = meta.get("full_id") or meta.get("title")
        out[key] = {"seconds": est["median"]["point_estimate"] / 1e9,
                    "throughput": meta.get("throughput")}
    return out


def mib(b):
    return f"{b / 2**20:,.0f} MiB" if b else "?"


def devices():
    """`kiln devices` of the release build, as the report's device list."""
    kiln = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "kiln")
    try:
        out = subprocess.run([kiln, "devices"], capture_output=True, text=True,
                             env=dict(os.environ, NODEVICE_SELECT="1"), timeout=60)
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"(kiln devices failed: {e})"


def versions(vec, emb, tpch):
    found = {}
    for doc in (vec, emb, tpch):
        if doc:
            found.update({k: v for k, v in doc.get("versions", {}).items() if k != "kiln"})
    return "; ".join(f"{k} {v}" for k, v in sorted(found.items()))


def median(v):
    return statistics.median(v) if v else None


def main():
    log = lambda m: print(f"[bench-report] {m}", file=sys.stderr, flush=True)
    log("measuring memory bandwidth and GEMM peak")
    bw, peak = bandwidth(), gemm_peak()
    vec, emb, tpch = load("vector_topk.json"), load("embed.json"), load("tpch.json")
    crit = criterion_estimates()
    rev = git_rev()
    lines = [
        "# Kiln benchmark report",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; Kiln {rev}; "
        f"command: `scripts/bench{' --quick' if 'bench-quick' in RESULTS else ''}`",
        f"- Machine: {machine()}; no GPU (every figure is on the CPU unless a device is named)",
        f"- Measured limits: memory read bandwidth {bw / 1e9:.1f} GB/s (the best of numpy's parallel sums over "
        "a 512 MiB array on all cores: a lower bound of the hardware's, which a fused scan can pass); "
        f"sustained f32 GEMM {peak / 1e9:.0f} GFLOP/s (numpy/OpenBLAS 2048³, {os.cpu_count()} cores)",
        f"- Peers: {versions(vec, emb, tpch)}; Python {platform.python_version()}",
        "- Ratios: the peer's median time / Kiln's (above 1: Kiln is faster). Each section links "
        "the harness's own report with every run, min–max and the exact command. Peak memory is "
        "each process's high-water mark; \"(harness)\" marks peers that run inside the harness's "
        "own Python process, whose figure includes the harness and its data.",
        "",
        "Devices (`kiln devices`):",
        "",
        "```",
        devices(),
        "```",
        "",
        "| workload | Kiln | peer | ratio | of hardware limit | peak memory Kiln / peer |",
        "|---|---|---|---|---|---|",
    ]
    bars = []
    if vec:
        for r in vec["kernel"]:
            s = r["stats"]
            peers = {e: v["median"] for e, v in s.items() if e != "Kiln"}
            best = min(peers, key=peers.get)
            k = s["Kiln"]["median"]
            gbs = vec["n"] * vec["dim"] * 4 / k
            lines.append(
                f"| vector top-k kernel, {vec['n']:,}×{vec['dim']}, Q={r['q']} | {k * 1000:.1f} ms "
                f"| {best} {peers[best] * 1000:.1f} ms | {peers[best] / k:.2f}× "
                f"| corpus scan {gbs / 1e9:.1f} GB/s = {gbs / bw:.0%} of read bandwidth "
                f"| {mib(vec.get('kernel_peak_rss', {}).get('Kiln'))} / "
                f"{mib(vec.get('kernel_peak_rss', {}).get('faiss+numpy (harness)'))} (harness) |")
            bars.append((f"top-k kernel Q={r['q']}", peers[best] / k))
        for r in vec["jobs"]:
            s = r["stats"]
            k = s["Kiln"]["median"]
            p = s["pyarrow+faiss"]["median"]
            peaks = r.get("peak_rss", {})
            lines.append(f"| vector top-k job (Parquet → Parquet), Q={r['q']} | {k:.2f} s "
                         f"| pyarrow+faiss {p:.2f} s | {p / k:.2f}× | "
                         f"| {mib(peaks.get('Kiln'))} / {mib(peaks.get('pyarrow+faiss'))} |")
            bars.append((f"top-k job Q={r['q']}", p / k))
    else:
        lines.append("| vector top-k | not run | | | | |")
    if emb:
        t = emb["times"]
        k = median(t["Kiln (whole job)"])
        p = median(t["sentence-transformers (encode)"])
        flops = emb["tokens"] / k * MINILM_FLOP_PER_TOKEN
        lines.append(
            f"| embeddings, {emb['texts']:,} texts (all-MiniLM-L6-v2) | {emb['texts'] / k:,.0f} sent/s "
            f"| sentence-transformers {emb['texts'] / p:,.0f} sent/s | {p / k:.2f}× "
            f"| ~{flops / 1e9:.0f} GFLOP/s = {flops / peak:.0%} of GEMM peak "
            f"| {mib(emb.get('peak_rss', {}).get('kiln'))} / "
            f"{mib(emb.get('peak_rss', {}).get('sentence-transformers (harness)'))} (harness) |")
        bars.append(("embeddings", p / k))
    else:
        lines.append("| embeddings | not run | | | | |")
    if tpch:
        engines = tpch["args"]["engine_list"]
        totals = {e: 0.0 for e in engines}
        complete = {e: True for e in engines}
        for r in tpch["results"]:
            for e in engines:
                if e in r["stats"]:
                    totals[e] += r["stats"][e]["median"]
                else:
                    complete[e] = False
        sf = tpch["args"]["sf"]
        if "kiln" in totals and complete["kiln"]:
            for e in engines:
                if e == "kiln" or not complete[e]:
                    continue
                peaks = tpch.get("peak_rss", {})
                lines.append(f"| TPC-H SF {sf:g}, 22 queries | {totals['kiln']:.2f} s | {e} {totals[e]:.2f} s "
                             f"| {totals[e] / totals['kiln']:.2f}× | "
                             f"| {mib(peaks.get('kiln'))} / {mib(peaks.get(e))} |")
                bars.append((f"TPC-H vs {e}", totals[e] / totals["kiln"]))
    else:
        lines.append("| TPC-H | not run | | | | |")
    lines += ["", "## Kernel micro-benchmarks (criterion, median)", ""]
    if crit:
        lines += ["| benchmark | median | throughput | of hardware limit |", "|---|---|---|---|"]
        for key in sorted(crit):
            c = crit[key]
            tp = c["throughput"] or {}
            sec = c["seconds"]
            if "Elements" in tp:
                rate = tp["Elements"] / sec
                shown = f"{rate / 1e9:.2f} G{'FLOP' if key.startswith('gemm') else 'elem'}/s"
                frac = f"{rate / peak:.0%} of GEMM peak" if key.startswith("gemm/cpu") else ""
            elif "Bytes" in tp:
                rate = tp["Bytes"] / sec
                shown = f"{rate / 1e9:.2f} GB/s"
                frac = f"{rate / bw:.0%} of read bandwidth" if "/cpu" in key else ""
            else:
                shown, frac = "", ""
            lines.append(f"| {key} | {sec * 1000:.3f} ms | {shown} | {frac} |")
        lines += ["", "GEMM throughput counts FLOPs (2·m·k·n). wgpu:0 is Mesa's lavapipe, a software "
                  "Vulkan driver on these CPU cores: its figures measure correctness plumbing, not a GPU."]
    else:
        lines.append("Not run (`cargo bench -p kiln-kernels --bench kernels`).")
    lines += ["", "Harness reports: [vector_topk.md](vector_topk.md), [embed.md](embed.md), "
              "[tpch.md](tpch.md) ([tpch.png](tpch.png)).", ""]
    if bars:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, ax = plt.subplots(figsize=(10, 4))
            names = [b[0] for b in bars]
            ratios = [b[1] for b in bars]
            colors = ["tab:green" if r >= 1 else "tab:red" for r in ratios]
            ax.barh(names, ratios, color=colors)
            ax.axvline(1.0, color="black", linewidth=1)
            ax.set_xlabel("peer time / Kiln time (above 1: Kiln is faster)")
            ax.set_title("Kiln against its peers, same machine, interleaved runs")
            ax.invert_yaxis()
            fig.tight_layout()
            fig.savefig(os.path.join(RESULTS, "report.png"), dpi=110)
            plt.close(fig)
            lines += ["![ratios](report.png)", ""]
        except ImportError:
            log("matplotlib missing: no chart")
    path = os.path.join(RESULTS, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
