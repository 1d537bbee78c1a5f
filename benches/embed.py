#!/usr/bin/env python3
"""Embedding throughput: a whole `kiln embed` job against sentence-transformers.

Same corpus, same model (all-MiniLM-L6-v2), same machine, same thread count,
interleaved in one invocation (Kiln, sentence-transformers, Kiln, ...):

- Kiln: `kiln embed corpus.parquet out.parquet --column text --device cpu`,
  a fresh process each run: model load, Parquet read and write included.
- sentence-transformers: `model.encode(texts, batch_size=32)` on the texts
  already in memory, model already loaded (one warm-up encode first).

The corpus is seeded, mixed-length English-like text: words drawn from the
texts of Kiln's MiniLM fixture, lengths from 3 to 200 words (some beyond the
model's 256-token limit, which both truncate). Tokens are counted with the
model's tokenizer (special tokens included, after truncation). The report also
gives the worst cosine between Kiln's and sentence-transformers' embeddings.

Usage (scripts/bench-embed sets up the environment):
    python benches/embed.py [--quick] [--rows N] [--reps R] [--out benches/results/embed.md]
"""

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
import torch
from sentence_transformers import SentenceTransformer

from benchlib import (cargo_artifact, corpus, corpus_args, git_rev, machine, model_dir, run_measured,
                      self_peak_rss)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(f"[embed] {msg}", file=sys.stderr, flush=True)


def main():
    ap = corpus_args(__doc__, "embed")
    ap.add_argument("--kiln-device", default="auto",
                    help="the device Kiln runs on: auto (default: a GPU when present, else the CPU), cpu, wgpu, cuda")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.reps = 1000, 2
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    os.makedirs(args.work, exist_ok=True)
    texts = corpus(args.rows)
    src = os.path.join(args.work, f"corpus_{args.rows}.parquet")
    pq.write_table(pa.table({"id": np.arange(len(texts)), "text": texts}), src)
    mdir = model_dir()

    log("building Kiln (release)")
    kiln = cargo_artifact(["cargo", "build", "--release", "--bin", "kiln"], "kiln")

    st = SentenceTransformer(mdir, device="cpu")
    tokenizer = st.tokenizer
    max_len = st.max_seq_length
    tokens = sum(min(len(ids), max_len) for ids in tokenizer(texts)["input_ids"])
    st.encode(texts[:64], batch_size=32)  # warm-up

    out = os.path.join(args.work, "kiln_out.parquet")
    env = dict(os.environ, NODEVICE_SELECT="1", RAYON_NUM_THREADS=str(threads))
    cmd = [kiln, "embed", src, out, "--column", "text", "--model", mdir, "--device", args.kiln_device]
    times = {"Kiln (whole job)": [], "sentence-transformers (encode)": []}
    reference = None
    kiln_peak = 0
    for rep in range(args.reps):
        time.sleep(0.5)
        elapsed, peak, proc = run_measured(cmd, env)
        times["Kiln (whole job)"].append(elapsed)
        kiln_peak = max(kiln_peak, peak)
        if proc.returncode != 0:
            sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr}")
        time.sleep(0.5)
        start = time.perf_counter()
        reference = st.encode(texts, batch_size=32, convert_to_numpy=True)
        times["sentence-transformers (encode)"].append(time.perf_counter() - start)
        log(f"run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))

    got = pq.read_table(out, columns=["id", "embedding"]).sort_by("id").column("embedding").combine_chunks()
    got = got.flatten().to_numpy().reshape(len(texts), -1)
    cos = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))

    rev = git_rev()
    import sentence_transformers
    lines = [
        "# Embedding throughput: Kiln vs sentence-transformers (CPU)",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {machine()}; {threads} threads for both (rayon, torch.set_num_threads); "
        f"Kiln on device {args.kiln_device}",
        f"- Kiln {rev}; sentence-transformers {sentence_transformers.__version__}; "
        f"torch {torch.__version__}; Python {platform.python_version()}",
        f"- Model: all-MiniLM-L6-v2 (max_seq_length {max_len}); corpus: {len(texts)} seeded "
        f"mixed-length texts, {tokens:,} tokens after truncation ({tokens / len(texts):.0f} per text)",
        f"- {args.reps} interleaved runs each; median (min–max)",
        f"- Command: `python benches/embed.py {' '.join(sys.argv[1:])}`",
        f"- Kiln: `{' '.join(cmd)}` (fresh process: model load, Parquet in and out included)",
        "- sentence-transformers: `model.encode(texts, batch_size=32)` (texts in memory, model loaded)",
        "",
        "| engine | time | sentences/s | tokens/s |",
        "|---|---|---|---|",
    ]
    meds = {}
    for name, v in times.items():
        m = statistics.median(v)
        meds[name] = m
        lines.append(f"| {name} | {m:.2f} s ({min(v):.2f}–{max(v):.2f}) | {len(texts) / m:,.0f} | {tokens / m:,.0f} |")
    ratio = meds["sentence-transformers (encode)"] / meds["Kiln (whole job)"]
    lines += ["", f"Kiln vs sentence-transformers: **{ratio:.2f}×** (above 1 means Kiln is faster).",
              "", f"Agreement: worst cosine between Kiln's and sentence-transformers' embeddings "
              f"{cos.min():.7f}, mean {cos.mean():.7f}.", "",
              f"Peak memory (RSS): Kiln's job {kiln_peak / 2**20:,.0f} MiB; the harness process running "
              f"sentence-transformers (torch, the model, the texts) {self_peak_rss() / 2**20:,.0f} MiB.", ""]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    # Machine-readable summary for the combined report (benches/report.py).
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"texts": len(texts), "tokens": tokens, "threads": threads,
                   "times": times, "ratio": ratio, "worst_cosine": float(cos.min()),
                   "peak_rss": {"kiln": kiln_peak, "sentence-transformers (harness)": self_peak_rss()},
                   "versions": {"sentence-transformers": sentence_transformers.__version__,
                                "torch": torch.__version__},
                   "kiln": rev, "command": f"scripts/bench-embed {' '.join(sys.argv[1:])}"},
                  f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
