"""The Session and DataFrame API, each operation checked on its result."""

from __future__ import annotations

import statistics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kiln
from kiln import col, lit
from kiln import functions as F


@pytest.fixture
def events(session: kiln.Session) -> kiln.Session:
    session.register(
        "events",
        pa.table(
            {
                "id": [1, 2, 3, 4, 5, 6],
                "lang": ["en", "de", "en", "fr", "en", None],
                "score": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5],
            }
        ),
    )
    return session


def test_sql_to_arrow(events: kiln.Session) -> None:
    t = events.sql("SELECT lang, count(*) AS n FROM events GROUP BY lang ORDER BY n DESC, lang").to_arrow()
    assert isinstance(t, pa.Table)
    assert t.to_pylist() == [
        {"lang": "en", "n": 3},
        {"lang": "de", "n": 1},
        {"lang": "fr", "n": 1},
        {"lang": None, "n": 1},
    ]


def test_ddl_runs_at_once(session: kiln.Session) -> None:
    session.sql("CREATE VIEW v AS SELECT 41 + 1 AS answer")
    assert "v" in session.tables()
    assert session.table("v").to_pylist() == [{"answer": 42}]


def test_lazy_frame_operations(events: kiln.Session) -> None:
    df = (
        events.table("events")
        .filter((col("lang") == "en") & (col("score") > 1))
        .with_column("double", col("score") * 2)
        .select("id", "double")
        .sort("id", descending=True)
    )
    assert df.columns == ["id", "double"]
    assert df.to_pylist() == [{"id": 5, "double": 9.0}, {"id": 3, "double": 5.0}]


def test_filter_takes_sql_text(events: kiln.Session) -> None:
    df = events.table("events").filter("lang = 'en' AND id > 1").select("id")
    assert df.to_arrow().column("id").to_pylist() == [3, 5]


def test_group_by_and_aggregate_agree(events: kiln.Session) -> None:
    df = events.table("events")
    polars_shape = (
        df.group_by("lang")
        .agg(F.count().alias("n"), F.sum(col("score")).alias("total"))
        .sort("lang")
        .to_pylist()
    )
    datafusion_shape = (
        df.aggregate(["lang"], [F.count().alias("n"), F.sum(col("score")).alias("total")])
        .sort(col("lang").asc())
        .to_pylist()
    )
    assert polars_shape == datafusion_shape
    assert polars_shape[1] == {"lang": "en", "n": 3, "total": 7.5}


def test_join_on_shared_and_named_keys(session: kiln.Session) -> None:
    left = session.from_arrow(pa.table({"k": [1, 2, 3], "v": ["a", "b", "c"]}))
    right = session.from_arrow(pa.table({"k": [2, 3, 4], "v": ["B", "C", "D"]}))
    inner = left.join(right, on="k").sort("k").to_pylist()
    assert inner == [{"k": 2, "v": "b", "v_right": "B"}, {"k": 3, "v": "c", "v_right": "C"}]
    lefty = left.join(right, how="left", left_on="k", right_on="k").sort("k").to_arrow()
    assert lefty.column_names == ["k", "v", "k_right", "v_right"]
    assert lefty.column("v_right").to_pylist() == [None, "B", "C"]
    anti = left.join(right, on="k", how="anti").to_pylist()
    assert anti == [{"k": 1, "v": "a"}]
    with pytest.raises(kiln.UserError, match="how must be"):
        left.join(right, on="k", how="sideways")


def test_limit_distinct_union(session: kiln.Session) -> None:
    df = session.from_arrow(pa.table({"x": [3, 1, 2, 3, 1]}))
    assert df.distinct().sort("x").to_arrow().column("x").to_pylist() == [1, 2, 3]
    assert df.sort("x").limit(2, offset=1).to_arrow().column("x").to_pylist() == [1, 2]
    assert df.union(df).count() == 10


def test_expressions(session: kiln.Session) -> None:
    df = session.from_arrow(pa.table({"a": [1, 2, None], "s": ["x", "y", "z"]}))
    out = df.select(
        (1 + col("a") * 10 - 1).alias("arith"),
        (col("a").cast("Float64") / 2).alias("half"),
        col("a").is_null().alias("missing"),
        col("s").is_in(["x", "z"]).alias("xz"),
        (~(col("a") > 1)).alias("not_big"),
        F.upper(col("s")).alias("upper"),
        lit(None).alias("nothing"),
    ).to_pylist()
    assert out[0] == {
        "arith": 10, "half": 0.5, "missing": False, "xz": True, "not_big": True,
        "upper": "X", "nothing": None,
    }
    assert out[2]["missing"] is True and out[2]["arith"] is None
    with pytest.raises(kiln.UserError, match="truth value"):
        bool(col("a") > 1)
    with pytest.raises(kiln.UserError, match="cannot use a dict as a constant"):
        lit({})
    with pytest.raises(AttributeError, match="no function 'no_such_function'"):
        F.no_such_function  # noqa: B018
    assert "cosine_similarity" in F.names() and "embed" in F.names()


