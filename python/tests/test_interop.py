"""Arrow in and out through the PyCapsule interface, without copies."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import kiln
from kiln import col


def test_inputs_from_every_producer(session: kiln.Session) -> None:
    import pandas as pd
    import polars as pl

    data = {"k": [1, 2, 3], "name": ["a", "b", None]}
    table = pa.table(data)
    producers = {
        "arrow_table": table,
        "arrow_reader": pa.RecordBatchReader.from_batches(table.schema, table.to_batches()),
        "polars": pl.DataFrame(data),
        "pandas": pd.DataFrame(data),
    }
    for name, producer in producers.items():
        session.register(name, producer)
        got = session.sql(f"SELECT k, name FROM {name} ORDER BY k").to_pylist()
        assert got == [{"k": 1, "name": "a"}, {"k": 2, "name": "b"}, {"k": 3, "name": None}], name


def test_not_arrow_data_is_a_user_error(session: kiln.Session) -> None:
    with pytest.raises(kiln.UserError, match="is not Arrow data"):
        session.register("t", object())


def test_outputs_to_every_consumer(session: kiln.Session) -> None:
    import duckdb
    import pandas as pd
    import polars as pl

    df = session.sql("SELECT * FROM (VALUES (1, 'x'), (2, 'y')) AS t(a, b) ORDER BY a")
    expected = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert pa.table(df).to_pylist() == expected
    assert df.to_arrow().to_pylist() == expected
    assert df.to_polars().to_dicts() == expected
    assert pl.DataFrame(df).to_dicts() == expected
    assert df.to_pandas().equals(pd.DataFrame(expected))
    assert [b.num_rows for b in df.collect()] == [2]
    frame = df  # noqa: F841 - read by DuckDB's replacement scan
    assert duckdb.sql("SELECT sum(a) AS s FROM frame").fetchall() == [(3,)]


def test_round_trips_keep_types(session: kiln.Session) -> None:
    import polars as pl

    table = pa.table(
        {
            "i": pa.array([1, None], pa.int32()),
            "f": pa.array([1.5, None], pa.float32()),
            "s": pa.array(["x", None], pa.large_string()),
            "t": pa.array([0, 86_400_000_000], pa.timestamp("us", tz="UTC")),
            "v": pa.array([[1.0, 2.0], None], pa.list_(pa.float32(), 2)),
        }
    )
    back = session.from_arrow(table).to_arrow()
    assert back.schema == table.schema
    assert back.equals(table)
    assert pl.from_arrow(back).equals(pl.from_arrow(table))


def test_large_column_crosses_without_a_copy(session: kiln.Session) -> None:
    """A 64 MB column in, the same buffer out: the addresses match."""
    values = np.arange(8_000_000, dtype=np.int64)
    table = pa.table({"x": values})
    session.register("big", table)
    before = table.column("x").chunk(0).buffers()[1].address
    out = session.sql("SELECT x FROM big").to_arrow()
    assert out.num_rows == len(values)
    addresses = {chunk.buffers()[1].address for chunk in out.column("x").chunks}
    # Batches may be sliced, but every slice points into the input's buffer.
    size = values.nbytes
    assert all(before <= a < before + size for a in addresses), (before, addresses)
    # polars over the result shares it too.
    import polars as pl

    series = pl.from_arrow(out).get_column("x")
    assert series.sum() == int(values.sum())


def test_results_stream_batch_by_batch(session: kiln.Session) -> None:
    session.set("datafusion.execution.batch_size", 1000)
    df = session.sql("SELECT value FROM generate_series(1, 10000)")
    reader = pa.RecordBatchReader.from_stream(df)
    first = reader.read_next_batch()
    assert 0 < first.num_rows <= 1000
    rest = reader.read_all()
    assert first.num_rows + rest.num_rows == 10000
    assert rest.num_rows > 0 and len(rest.to_batches()) > 1


def test_batches_are_read_as_they_come(session: kiln.Session) -> None:
    session.set("datafusion.execution.batch_size", 500)
    df = session.sql("SELECT value FROM generate_series(1, 3000)")
    reader = df.to_reader()
    assert isinstance(reader, pa.RecordBatchReader)
    assert reader.schema.names == ["value"]
    sizes = [batch.num_rows for batch in df]
    assert sum(sizes) == 3000 and len(sizes) > 1 and max(sizes) <= 500


def test_stream_errors_surface(session: kiln.Session) -> None:
    df = session.sql("SELECT 1 / (value - 5) AS x FROM generate_series(1, 10)")
    with pytest.raises(Exception, match="Divide by zero"):
        pa.table(df)
    with pytest.raises(kiln.UserError, match="Divide by zero"):
        df.to_arrow()


def test_schema_consumers(session: kiln.Session) -> None:
    df = session.from_arrow(pa.table({"a": [1]})).select((col("a") + 1).alias("b"))
    assert pa.schema(df) == pa.schema([("b", pa.int64())])


def test_s3_round_trip(session: kiln.Session) -> None:
    """Parquet written to and read from S3 (moto's server on loopback)."""
    import os
    import socket

    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        if os.environ.get("KILN_TEST_REQUIRE_S3"):
            raise
        pytest.skip("moto[server] is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        keys = {"aws_access_key_id": "AKIAKILNPYTEST000001", "aws_secret_access_key": "kiln/py+test"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys).create_bucket(
            Bucket="docs"
        )
        session.configure_store(
            "s3://docs/",
            {
                "aws.access_key_id": keys["aws_access_key_id"],
                "aws.secret_access_key": keys["aws_secret_access_key"],
                "aws.region": "us-east-1",
                "aws.endpoint": endpoint,
                "aws.allow_http": "true",
            },
        )
        rows = pa.table({"id": [3, 1, 2], "body": ["c", "a", "b"]})
        assert session.from_arrow(rows).write_parquet("s3://docs/in/") == 3
        back = session.read_parquet("s3://docs/in/").filter(col("id") > 1).sort("id")
        assert back.to_pylist() == [{"id": 2, "body": "b"}, {"id": 3, "body": "c"}]
        session.register_parquet("docs", "s3://docs/in/")
        assert session.sql("SELECT count(*) AS n FROM docs").to_pylist() == [{"n": 3}]
    finally:
        server.stop()
