#!/usr/bin/env python3
"""Embedding throughput: whole `kiln embed` jobs (f32 and int8) against
sentence-transformers (f32) and ONNX Runtime with dynamic int8 quantization.

Same corpus, same model (all-MiniLM-L6-v2), same machine, same thread count,
interleaved in one invocation (Kiln f32, Kiln int8, sentence-transformers,
ONNX Runtime int8, Kiln f32, ...):

- Kiln: `kiln embed corpus.parquet out.parquet --column text --device cpu
  --precision P`, a fresh process each run: model load, Parquet read and
  write included.
- sentence-transformers: `model.encode(texts, batch_size=32)` on the texts
  already in memory, model already loaded (one warm-up encode first).
- ONNX Runtime int8: the model exported to ONNX by torch, quantized with
  `onnxruntime.quantization.quantize_dynamic` (its defaults), the texts
  tokenized in the timed loop as sentence-transformers does (sorted by
  length, batches of 32, padded per batch), mean-pooled and normalized in
  numpy.

Beside speed, each mode's accuracy against sentence-transformers' f32
embeddings (worst and mean cosine), and the dense-layer GEMMs alone: Kiln's
f32 and int8 kernels (benches/gemm_kernel.rs, over a pipe) against torch's
`F.linear` (MKL) on the encoder's shapes, GFLOP/s (int8: GOP/s) = 2·m·k·n /
median time, with the kernel Kiln chose and the CPU's model name.

The corpus is seeded, mixed-length English-like text: words drawn from the
texts of Kiln's MiniLM fixture, lengths from 3 to 200 words (some beyond the
model's 256-token limit, which all truncate). Tokens are counted with the
model's tokenizer (special tokens included, after truncation).

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

# The encoder's dense layers over a 4096-token batch: Q/K/V/attention output,
# the feed-forward up and down projections.
GEMM_SHAPES = [(4096, 384, 384), (4096, 384, 1536), (4096, 1536, 384)]


def log(msg):
    print(f"[embed] {msg}", file=sys.stderr, flush=True)


class OrtInt8:
    """all-MiniLM-L6-v2 through ONNX Runtime, dynamically quantized to int8."""

    def __init__(self, st, work, threads):
        import onnxruntime as ort
        from onnxruntime.quantization import quantize_dynamic
        self.ort = ort
        self.tokenizer, self.max_len = st.tokenizer, st.max_seq_length
        fp32 = os.path.join(work, "minilm.onnx")
        int8 = os.path.join(work, "minilm-int8.onnx")
        if not os.path.exists(int8):
            class Hidden(torch.nn.Module):
                """The transformer's last hidden state, its inputs by name."""

                def __init__(self, inner):
                    super().__init__()
                    self.inner = inner

                def forward(self, input_ids, attention_mask, token_type_ids):
                    return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                      token_type_ids=token_type_ids).last_hidden_state

            model = Hidden(st[0].auto_model).eval()
            enc = self.tokenizer(["a warm-up text"], return_tensors="pt")
            names = ["input_ids", "attention_mask", "token_type_ids"]
            dyn = {n: {0: "batch", 1: "seq"} for n in names}
            dyn["last_hidden_state"] = {0: "batch", 1: "seq"}
            with torch.no_grad():
                torch.onnx.export(model, tuple(enc[n] for n in names), fp32, input_names=names,
                                  output_names=["last_hidden_state"], dynamic_axes=dyn,
                                  opset_version=17, dynamo=False)
            # Per output channel, as Kiln quantizes (the defaults, per tensor,
            # lose more accuracy).
            quantize_dynamic(fp32, int8, per_channel=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(int8, opts, providers=["CPUExecutionProvider"])
        self.version = ort.__version__

    def encode(self, texts, batch_size=32):
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_len, return_tensors="np")
            feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
            hidden = self.session.run(None, feed)[0]
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            out[idx] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out


def cosines(got, reference):
    return (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))


