"""An Airflow (3.x) DAG that runs a Kiln job daily and retries only what may pass.

Airflow retries a failed task `retries` times; a Kiln failure that is not
retryable (bad SQL, missing input, corrupt file: exit code 1) fails the task
at once with AirflowFailException instead. Retries run with --resume, so
outputs committed by a failed attempt are not computed again.
"""

from datetime import datetime, timedelta

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowFailException

from kiln_job import KilnJobFailed, KilnJobRetryable, run_kiln_job, summary

JOB = "/opt/jobs/embed_corpus.sql"


@dag(
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=5)},
    tags=["kiln"],
)
def embed_corpus():
    @task
    def run_job(ds=None):
        report_path = "/tmp/kiln-embed-corpus-%s.json" % ds
        try:
            report = run_kiln_job(JOB, report_path)
        except KilnJobRetryable:
            raise  # Airflow retries the task
        except KilnJobFailed as e:
            raise AirflowFailException(str(e)) from e  # no retry
        return summary(report)

    run_job()


embed_corpus()
