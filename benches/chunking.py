#!/usr/bin/env python3
"""Token-aware chunking: Kiln against LangChain and semantic-text-splitter (issue 19).

One seeded corpus of long documents (benchlib.corpus's texts joined into
paragraphs, about 1,500 words each), chunks of at most 254 tokens (what the encoder reads without truncating, 256 less its 2 special tokens) of
all-MiniLM-L6-v2's tokenizer with 32 tokens of overlap, interleaved in one
invocation, medians of `--reps` runs:

- Kiln: `kiln chunk IN OUT --column text --max-tokens 254 --overlap 32`, a
  fresh process per run (start-up, model tokenizer load, Parquet read and
  write included), pinned to one core with `taskset` and on all cores.
- LangChain: `RecursiveCharacterTextSplitter(chunk_size=254,
  chunk_overlap=32, length_function=<tokens of the same tokenizer>)` (what
  `from_huggingface_tokenizer` builds), over texts already in memory, one
  core (single-threaded).
- semantic-text-splitter: `TextSplitter.from_huggingface_tokenizer(<the same
  tokenizer>, capacity=254, overlap=32).chunks(text)` (Rust, the
  `text-splitter` crate), texts in memory, one thread.

Reported: documents per second, Kiln ÷ peer per core, chunks per document
and the largest chunk in tokens for each (all must be ≤ 254).

Usage (scripts/bench-chunk sets up the environment):
    python benches/chunking.py [--quick] [--rows N] [--reps R]
"""

import datetime
import os
import random
import shutil
import statistics
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
from langchain_text_splitters import RecursiveCharacterTextSplitter
from semantic_text_splitter import TextSplitter
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (cargo_artifact, corpus, corpus_args, fmt_times, git_rev, machine,
                      model_dir, run_timed)  # noqa: E402

MAX_TOKENS = 254
OVERLAP = 32


def log(msg):
    print(f"[bench-chunk] {msg}", file=sys.stderr, flush=True)


def documents(rows, seed=5):
    """Long documents: paragraphs of benchlib's texts, about 1,500 words."""
    rng = random.Random(seed)
    pool = corpus(4000, seed)
    docs = []
    for _ in range(rows):
        paragraphs = []
        words = 0
        while words < 1500:
            para = " ".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))
            paragraphs.append(para)
            words += len(para.split())
        docs.append("\n\n".join(paragraphs))
    return docs




def main():
    ap = corpus_args(__doc__, "chunking")
    ap.set_defaults(rows=1000)
    args = ap.parse_args()
    if args.quick:
        args.rows, args.reps = 250, 2
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    texts = documents(args.rows)
    src = os.path.join(args.work, "docs.parquet")
    pq.write_table(pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": texts}), src)
    mdir = model_dir()
    tokenizer = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
    tokenizer.no_truncation()

    def tokens(t):
        return len(tokenizer.encode(t, add_special_tokens=False).ids)

    langchain = RecursiveCharacterTextSplitter(chunk_size=MAX_TOKENS, chunk_overlap=OVERLAP,
                                               length_function=tokens)
    semantic = TextSplitter.from_huggingface_tokenizer(tokenizer, capacity=MAX_TOKENS,
                                                       overlap=OVERLAP)
    log("building Kiln (release)")
    kiln = cargo_artifact(["cargo", "build", "--release", "--bin", "kiln"], "kiln")
    env = dict(os.environ, NODEVICE_SELECT="1", KILN_DEVICE="cpu")
    cores = os.cpu_count()
    out = os.path.join(args.work, "chunks.parquet")
    cmd = [kiln, "chunk", src, out, "--column", "text", "--max-tokens", str(MAX_TOKENS),
           "--overlap", str(OVERLAP), "--model", mdir]
    names = ["Kiln chunk, 1 core", f"Kiln chunk, {cores} cores",
             "LangChain RecursiveCharacterTextSplitter", "semantic-text-splitter"]
    times = {n: [] for n in names}
    results = {}
    for rep in range(args.reps):
        time.sleep(0.5)
        times[names[0]].append(run_timed(["taskset", "-c", "0"] + cmd, env))
        time.sleep(0.5)
        times[names[1]].append(run_timed(cmd, env))
        for name, split in [(names[2], langchain.split_text), (names[3], semantic.chunks)]:
            time.sleep(0.5)
            start = time.perf_counter()
            chunks = [split(t) for t in texts]
            times[name].append(time.perf_counter() - start)
            results[name] = chunks
        log(f"run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))

    ours = pq.read_table(out)
    stats = {
        "Kiln": (len(ours) / len(texts), max(ours["chunk_tokens"].to_pylist())),
    }
    for name in names[2:]:
        chunks = results[name]
        stats[name] = (sum(len(c) for c in chunks) / len(texts),
                       max(tokens(x) for c in chunks for x in c))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = len(texts)
    lines = [
        "# Token-aware chunking: Kiln against LangChain and semantic-text-splitter",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {machine()}; Kiln {git_rev()}, release build, device cpu",
        f"- Corpus: {rows} documents of about 1,500 words in paragraphs (benchlib.corpus's "
        f"seeded texts); chunks of at most {MAX_TOKENS} tokens of all-MiniLM-L6-v2's tokenizer, "
        f"{OVERLAP} tokens of overlap",
        f"- {args.reps} interleaved runs; median (min–max). Kiln: a fresh `kiln chunk` process per "
        f"run, Parquet in and out, `taskset -c 0` for one core; the peers: texts already in "
        f"memory, one core",
        f"- Command: `scripts/bench-chunk {' '.join(sys.argv[1:])}`",
        "",
        "| run | time | documents/s | Kiln per core vs it |",
        "|---|---|---|---|",
    ]
    for name in names:
        vs = ""
        if name in names[2:]:
            vs = f"{med[name] / med[names[0]]:.2f}×"
        lines.append(f"| {name} | {fmt_times(times[name])} | {rows / med[name]:,.1f} | {vs} |")
    lines += ["", "| splitter | chunks per document | largest chunk (tokens) |", "|---|---|---|"]
    for name, (per_doc, largest) in stats.items():
        lines.append(f"| {name} | {per_doc:.1f} | {largest} |")
    lines.append("")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
