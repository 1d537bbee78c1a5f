"""Reference results for the as-of join (tests/it/asof_join.rs).

  asof_reference.py DIR   writes DIR/{events,features,events_clean,
                          features_clean,features_by_time}.parquet (shuffled: unsorted input)
                          and DIR/expected.json: per case, event id -> the
                          matched feature value (null: no match; an id
                          absent: the event was dropped), by DuckDB's ASOF
                          JOIN and by pandas' merge_asof.
"""

import json
import sys

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def tables(rng, n_events, n_features, nulls):
    ek = rng.integers(0, 40, n_events).astype(float)
    fk = rng.integers(0, 40, n_features).astype(float)
    # Times from a small range: many ties between events, and events at the
    # very time of a feature row.
    ets = rng.integers(0, 3000, n_events).astype(float)
    fts = rng.integers(0, 3000, n_features).astype(float)
    if nulls:
        ek[rng.random(n_events) < 0.05] = np.nan
        fk[rng.random(n_features) < 0.05] = np.nan
        ets[rng.random(n_events) < 0.05] = np.nan
        fts[rng.random(n_features) < 0.05] = np.nan
    # One feature row per (key, time): which of two rows with the same key
    # and time an as-of join takes is unspecified (DuckDB's, Kiln's).
    features = pd.DataFrame({"fk": fk, "fts": fts})
    features = features.drop_duplicates(subset=["fk", "fts"]).reset_index(drop=True)
    features["v"] = np.arange(len(features)) * 10 + 7
    events = pd.DataFrame({"id": np.arange(n_events), "k": ek, "ts": ets})
    return events.sample(frac=1, random_state=1), features.sample(frac=1, random_state=2)


def to_arrow(df, ints):
    cols = {}
    for c in df.columns:
        values = df[c].to_numpy()
        if c in ints:
            mask = np.isnan(values)
            cols[c] = pa.array(np.where(mask, 0, values).astype(np.int64), mask=mask)
        else:
            cols[c] = pa.array(values)
    # A timestamp copy of the time, in seconds from 2026-01-01.
    for c in ("ts", "fts"):
        if c in df.columns:
            cols[c + "_at"] = pa.compute.add(
                pa.scalar(pd.Timestamp("2026-01-01"), pa.timestamp("us")),
                pa.compute.cast(pa.compute.multiply(cols[c], 1_000_000), pa.duration("us")),
            )
    return pa.table(cols)


def main(directory):
    rng = np.random.default_rng(20261203)
    events, features = tables(rng, 20000, 6000, nulls=True)
    clean_events, clean_features = tables(rng, 20000, 6000, nulls=False)
    ints = {"id", "k", "ts", "fk", "fts", "v"}
    files = {
        "events": to_arrow(events, ints),
        "features": to_arrow(features, ints),
        "events_clean": to_arrow(clean_events, ints),
        "features_clean": to_arrow(clean_features, ints),
        # Without keys, one feature row per time (see above).
        "features_by_time": to_arrow(features.drop_duplicates(subset=["fts"]), ints),
    }
    for name, table in files.items():
        pq.write_table(table, f"{directory}/{name}.parquet")

    con = duckdb.connect()
    for name, table in files.items():
        con.register(name, table)

    def duck(sql):
        return {int(i): (None if v is None else int(v)) for i, v in con.execute(sql).fetchall()}

    # The very statements Kiln runs too (tests/it/asof_join.rs).
    sql = {
        "duckdb_asof_join":
            "SELECT e.id, f.v FROM events e ASOF JOIN features f ON e.k = f.fk AND e.ts >= f.fts",
        "duckdb_asof_left_join":
            "SELECT e.id, f.v FROM events e ASOF LEFT JOIN features f ON e.k = f.fk AND e.ts >= f.fts",
        "duckdb_strict":
            "SELECT e.id, f.v FROM events e ASOF LEFT JOIN features f ON e.k = f.fk AND e.ts > f.fts",
        "duckdb_no_keys":
            "SELECT e.id, f.v FROM events e ASOF LEFT JOIN features_by_time f ON e.ts >= f.fts",
        "duckdb_timestamps":
            "SELECT e.id, f.v FROM events e ASOF JOIN features f ON e.k = f.fk AND e.ts_at >= f.fts_at",
    }
    expected = {case: duck(q) for case, q in sql.items()}
    expected["sql"] = sql

    left = clean_events.sort_values("ts")
    right = clean_features.sort_values("fts")

    def pandas_case(**kw):
        m = pd.merge_asof(left, right, left_on="ts", right_on="fts", left_by="k", right_by="fk",
                          direction="backward", **kw)
        return {int(i): (None if pd.isna(v) else int(v)) for i, v in zip(m["id"], m["v"])}

    expected["pandas"] = pandas_case()
    expected["pandas_tolerance"] = pandas_case(tolerance=50)
    expected["pandas_strict"] = pandas_case(allow_exact_matches=False)
    at_left = left.assign(ts_at=pd.Timestamp("2026-01-01") + pd.to_timedelta(left["ts"], unit="s"))
    at_right = right.assign(fts_at=pd.Timestamp("2026-01-01") + pd.to_timedelta(right["fts"], unit="s"))
    m = pd.merge_asof(at_left, at_right, left_on="ts_at", right_on="fts_at", left_by="k",
                      right_by="fk", tolerance=pd.Timedelta(seconds=90))
    expected["pandas_timestamp_tolerance"] = {
        int(i): (None if pd.isna(v) else int(v)) for i, v in zip(m["id"], m["v"])
    }
    with open(f"{directory}/expected.json", "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main(sys.argv[1])
