"""Helpers shared by Kiln's benchmark harnesses (benches/*.py)."""

import json
import os
import platform
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
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return rev + (" (uncommitted changes)" if dirty else "")
