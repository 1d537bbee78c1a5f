#!/usr/bin/env python3
"""PII detection: Kiln's detect_pii against Presidio's pattern recognizers (issue 19).

The labelled corpus (tests/fixtures/pii/corpus.jsonl, written by
scripts/pii-corpus: seeded sentences with emails, phone numbers, cards,
IBANs, US SSNs, IP addresses, credentials in URLs and secrets, and tricky
negatives) is scored for both, per type: precision and recall, a finding
counting when a label of its type overlaps it. Presidio runs its
predefined recognizers without an NLP model (EmailRecognizer,
PhoneRecognizer, CreditCardRecognizer, IbanRecognizer, UsSsnRecognizer,
IpRecognizer; it has none for credentials or secrets; duplicates removed
as its AnalyzerEngine removes them), at its default threshold (every
result) and at 0.5 (Kiln's). Offline, its email recognizer's tldextract
fails to fetch the public suffix list and uses the copy it ships.

Speed, interleaved, medians of `--reps` runs over the corpus repeated to
`--rows` texts: Kiln `COPY (SELECT id, detect_pii(text) FROM corpus) TO
parquet`, a fresh `kiln sql` process per run (start-up and Parquet I/O
included), on one core (`taskset`) and on all; Presidio's recognizers over
the texts in memory, one core.

Usage (scripts/bench-pii sets up the environment):
    python benches/pii.py [--quick] [--rows N] [--reps R]
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
from presidio_analyzer import EntityRecognizer
from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer,
                                                      IbanRecognizer, IpRecognizer,
                                                      PhoneRecognizer, UsSsnRecognizer)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (cargo_artifact, corpus_args, fmt_times, git_rev, machine, ROOT,
                      run_timed)  # noqa: E402

PRESIDIO_TYPES = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "credit_card",
                  "IBAN_CODE": "iban", "US_SSN": "us_ssn", "IP_ADDRESS": "ip_address"}
TYPES = ["email", "phone", "credit_card", "iban", "us_ssn", "ip_address", "url_credentials",
         "secret"]


def log(msg):
    print(f"[bench-pii] {msg}", file=sys.stderr, flush=True)


def presidio():
    recognizers = [EmailRecognizer(), PhoneRecognizer(), CreditCardRecognizer(),
                   IbanRecognizer(), UsSsnRecognizer(), IpRecognizer()]

    def analyze(text):
        found = []
        for r in recognizers:
            found += r.analyze(text, entities=r.supported_entities, nlp_artifacts=None) or []
        # As AnalyzerEngine does: one result per entity and span.
        found = EntityRecognizer.remove_duplicates(found)
        return [(PRESIDIO_TYPES.get(f.entity_type, f.entity_type), f.start, f.end, f.score)
                for f in found]
    return analyze


def score(records, findings, min_score=0.0):
    """Per type: (true positives, findings, labels)."""
    stats = {t: [0, 0, 0] for t in TYPES}
    for rec, found in zip(records, findings):
        labels = [dict(lab) for lab in rec["labels"]]
        for lab in labels:
            stats[lab["type"]][2] += 1
        for kind, start, end, s in found:
            if s < min_score or kind not in stats:
                continue
            stats[kind][1] += 1
            for lab in labels:
                if lab["type"] == kind and not lab.get("used") and start < lab["end"] and \
                        lab["start"] < end:
                    lab["used"] = True
                    stats[kind][0] += 1
                    break
    return stats


def pr(stat):
    tp, found, labels = stat
    p = f"{tp / found:.3f}" if found else "–"
    r = f"{tp / labels:.3f}" if labels else "–"
    return p, r




def main():
    ap = corpus_args(__doc__, "pii")
    ap.set_defaults(rows=50000)
    args = ap.parse_args()
    if args.quick:
        args.rows, args.reps = 10000, 2
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    with open(os.path.join(ROOT, "tests", "fixtures", "pii", "corpus.jsonl")) as f:
        records = [json.loads(line) for line in f]
    texts = [r["text"] for r in records]
    big = (texts * (args.rows // len(texts) + 1))[:args.rows]
    src = os.path.join(args.work, "corpus.parquet")
    pq.write_table(pa.table({"id": pa.array(range(len(big)), pa.int64()), "text": big}), src)
    log("building Kiln (release)")
    kiln = cargo_artifact(["cargo", "build", "--release", "--bin", "kiln"], "kiln")
    env = dict(os.environ, NODEVICE_SELECT="1", KILN_DEVICE="cpu")
    out = os.path.join(args.work, "found.parquet")
    job = os.path.join(args.work, "job.sql")
    with open(job, "w") as f:
        f.write(f"COPY (SELECT id, detect_pii(text) AS f FROM '{src}') TO '{out}';\n")
    analyze = presidio()
    cores = os.cpu_count()
    names = ["Kiln detect_pii, 1 core", f"Kiln detect_pii, {cores} cores",
             "Presidio pattern recognizers"]
    times = {n: [] for n in names}
    for rep in range(args.reps):
        time.sleep(0.5)
        times[names[0]].append(run_timed(["taskset", "-c", "0", kiln, "sql", "-f", job], env))
        time.sleep(0.5)
        times[names[1]].append(run_timed([kiln, "sql", "-f", job], env))
        time.sleep(0.5)
        start = time.perf_counter()
        for t in big:
            analyze(t)
        times[names[2]].append(time.perf_counter() - start)
        log(f"run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))

    table = pq.read_table(out).to_pylist()
    by_id = {row["id"]: row["f"] for row in table}
    ours = [[(f["type"], f["start"], f["end"], f["score"]) for f in by_id[i]]
            for i in range(len(records))]
    theirs = [analyze(t) for t in texts]
    kiln_stats = score(records, ours)
    presidio_all = score(records, theirs)
    presidio_half = score(records, theirs, 0.5)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        "# PII detection: Kiln against Presidio's pattern recognizers",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {machine()}; Kiln {git_rev()}, release build, device cpu",
        f"- Accuracy: the labelled corpus tests/fixtures/pii/corpus.jsonl ({len(records)} texts, "
        f"{sum(len(r['labels']) for r in records)} labels; scripts/pii-corpus); a finding counts "
        f"when a label of its type overlaps it",
        f"- Speed: the corpus repeated to {len(big)} texts; {args.reps} interleaved runs, median "
        f"(min–max); Kiln a fresh `kiln sql -f` process per run (Parquet in and out), "
        f"`taskset -c 0` for one core; Presidio over texts in memory, one core",
        f"- Command: `scripts/bench-pii {' '.join(sys.argv[1:])}`",
        "",
        "| run | time | texts/s | Kiln per core vs it |",
        "|---|---|---|---|",
    ]
    for name in names:
        vs = f"{med[name] / med[names[0]]:.1f}×" if name == names[2] else ""
        lines.append(f"| {name} | {fmt_times(times[name])} | {len(big) / med[name]:,.0f} | {vs} |")
    lines += [
        "",
        "| type | labels | Kiln precision | Kiln recall | Presidio precision | Presidio recall "
        "| Presidio ≥ 0.5 precision | Presidio ≥ 0.5 recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in TYPES:
        kp, kr = pr(kiln_stats[t])
        pp, prr = pr(presidio_all[t]) if t in PRESIDIO_TYPES.values() else ("n/a", "n/a")
        hp, hr = pr(presidio_half[t]) if t in PRESIDIO_TYPES.values() else ("n/a", "n/a")
        lines.append(f"| {t} | {kiln_stats[t][2]} | {kp} | {kr} | {pp} | {prr} | {hp} | {hr} |")
    lines.append("")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