def test_with_columns(session: kiln.Session) -> None:
    df = session.from_arrow(pa.table({"a": [1, 2]}))
    out = df.with_columns((col("a") * 2).alias("b"), c=col("a") + 1).to_pylist()
    assert out == [{"a": 1, "b": 2, "c": 2}, {"a": 2, "b": 4, "c": 3}]
    with pytest.raises(kiln.UserError, match="alias"):
        df.with_columns(col("a") * 2)


def test_read_and_write_parquet(session: kiln.Session, tmp_path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(100)), "v": [i * 0.5 for i in range(100)]}), source)
    df = session.read_parquet(str(source)).filter(col("id") % 10 == 0)
    written = df.write_parquet(str(tmp_path / "out.parquet"))
    assert written == 10
    back = pq.read_table(tmp_path / "out.parquet")
    assert sorted(back.column("id").to_pylist()) == list(range(0, 100, 10))
    session.register_parquet("t", str(tmp_path / "out.parquet"))
    assert session.sql("SELECT sum(id) AS s FROM t").to_pylist() == [{"s": 450}]
    # A directory: committed with its _SUCCESS marker.
    out_dir = tmp_path / "out_dir"
    assert session.read_parquet(str(source)).write_parquet(str(out_dir)) == 100
    assert (out_dir / "_SUCCESS").exists()


def test_schema_explain_show(events: kiln.Session, capsys) -> None:
    df = events.table("events").select("id", (col("score") * 2).alias("s2"))
    assert df.schema() == pa.schema([("id", pa.int64()), ("s2", pa.float64())])
    plan = df.explain()
    assert "== physical_plan ==" in plan and "ProjectionExec" in plan
    analyzed = df.explain(analyze=True)
    assert "output_rows" in analyzed
    df.limit(2).show()
    printed = capsys.readouterr().out
    assert "| id | s2  |" in printed and "| 1  | 1.0 |" in printed


def test_options_set_and_get(session: kiln.Session) -> None:
    session.set("kiln.embed_precision", "int8")
    assert session.get("kiln.embed_precision") == "int8"
    session.set("datafusion.execution.batch_size", 1024)
    assert session.get("datafusion.execution.batch_size") == "1024"
    with pytest.raises(kiln.UserError, match="embed_precision"):
        session.set("kiln.embed_precision", "f64")
    with pytest.raises(kiln.UserError, match="unknown option 'kiln.nope'"):
        session.get("kiln.nope")
    s = kiln.Session(device="cpu", target_partitions=3, options={"kiln.embed_precision": "f32"})
    assert s.get("datafusion.execution.target_partitions") == "3"
    assert s.device == "cpu:0"


def test_devices_lists_the_cpu() -> None:
    found = kiln.devices()
    cpu = [d for d in found if d["backend"] == "cpu"]
    assert cpu and cpu[0]["id"] == "cpu:0"
    assert set(cpu[0]) == {"id", "backend", "name", "type", "memory_bytes", "details"}


def test_deregister(session: kiln.Session) -> None:
    session.register("t", pa.table({"a": [1]}))
    assert session.deregister("t") is True
    assert session.deregister("t") is False
    with pytest.raises(kiln.UserError, match="not found"):
        session.sql("SELECT * FROM t")


def test_profile(session: kiln.Session) -> None:
    vectors = pa.FixedSizeListArray.from_arrays(
        pa.array([3.0, 4.0, 0.0, 0.0, 1.0, 0.0], pa.float32()), 2
    )
    session.register(
        "p",
        pa.table({"n": [1, 2, 2], "s": ["a", None, "ccc"], "v": vectors}),
    )
    rows = {r["column"]: r for r in session.table("p").profile(top=1).to_pylist()}
    assert rows["n"]["kind"] == "numeric" and rows["n"]["mean"] == 5 / 3
    assert rows["n"]["top_values"] == [{"value": "2", "count": 2}]
    assert rows["s"]["nulls"] == 1 and rows["s"]["max_length"] == 3
    v = rows["v"]
    assert (v["kind"], v["dimension"], v["zero_vectors"]) == ("vector", 2, 1)
    assert (v["norm_min"], v["norm_max"]) == (0.0, 5.0) and v["top_values"] is None
    assert v["duplicate_vectors"] == 0 and v["centroid"] == pytest.approx([4 / 3, 4 / 3])
    via_sql = session.sql("SELECT * FROM profile('p', 1)").to_pylist()
    assert [r["column"] for r in via_sql] == ["n", "s", "v"]


