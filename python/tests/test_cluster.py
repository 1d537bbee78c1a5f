"""A session on a Kiln cluster (`kiln cluster local`: a scheduler and an
executor as child processes on loopback)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kiln


@pytest.fixture
def cluster():
    binary = os.environ.get("KILN_TEST_KILN_BIN")
    if not binary:
        pytest.skip("KILN_TEST_KILN_BIN is not set (the workspace's test build sets it)")
    proc = subprocess.Popen(
        [binary, "cluster", "local", "--port", "0", "--executors", "1", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("df://"), address
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_session_on_a_cluster_gives_the_local_result(cluster, tmp_path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"g": [i % 3 for i in range(1000)], "v": list(range(1000))}), path)
    query = f"SELECT g, sum(v) AS s, count(*) AS n FROM '{path}' GROUP BY g ORDER BY g"
    remote = kiln.Session(cluster=cluster)
    assert repr(remote) == f"Session(cluster={cluster})"
    local = kiln.Session(device="cpu")
    assert remote.sql(query).to_pylist() == local.sql(query).to_pylist()
    frame = remote.read_parquet(str(path)).filter(kiln.col("g") == 1).select("v")
    assert frame.count() == 333


def test_an_unreachable_cluster_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(kiln.ResourceError, match="cannot reach the Kiln scheduler"):
        kiln.Session(cluster="df://127.0.0.1:9")
    assert time.monotonic() - start < 15
