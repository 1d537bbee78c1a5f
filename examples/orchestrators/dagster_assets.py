"""A Dagster asset materialized by a Kiln job.

A retryable Kiln failure (exit code 75) asks Dagster to retry; any other
fails the run with Kiln's one-line error. The job runs with --resume, so a
retry skips the outputs already committed. The report becomes the
materialization's metadata.
"""

from dagster import (
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryRequested,
    asset,
)

from kiln_job import KilnJobFailed, KilnJobRetryable, run_kiln_job, summary

JOB = "/opt/jobs/embed_corpus.sql"


@asset
def embedded_corpus(context) -> MaterializeResult:
    report_path = "/tmp/kiln-embedded-corpus-%s.json" % context.run_id
    try:
        report = run_kiln_job(JOB, report_path)
    except KilnJobRetryable as e:
        raise RetryRequested(max_retries=3, seconds_to_wait=300) from e
    except KilnJobFailed as e:
        raise Failure(description=str(e)) from e
    outputs = summary(report)
    return MaterializeResult(
        metadata={
            "rows": sum(o["rows"] or 0 for o in outputs),
            "resumed_steps": report["resumed_steps"],
            "embedded_rows": report["embedded_rows"],
            "outputs": MetadataValue.json(outputs),
        }
    )


defs = Definitions(assets=[embedded_corpus])