def test_drift(session: kiln.Session) -> None:
    reference = pa.table({"x": [float(i % 10) for i in range(2000)], "k": ["a", "b"] * 1000})
    current = pa.table({"x": [float(i % 10 + 3) for i in range(2000)], "k": ["a", "b"] * 1000})
    session.register("ref", reference)
    session.register("cur", current)
    rows = {r["column"]: r for r in session.table("ref").drift(session.table("cur")).to_pylist()}
    assert rows["x"]["test"] == "wasserstein" and rows["x"]["drifted"] is True
    # Wasserstein distance 3 over the reference's standard deviation.
    assert abs(rows["x"]["statistic"] - 3 / statistics.pstdev(reference["x"].to_pylist())) < 1e-9
    assert rows["k"]["test"] == "jensenshannon" and rows["k"]["drifted"] is False
    only = session.table("ref").drift(session.table("cur"), columns="k").to_pylist()
    assert [r["column"] for r in only] == ["k"]
    with pytest.raises(kiln.UserError, match="missing from the reference: nope"):
        session.table("ref").drift(session.table("cur"), columns=["nope"]).to_pylist()
    with pytest.raises(TypeError, match="kiln DataFrame"):
        session.table("ref").drift(current)  # type: ignore[arg-type]


def test_lineage(session: kiln.Session) -> None:
    session.register("orders", pa.table({"id": [1, 2], "price": [3.0, 4.0], "region": ["n", "s"]}))
    frame = session.sql(
        "SELECT region, sum(price) AS total, md5(region) AS h FROM orders WHERE price > 1 GROUP BY region"
    )
    facet = frame.lineage()

    def uses(inputs: list) -> set:
        return {(i["name"], i["field"], t["subtype"], t["masking"]) for i in inputs for t in i["transformations"]}

    assert uses(facet["fields"]["region"]["inputFields"]) == {("orders", "region", "IDENTITY", False)}
    assert uses(facet["fields"]["total"]["inputFields"]) == {("orders", "price", "AGGREGATION", False)}
    assert uses(facet["fields"]["h"]["inputFields"]) == {("orders", "region", "TRANSFORMATION", True)}
    assert uses(facet["dataset"]) == {("orders", "price", "FILTER", False), ("orders", "region", "GROUP_BY", False)}
    assert {i["namespace"] for i in facet["dataset"]} == {"kiln"}


def test_join_asof_matches_pandas(session: kiln.Session) -> None:
    import datetime

    import pandas as pd

    events = pa.table(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "k": ["a", "a", "b", "b", "a", "c"],
            "ts": [10, 20, 5, 30, 25, 7],
        }
    )
    features = pa.table(
        {"k": ["a", "a", "b", "b"], "ts": [8, 20, 1, 40], "v": [1.5, 2.5, 3.5, 4.5]}
    )
    left = session.from_arrow(events)
    right = session.from_arrow(features)

    def pandas(**kw: object) -> dict[int, float | None]:
        m = pd.merge_asof(
            events.to_pandas().sort_values("ts"),
            features.to_pandas().sort_values("ts"),
            on="ts",
            by="k",
            **kw,  # type: ignore[arg-type]
        )
        return {int(i): (None if pd.isna(v) else float(v)) for i, v in zip(m["id"], m["v"])}

    def ours(frame: kiln.DataFrame) -> dict[int, float | None]:
        return {r["id"]: r["v"] for r in frame.to_pylist()}

    assert ours(left.join_asof(right, on="ts", by="k")) == pandas()
    assert ours(left.join_asof(right, on="ts", by="k", allow_exact_matches=False)) == pandas(
        allow_exact_matches=False
    )
    assert ours(left.join_asof(right, on="ts", by="k", tolerance=4)) == pandas(tolerance=4)
    inner = left.join_asof(right, on="ts", by="k", how="inner")
    assert sorted(ours(inner)) == [1, 2, 3, 4, 5]  # 6 (key c) has no match
    assert left.join_asof(right, on="ts", by="k").columns == ["id", "k", "ts", "ts_right", "v"]
    with pytest.raises(kiln.UserError, match="strategy must be 'backward'"):
        left.join_asof(right, on="ts", strategy="forward")
    with pytest.raises(kiln.UserError, match="a duration tolerance needs a date or timestamp"):
        left.join_asof(right, on="ts", by="k", tolerance=datetime.timedelta(seconds=1))
