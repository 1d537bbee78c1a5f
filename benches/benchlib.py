"""Helpers shared by Kiln's benchmark harnesses (benches/*.py)."""

import json
import os
import platform
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine():
    """The CPU model, cores, SIMD level, memory and OS, for report headers."""
    model, flags = platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        for line in flags.splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "baseline")
    extras = [name for flag, name in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"),
                                      ("amx_int8", "AMX")) if flag in flags]
    if extras:
        simd += " + " + ", ".join(extras)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{model}, {os.cpu_count()} cores ({simd}), {mem:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}")


def cargo_artifact(args, name):
    """Runs a cargo build command and returns the path of target `name`'s executable."""
    out = subprocess.run(args + ["--message-format=json"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    exe = None
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == name:
            exe = msg["executable"]
    if exe is None:
        sys.exit(f"error: could not find the {name} executable")
    return exe


def git_rev():
    """The checkout's short commit, marked when tracked files have changed."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    # The results a run is writing are not changes to what it measures.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)benches/results"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return rev + (" (uncommitted changes)" if dirty else "")


def run_timed(cmd, env):
    """Runs `cmd` to completion and returns its wall time in seconds; a
    failure ends the benchmark with the command and its stderr."""
    import time
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr}")
    return elapsed


def fmt_times(values, digits=2):
    """`median s (min–max)`."""
    import statistics
    return (f"{statistics.median(values):.{digits}f} s "
            f"({min(values):.{digits}f}–{max(values):.{digits}f})")


def run_measured(cmd, env=None):
    """Runs `cmd` to completion: (seconds, peak resident memory in bytes,
    the Popen with returncode, stdout and stderr set). The peak is the
    process's VmHWM, polled every 20 ms while it runs (wait4's ru_maxrss
    would count the harness's own pages, which the child holds between fork
    and exec). Output goes through temporary files, so a chatty command
    cannot block on a full pipe."""
    import tempfile
    import threading
    import time
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        peak = [0]

        def watch():
            while proc.poll() is None:
                seen = process_peak_rss(proc.pid)
                if seen:
                    peak[0] = max(peak[0], seen)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        proc.wait()
        elapsed = time.perf_counter() - start
        watcher.join()
        out.seek(0)
        err.seek(0)
        proc.stdout = out.read().decode(errors="replace")
        proc.stderr = err.read().decode(errors="replace")
    return elapsed, peak[0], proc


def self_peak_rss():
    """This process's peak resident memory in bytes."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_peak_rss(pid):
    """A live process's peak resident memory in bytes (Linux VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def corpus(rows, seed=7):
    """Seeded mixed-length English-like texts: words from the texts of
    Kiln's MiniLM fixture, 3 to 200 words each (some beyond the model's
    256-token limit)."""
    fixture = os.path.join(ROOT, "engine", "tests", "fixtures", "minilm", "texts.json")
    words = sorted({w for t in json.load(open(fixture)) for w in t.split() if w.isalpha()})
    rng = random.Random(seed)
    texts = []
    for _ in range(rows):
        # Mostly sentences and short paragraphs, a tail of long documents.
        n = min(200, max(3, int(rng.lognormvariate(3.0, 0.8))))
        texts.append(" ".join(rng.choice(words) for _ in range(n)).capitalize() + ".")
    return texts


def model_dir():
    """all-MiniLM-L6-v2's directory, fetched by scripts/fetch-model if absent."""
    d = os.environ.get("KILN_MODEL_DIR",
                       os.path.join(os.path.expanduser("~/.cache"), "kiln", "models"))
    path = os.path.join(d, "all-MiniLM-L6-v2")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        subprocess.run([os.path.join(ROOT, "scripts", "fetch-model")], check=True)
    return path


def corpus_args(doc, name):
    """The arguments every corpus benchmark takes: --quick (1000 rows, 2
    runs), --rows, --reps, --work (its data) and --out (its report)."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1000 rows, 2 runs")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", default=os.path.expanduser(f"~/.cache/kiln/bench-data/{name}"))
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", f"{name}.md"))
    return ap
