"""Reference figures for `drift(...)` (tests/it/drift.rs).

  drift_reference.py data DIR       writes the scenarios' Parquet files to DIR
                                    and DIR/scipy.json: each column's test and
                                    figures, by Evidently's rules on scipy
  drift_reference.py evidently DIR  DIR/evidently.json: the same by
                                    Evidently's own stattest functions
  drift_reference.py kstwo          scipy's kstwo.sf and ks_2samp on a grid
"""

import json
import math
import sys

import numpy as np


def scenarios():
    """name -> (reference columns, current columns, vector columns)."""
    rng = np.random.default_rng(20261203)

    def floats(n, shift=0.0, scale=1.0, holes=True):
        x = rng.normal(shift, scale, n)
        if holes:
            x[rng.random(n) < 0.03] = np.nan
            x[rng.random(n) < 0.01] = np.inf
        return x

    def labels(n, probs, names=("red", "green", "blue", "cyan", "magenta", "yellow")):
        return rng.choice(np.array(names[: len(probs)], dtype=object), n, p=probs)

    def ints(n, lo, hi, skew=0.0):
        x = rng.integers(lo, hi, n)
        if skew:
            x = np.where(rng.random(n) < skew, lo, x)
        return x

    def side(n, shift, probs, skew, flag):
        return {
            "x": floats(n, shift),
            "x_same": floats(n),
            "many": ints(n, 0, 60, skew),
            "three": ints(n, 0, 3, skew),
            "two": ints(n, 5, 7, skew),
            "color": labels(n, probs),
            "flag": rng.random(n) < flag,
        }

    out = {}
    # Small references: KS (exact, n1 != n2), chi-squared, Z.
    out["small"] = (
        side(300, 0.0, [0.3, 0.3, 0.2, 0.1, 0.1], 0.0, 0.5),
        side(500, 0.25, [0.2, 0.3, 0.2, 0.2, 0.1], 0.2, 0.6),
        {},
    )
    # Equal sizes: KS's exact square case.
    out["equal"] = (
        side(400, 0.0, [0.5, 0.5], 0.0, 0.5),
        side(400, 0.3, [0.55, 0.45], 0.1, 0.5),
        {},
    )
    # A small reference against a large current: the asymptotic KS
    # distribution with n > 140 (Durbin's matrix, Pelz-Good, Smirnov).
    out["asymptotic"] = (
        {"a": floats(800), "b": floats(800), "c": floats(800), "d": floats(800)},
        {
            "a": floats(20000),
            "b": floats(20000, 0.07),
            "c": floats(20000, 0.4),
            "d": floats(20000, 2.5),
        },
        {},
    )
    # n <= 140: Durbin's matrix, Pomeranz's recursion, Smirnov.
    out["tiny"] = (
        {"a": floats(120, holes=False), "b": floats(120, holes=False), "c": floats(120, holes=False)},
        {
            "a": floats(12000, 0.0, holes=False),
            "b": floats(12000, 0.3, holes=False),
            "c": floats(12000, 1.5, holes=False),
        },
        {},
    )
    # Large references: Wasserstein, Jensen-Shannon; embeddings.
    big_ref = side(5000, 0.0, [0.3, 0.3, 0.2, 0.1, 0.1], 0.0, 0.5)
    big_cur = side(6000, 0.15, [0.3, 0.25, 0.2, 0.15, 0.1], 0.05, 0.52)
    big_ref["five"] = ints(5000, 0, 5)
    big_cur["five"] = ints(6000, 0, 5, 0.1)
    vectors = {
        "emb_same": (rng.normal(0, 1, (5000, 16)), rng.normal(0, 1, (6000, 16))),
        "emb_shift": (rng.normal(0, 1, (5000, 16)), rng.normal(0, 1, (6000, 16)) + np.eye(16)[0] * 0.8),
    }
    out["big"] = (big_ref, big_cur, vectors)
    return out


def kind(values):
    if values.dtype.kind in "if":
        return "numeric"
    return "categorical"


def clean(values):
    if values.dtype.kind == "f":
        return values[np.isfinite(values)]
    return values


def value_counts(values):
    keys, counts = np.unique(values, return_counts=True)
    return dict(zip(keys.tolist(), counts.tolist()))


def binned(ref, cur, numeric, fill):
    if numeric and len(np.unique(ref)) > 20:
        edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
        rp = np.histogram(ref, edges)[0] / len(ref)
        cp = np.histogram(cur, edges)[0] / len(cur)
    else:
        rc, cc = value_counts(ref), value_counts(cur)
        keys = sorted(set(rc) | set(cc))
        rp = np.array([rc.get(k, 0) / len(ref) for k in keys])
        cp = np.array([cc.get(k, 0) / len(cur) for k in keys])
    if fill:
        for p in (rp, cp):
            m = min(p[p != 0])
            np.place(p, p == 0, m / 10**6 if m <= 0.0001 else 0.0001)
    return rp, cp