def gemm_table(exe, threads, reps, bf16):
    """Kiln's f32 and int8 GEMMs (the process `exe`) against torch's
    F.linear, interleaved."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    proc = subprocess.Popen([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def kiln(kind, m, k, n):
        proc.stdin.write(f"run {kind} {m} {k} {n} {reps}\n")
        proc.stdin.flush()
        secs, name = proc.stdout.readline().split()
        return float(secs), name

    rows = []
    for (m, k, n) in GEMM_SHAPES:
        g = torch.Generator().manual_seed(1)
        x = torch.rand(m, k, generator=g) * 2 - 1
        w = torch.rand(n, k, generator=g) * 2 - 1
        b = torch.rand(n, generator=g) * 2 - 1
        torch.nn.functional.linear(x, w, b)
        times = {"torch": [], "f32": [], "int8": []}
        if bf16:
            times["bf16"] = []
        names = {}
        for _ in range(3):
            times["f32"].append(kiln("f32", m, k, n)[0])
            if bf16:
                times["bf16"].append(kiln("bf16", m, k, n)[0])
            ts = []
            for _ in range(reps):
                start = time.perf_counter()
                torch.nn.functional.linear(x, w, b)
                ts.append(time.perf_counter() - start)
            times["torch"].append(statistics.median(ts))
            secs, names["int8"] = kiln("int8", m, k, n)
            times["int8"].append(secs)
        ops = 2 * m * k * n
        rate = {kind: ops / statistics.median(v) / 1e9 for kind, v in times.items()}
        rows.append(((m, k, n), rate, names["int8"]))
    proc.stdin.close()
    proc.wait()
    return rows


def main():
    ap = corpus_args(__doc__, "embed")
    ap.add_argument("--kiln-device", default="cpu",
                    help="the device Kiln runs on: cpu (default), auto, wgpu, cuda")
    ap.add_argument("--no-ort", action="store_true", help="leave ONNX Runtime out")
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
    gemm_exe = cargo_artifact(["cargo", "bench", "--bench", "gemm_kernel", "--no-run"], "gemm_kernel")

    st = SentenceTransformer(mdir, device="cpu")
    tokenizer = st.tokenizer
    max_len = st.max_seq_length
    tokens = sum(min(len(ids), max_len) for ids in tokenizer(texts)["input_ids"])
    st.encode(texts[:64], batch_size=32)  # warm-up
    ort_model = None
    if not args.no_ort:
        log("exporting and quantizing the model for ONNX Runtime")
        ort_model = OrtInt8(st, args.work, threads)
        ort_model.encode(texts[:64])  # warm-up

    env = dict(os.environ, NODEVICE_SELECT="1", RAYON_NUM_THREADS=str(threads))
    kiln_modes = {"Kiln (whole job)": "f32", "Kiln int8 (whole job)": "int8"}
    with open("/proc/cpuinfo") as f:
        has_bf16 = "avx512_bf16" in f.read()
    if has_bf16:
        kiln_modes["Kiln bf16 (whole job)"] = "bf16"
    cmds = {name: [kiln, "embed", src, os.path.join(args.work, f"kiln_{p}.parquet"), "--column", "text",
                   "--model", mdir, "--device", args.kiln_device, "--precision", p]
            for name, p in kiln_modes.items()}
    times = {name: [] for name in kiln_modes}
    times["sentence-transformers (encode)"] = []
    if ort_model:
        times["ONNX Runtime int8 (encode)"] = []
    kiln_peak, summaries, vectors = {}, {}, {}
    for rep in range(args.reps):
        for name, cmd in cmds.items():
            time.sleep(0.5)
            elapsed, peak, proc = run_measured(cmd, env)
            if proc.returncode != 0:
                sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr}")
            times[name].append(elapsed)
            kiln_peak[name] = max(kiln_peak.get(name, 0), peak)
            summaries[name] = proc.stdout.strip().splitlines()[-1]
        time.sleep(0.5)
        start = time.perf_counter()
        vectors["sentence-transformers (encode)"] = st.encode(texts, batch_size=32, convert_to_numpy=True)
        times["sentence-transformers (encode)"].append(time.perf_counter() - start)
        if ort_model:
            time.sleep(0.5)
            start = time.perf_counter()
            vectors["ONNX Runtime int8 (encode)"] = ort_model.encode(texts)
            times["ONNX Runtime int8 (encode)"].append(time.perf_counter() - start)
        log(f"run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))

    reference = vectors["sentence-transformers (encode)"]
    for name, cmd in cmds.items():
        got = pq.read_table(cmd[3], columns=["id", "embedding"]).sort_by("id").column("embedding")
        vectors[name] = got.combine_chunks().flatten().to_numpy().reshape(len(texts), -1)
    agreement = {name: cosines(v, reference) for name, v in vectors.items()}

    log("timing the dense-layer GEMMs")
    gemm = gemm_table(gemm_exe, threads, 20, has_bf16)

    rev = git_rev()
    import sentence_transformers
    versions = {"sentence-transformers": sentence_transformers.__version__, "torch": torch.__version__}
    if ort_model:
        versions["onnxruntime"] = ort_model.version
    lines = [
        "# Embedding throughput: Kiln (f32, int8) vs sentence-transformers and ONNX Runtime int8 (CPU)",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {machine()}; {threads} threads for all (rayon, torch.set_num_threads, "
        f"ONNX Runtime intra_op_num_threads); Kiln on device {args.kiln_device}",
        f"- Kiln {rev}; " + "; ".join(f"{k} {v}" for k, v in versions.items())
        + f"; Python {platform.python_version()}",
        f"- Model: all-MiniLM-L6-v2 (max_seq_length {max_len}); corpus: {len(texts)} seeded "
        f"mixed-length texts, {tokens:,} tokens after truncation ({tokens / len(texts):.0f} per text)",
        f"- {args.reps} interleaved runs each; median (min–max)",
        f"- Command: `scripts/bench-embed {' '.join(sys.argv[1:])}`",
        f"- Kiln: `{' '.join(cmds['Kiln (whole job)'])}` (and `--precision int8`, `bf16` where the CPU "
        "has AVX512_BF16; fresh process: "
        "model load, Parquet in and out included)",
        "- sentence-transformers: `model.encode(texts, batch_size=32)` (texts in memory, model loaded)",
        "- ONNX Runtime int8: the model exported by torch.onnx, `quantize_dynamic(per_channel=True)`, "
        "batches of 32 sorted by length, tokenized in the loop, mean-pooled and normalized in numpy",
        "",
        "| engine | time | sentences/s | tokens/s | vs sentence-transformers | worst cosine | mean cosine |",
        "|---|---|---|---|---|---|---|",
    ]
    meds = {name: statistics.median(v) for name, v in times.items()}
    st_time = meds["sentence-transformers (encode)"]
    for name, v in times.items():
        m = meds[name]
        cos = agreement[name]
        lines.append(f"| {name} | {m:.2f} s ({min(v):.2f}–{max(v):.2f}) | {len(texts) / m:,.0f} | "
                     f"{tokens / m:,.0f} | {st_time / m:.2f}× | {cos.min():.5f} | {cos.mean():.6f} |")
    ratio = st_time / meds["Kiln (whole job)"]
    ratio_int8 = st_time / meds["Kiln int8 (whole job)"]
    lines += ["", f"Kiln f32 vs sentence-transformers: **{ratio:.2f}×**; Kiln int8: **{ratio_int8:.2f}×** "
              "(above 1 means Kiln is faster)."]
    if ort_model:
        vs_ort = meds["ONNX Runtime int8 (encode)"] / meds["Kiln int8 (whole job)"]
        lines.append(f"Kiln int8 vs ONNX Runtime int8: **{vs_ort:.2f}×**.")
    lines += ["", "Cosines are against sentence-transformers' f32 embeddings of the same texts.", "",
              "Kiln's summary lines: " + "; ".join(f"`{s}`" for s in summaries.values()), "",
              "## Dense-layer GEMMs alone", "",
              "Median of 20 calls, 3 interleaved rounds; GFLOP/s (int8: GOP/s) = 2·m·k·n / time.", "",
              "| m × k × n | torch F.linear f32 (MKL) | Kiln f32 | Kiln f32 / torch | Kiln bf16 | Kiln int8 "
              "| int8 kernel |",
              "|---|---|---|---|---|---|---|"]
    for (m, k, n), rate, name in gemm:
        bf = f"{rate['bf16']:.0f}" if "bf16" in rate else "no AVX512_BF16"
        lines.append(f"| {m}×{k}×{n} | {rate['torch']:.0f} | {rate['f32']:.0f} | "
                     f"{rate['f32'] / rate['torch']:.0%} | {bf} | {rate['int8']:.0f} | {name} |")
    peaks = {name: kiln_peak[name] for name in kiln_modes}
    lines += ["", "Peak memory (RSS): " + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in peaks.items())
              + f"; the harness process (torch, ONNX Runtime, the models, the texts) "
              f"{self_peak_rss() / 2**20:,.0f} MiB.", ""]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    # Machine-readable summary for the combined report (benches/report.py).
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"texts": len(texts), "tokens": tokens, "threads": threads, "machine": machine(),
                   "times": times, "ratio": ratio, "ratio_int8": ratio_int8,
                   "worst_cosine": float(agreement["Kiln (whole job)"].min()),
                   "worst_cosine_by_engine": {k: float(v.min()) for k, v in agreement.items()},
                   "gemm": [{"shape": list(s), "rates": r, "int8_kernel": nm} for s, r, nm in gemm],
                   "peak_rss": {"kiln": peaks["Kiln (whole job)"], "kiln int8": peaks["Kiln int8 (whole job)"],
                                "sentence-transformers (harness)": self_peak_rss()},
                   "versions": versions,
                   "kiln": rev, "command": f"scripts/bench-embed {' '.join(sys.argv[1:])}"},
                  f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
