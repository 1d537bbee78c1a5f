"""Run a Kiln job from an orchestrator (Airflow, Dagster, cron, ...).

`kiln run` tells a failure worth retrying from one that is not by its exit
code: 75 (EX_TEMPFAIL) when the environment failed (a store or the network,
an I/O error, a device, a cluster node) and running again may succeed; 1 when
the job or its data is wrong (bad SQL, a missing table or file, a corrupt
file) and running again fails the same way; 2 for a bad command line. Run
with --resume, a retry skips the outputs the failed attempt committed.

Plain Python (no orchestrator needed), so it can be tested anywhere:
    python kiln_job.py JOB.sql REPORT.json
"""

import json
import os
import subprocess
import sys

RETRYABLE = 75


class KilnJobFailed(Exception):
    """The job failed; running it again will fail the same way."""


class KilnJobRetryable(KilnJobFailed):
    """The job failed for a reason outside it; running it again may succeed."""


def run_kiln_job(job_sql, report_path, kiln="kiln", resume=True, extra_args=()):
    """Runs `kiln run JOB --report REPORT [--resume]`; returns the report.

    Raises KilnJobRetryable (exit code 75) or KilnJobFailed (any other
    failure) with Kiln's one-line error as the message.
    """
    command = [kiln, "run", job_sql, "--report", report_path]
    if resume:
        command.append("--resume")
    command.extend(extra_args)
    done = subprocess.run(command, capture_output=True, text=True)
    report = None
    if os.path.exists(report_path):
        with open(report_path) as f:
            report = json.load(f)
    if done.returncode == 0:
        return report
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    message = lines[-1] if lines else "kiln exited with %d" % done.returncode
    if done.returncode == RETRYABLE:
        raise KilnJobRetryable(message)
    raise KilnJobFailed(message)


def summary(report):
    """The outputs of a report, one dict each: what an orchestrator shows."""
    return [
        {
            "step": step["index"],
            "target": step.get("target") or step.get("name"),
            "rows": step.get("rows"),
            "files": step.get("files"),
            "bytes": step.get("bytes"),
            "resumed": step.get("resumed", False),
        }
        for step in (report or {}).get("steps", [])
        if step["kind"] in ("copy", "create_table", "insert")
    ]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: kiln_job.py JOB.sql REPORT.json")
    try:
        outcome = run_kiln_job(sys.argv[1], sys.argv[2], kiln=os.environ.get("KILN", "kiln"))
    except KilnJobRetryable as e:
        print("retryable:", e)
        sys.exit(RETRYABLE)
    except KilnJobFailed as e:
        print("failed:", e)
        sys.exit(1)
    print(json.dumps(summary(outcome)))