def scipy_column(ref, cur, numeric):
    """Evidently's choice and thresholds, computed with scipy."""
    from scipy import stats
    from scipy.spatial import distance

    n_values = len(np.unique(np.concatenate([ref, cur])))
    rp, cp = binned(ref, cur, numeric, True)
    psi = float(np.sum((rp - cp) * np.log(rp / cp)))
    row = {"psi": psi}

    def chi():
        rc, cc = value_counts(ref), value_counts(cur)
        keys = sorted(set(rc) | set(cc))
        k = len(cur) / len(ref)
        r = stats.chisquare([cc.get(x, 0) for x in keys], [rc.get(x, 0) * k for x in keys])
        return float(r.statistic), float(r.pvalue)

    def z():
        keys = sorted(set(ref.tolist()) | set(cur.tolist()))
        if len(keys) == 1:
            return 0.0, 1.0
        a = (ref != keys[0]).astype(float)
        b = (cur != keys[0]).astype(float)
        n1, n2 = len(a), len(b)
        p1, p2 = a.sum() / n1, b.sum() / n2
        pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
        zs = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
        return float(zs), float(2 * (1 - stats.norm.cdf(abs(zs))))

    if len(ref) <= 1000:
        if numeric and n_values > 5:
            r = stats.ks_2samp(ref, cur)
            row.update(test="ks", statistic=float(r.statistic), p_value=float(r.pvalue))
            row["drifted"] = bool(row["p_value"] <= 0.05)
        else:
            test = "chisquare" if n_values > 2 else "z"
            s, p = chi() if n_values > 2 else z()
            row.update(test=test, statistic=s, p_value=p, drifted=bool(p < 0.05))
    elif numeric and n_values > 5:
        w = stats.wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001)
        row.update(test="wasserstein", statistic=float(w), drifted=bool(w >= 0.1))
    else:
        rp, cp = binned(ref, cur, numeric, False)
        js = float(distance.jensenshannon(rp, cp))
        row.update(test="jensenshannon", statistic=js, drifted=bool(js >= 0.1))
    return row


def write_data(directory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = {}
    for name, (ref, cur, vectors) in scenarios().items():
        for which, data in (("reference", ref), ("current", cur)):
            columns = {c: pa.array(v.tolist() if v.dtype == object else v) for c, v in data.items()}
            for c, (rv, cv) in vectors.items():
                v = rv if which == "reference" else cv
                flat = pa.array(v.astype(np.float32).ravel())
                columns[c] = pa.FixedSizeListArray.from_arrays(flat, v.shape[1])
            pq.write_table(pa.table(columns), f"{directory}/{name}_{which}.parquet")
        rows = {}
        for c in ref:
            numeric = kind(ref[c]) == "numeric" and ref[c].dtype != bool
            r, k = clean(ref[c]), clean(cur[c])
            if ref[c].dtype == bool:
                r, k = r.astype(str), k.astype(str)
            rows[c] = scipy_column(r, k, numeric)
            rows[c]["values"] = [len(r), len(k)]
        expected[name] = rows
    with open(f"{directory}/scipy.json", "w") as f:
        json.dump(expected, f)


def evidently(directory):
    import pandas as pd
    import pyarrow.parquet as pq
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model, distance

    out = {}
    for name in scenarios():
        ref = pq.read_table(f"{directory}/{name}_reference.parquet").to_pandas()
        cur = pq.read_table(f"{directory}/{name}_current.parquet").to_pandas()
        rows = {}
        for c in ref.columns:
            if c.startswith("emb"):
                r = pd.DataFrame(np.stack(ref[c].to_numpy()).astype(np.float64))
                k = pd.DataFrame(np.stack(cur[c].to_numpy()).astype(np.float64))
                auc, drifted, _ = model(threshold=0.55)(k.copy(), r.copy())
                dist, _, _ = distance()(k.copy(), r.copy())
                rows[c] = {"statistic": float(auc), "drifted": bool(drifted), "centroid_distance": float(dist)}
                continue
            numeric = pd.api.types.is_numeric_dtype(ref[c]) and ref[c].dtype != bool
            t = ColumnType.Numerical if numeric else ColumnType.Categorical
            r = ref[c].replace([-np.inf, np.inf], np.nan).dropna()
            k = cur[c].replace([-np.inf, np.inf], np.nan).dropna()
            test = get_stattest(r, k, t, None)
            result = test(r, k, t, None)
            psi = get_stattest(r, k, t, "psi")(r, k, t, None)
            rows[c] = {
                "test": test.name,
                "drift_score": float(result.drift_score),
                "drifted": bool(result.drifted),
                "psi": float(psi.drift_score),
            }
        out[name] = rows
    with open(f"{directory}/evidently.json", "w") as f:
        json.dump(out, f)


def kstwo():
    from scipy import stats

    grid = []
    for n in [3, 20, 60, 140, 141, 400, 769, 1000]:
        for x in [0.01, 0.03, 0.05, 0.08, 0.12, 0.2, 0.3, 0.45, 0.6, 0.9, 1.0 / n, 0.75 / n]:
            grid.append([n, x, float(stats.kstwo.sf(x, n))])
    samples = []
    rng = np.random.default_rng(5)
    for n1, n2, shift in [(30, 30, 0.5), (50, 70, 0.3), (200, 333, 0.1), (1000, 999, 0.05), (7, 3000, 1.0)]:
        a = np.round(rng.normal(0, 1, n1), 2)
        b = np.round(rng.normal(shift, 1, n2), 2)
        r = stats.ks_2samp(a, b)
        samples.append([a.tolist(), b.tolist(), float(r.statistic), float(r.pvalue)])
    json.dump({"kstwo": grid, "ks_2samp": samples}, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "data":
        write_data(sys.argv[2])
    elif sys.argv[1] == "evidently":
        evidently(sys.argv[2])
    else:
        kstwo()
