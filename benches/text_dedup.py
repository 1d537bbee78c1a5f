#!/usr/bin/env python3
"""Near-duplicate detection: Kiln's MinHash and LSH against datasketch (issue 19).

One seeded corpus (benchlib.corpus's texts, a quarter of them repeated with
one to twenty words changed), 128 permutations, word 5-shingles (the same
normalization on both sides: `re.findall(r"[^\\W_]+", text.lower())`),
threshold 0.8. Interleaved in one invocation, medians of `--reps` runs:

1. **Signatures.** Kiln: `COPY (SELECT id, minhash(text, 128) FROM corpus)
   TO parquet`, a fresh `kiln sql` process per run (start-up, Parquet read
   and write included), pinned to one core with `taskset` and on all cores.
   datasketch: `MinHash.bulk` (its batch API) over shingle sets made from
   texts already in memory, in this process, one core (it is
   single-threaded).
2. **Near-duplicate pairs.** Kiln: `near_duplicates('docs', 'id', 'text',
   0.8)` to Parquet, one core and all cores. datasketch: the signatures as
   above, then `MinHashLSH(threshold=0.8, num_perm=128)` insert and query of
   every document, each candidate checked with `jaccard >= 0.8`.

Reported: documents per second, Kiln ÷ datasketch per core, and how many
pairs each found (and how many both found).

Usage (scripts/bench-dedup sets up the environment):
    python benches/text_dedup.py [--quick] [--rows N] [--reps R]
"""

import datetime
import os
import random
import re
import shutil
import statistics
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHash, MinHashLSH

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (cargo_artifact, corpus, corpus_args, fmt_times, git_rev, machine,
                      run_timed)  # noqa: E402

NUM_PERM = 128
THRESHOLD = 0.8
WORD = re.compile(r"[^\W_]+")


def log(msg):
    print(f"[bench-dedup] {msg}", file=sys.stderr, flush=True)


def documents(rows, seed=11):
    """benchlib's texts, a quarter of them followed by an edited copy."""
    rng = random.Random(seed)
    base = corpus(rows - rows // 4, seed)
    out = list(base)
    for text in rng.sample(base, rows // 4):
        words = text.split()
        for _ in range(rng.randint(1, 20)):
            words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta"])
        out.append(" ".join(words))
    rng.shuffle(out)
    return out


def shingles(text):
    words = WORD.findall(text.lower())
    n = min(5, len(words))
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def datasketch_signatures(texts):
    return MinHash.bulk([shingles(t) for t in texts], num_perm=NUM_PERM)


def datasketch_pairs(texts):
    hashes = datasketch_signatures(texts)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    for i, m in enumerate(hashes):
        if not m.is_empty():
            lsh.insert(i, m)
    pairs = set()
    for i, m in enumerate(hashes):
        if m.is_empty():
            continue
        for j in lsh.query(m):
            if j > i and m.jaccard(hashes[j]) >= THRESHOLD:
                pairs.add((i, j))
    return pairs




def main():
    ap = corpus_args(__doc__, "text_dedup")
    ap.set_defaults(rows=20000)
    args = ap.parse_args()
    if args.quick:
        args.rows, args.reps = 5000, 2
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    texts = documents(args.rows)
    src = os.path.join(args.work, "corpus.parquet")
    pq.write_table(pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": texts}), src)
    log("building Kiln (release)")
    kiln = cargo_artifact(["cargo", "build", "--release", "--bin", "kiln"], "kiln")
    env = dict(os.environ, NODEVICE_SELECT="1", KILN_DEVICE="cpu")
    cores = os.cpu_count()

    def job(name, query):
        path = os.path.join(args.work, f"{name}.sql")
        with open(path, "w") as f:
            f.write(f"CREATE VIEW docs AS SELECT * FROM '{src}';\n"
                    f"COPY ({query}) TO '{args.work}/{name}.parquet';\n")
        return path

    sig_job = job("signatures", f"SELECT id, minhash(text, {NUM_PERM}) AS s FROM docs")
    pair_job = job("pairs", f"SELECT * FROM near_duplicates('docs', 'id', 'text', {THRESHOLD}, "
                   f"{NUM_PERM})")
    one_core = ["taskset", "-c", "0"]
    names = {
        "sig": ["Kiln minhash, 1 core", f"Kiln minhash, {cores} cores", "datasketch MinHash.bulk"],
        "pairs": ["Kiln near_duplicates, 1 core", f"Kiln near_duplicates, {cores} cores",
                  "datasketch MinHash + MinHashLSH"],
    }
    times = {n: [] for group in names.values() for n in group}
    theirs = None
    for rep in range(args.reps):
        for kind, sql, peer in [("sig", sig_job, datasketch_signatures),
                                ("pairs", pair_job, datasketch_pairs)]:
            one, many, py = names[kind]
            time.sleep(0.5)
            times[one].append(run_timed(one_core + [kiln, "sql", "-f", sql], env))
            time.sleep(0.5)
            times[many].append(run_timed([kiln, "sql", "-f", sql], env))
            time.sleep(0.5)
            start = time.perf_counter()
            result = peer(texts)
            times[py].append(time.perf_counter() - start)
            if kind == "pairs":
                theirs = result
        log(f"run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))

    ours = pq.read_table(os.path.join(args.work, "pairs.parquet"))
    ours = set(zip(ours["id_a"].to_pylist(), ours["id_b"].to_pylist()))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = len(texts)
    lines = [
        "# Near-duplicate detection: Kiln against datasketch",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {machine()}; Kiln {git_rev()}, release build, device cpu",
        f"- Corpus: {rows} documents (benchlib.corpus's seeded texts, 3–200 words, a quarter "
        f"of them edited copies of others); {NUM_PERM} permutations, word 5-shingles, "
        f"threshold {THRESHOLD}",
        f"- {args.reps} interleaved runs; median (min–max). Kiln: a fresh `kiln sql -f` process "
        f"per run, Parquet in and out, `taskset -c 0` for one core; datasketch "
        f"{getattr(__import__('datasketch'), '__version__', '?')}: texts already in memory, "
        f"one core (single-threaded)",
        f"- Command: `scripts/bench-dedup {' '.join(sys.argv[1:])}`",
        "",
        "| run | time | documents/s | per core vs datasketch |",
        "|---|---|---|---|",
    ]
    for kind, group in names.items():
        peer = med[group[2]]
        for i, name in enumerate(group):
            used = 1 if i != 1 else cores
            ratio = (peer / med[name]) / used
            lines.append(f"| {name} | {fmt_times(times[name], 3)} | {rows / med[name]:,.0f} | "
                         f"{ratio:.2f}× |")
    lines += [
        "",
        f"Pairs found at {THRESHOLD}: Kiln {len(ours)}, datasketch {len(theirs)}, both "
        f"{len(ours & theirs)} (LSH is probabilistic: each misses a pair when no band agrees, "
        f"and the estimates differ near the threshold).",
        "",
    ]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
