"""Embeddings and vector search from Python: the Rust path's results."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import kiln
from kiln import col
from kiln import functions as F


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    flat = column.combine_chunks()
    return np.asarray(flat.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(
        len(flat), -1
    )


def test_embed_equals_sql_and_the_reference(session, minilm, reference) -> None:
    texts, expected = reference
    picked = list(range(0, len(texts), 8))
    session.register("docs", pa.table({"id": picked, "body": [texts[i] for i in picked]}))
    frame = session.table("docs").embed("body", as_="v", model=minilm).sort("id").to_arrow()
    sql = session.sql(f"SELECT id, embed(body, '{minilm}') AS v FROM docs ORDER BY id").to_arrow()
    ours = _matrix(frame.column("v"))
    # Bit for bit the SQL function's vectors: one engine path.
    assert np.array_equal(ours, _matrix(sql.column("v")))
    vector_type = frame.schema.field("v").type
    assert vector_type.list_size == 384 and vector_type.value_type == pa.float32()
    ref = expected[picked]
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.9999, cos.min()
    # The function form agrees too.
    via_fn = session.table("docs").select("id", F.embed(col("body"), minilm).alias("v"))
    assert np.array_equal(_matrix(via_fn.sort("id").to_arrow().column("v")), ours)


def _random_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def _vectors_table(ids, vectors: np.ndarray) -> pa.Table:
    dim = vectors.shape[1]
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return pa.table({"id": ids, "v": pa.FixedSizeListArray.from_arrays(flat, dim)})


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_knn_join_is_exact(session: kiln.Session, metric: str) -> None:
    corpus = _random_vectors(500, 16, 1)
    queries = _random_vectors(20, 16, 2)
    c = session.from_arrow(_vectors_table(list(range(500)), corpus))
    q = session.from_arrow(_vectors_table(list(range(20)), queries))
    k = 5
    got = q.knn_join(c, left_on="v", k=k, metric=metric).select("id", "corpus_id", "rank", "score")
    rows = got.sort("id", "rank").to_pylist()
    assert len(rows) == 20 * k
    if metric == "cosine":
        cn = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
        qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        score, best_first = qn @ cn.T, -1
    elif metric == "dot":
        score, best_first = queries @ corpus.T, -1
    else:
        score = np.linalg.norm(queries[:, None, :] - corpus[None, :, :], axis=2)
        best_first = 1
    for qi in range(20):
        order = np.argsort(best_first * score[qi], kind="stable")[:k]
        mine = [r for r in rows if r["id"] == qi]
        assert [r["corpus_id"] for r in mine] == order.tolist(), (metric, qi)
        assert [r["rank"] for r in mine] == list(range(1, k + 1))
        np.testing.assert_allclose([r["score"] for r in mine], score[qi, order], rtol=1e-4, atol=1e-4)


def test_vector_search_is_exact(session: kiln.Session) -> None:
    corpus = _random_vectors(300, 8, 3)
    query = _random_vectors(1, 8, 4)[0]
    df = session.from_arrow(_vectors_table(list(range(300)), corpus))
    got = df.vector_search("v", query.tolist(), k=7).to_pylist()
    cn = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    scores = cn @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:7]
    assert [r["id"] for r in got] == order.tolist()
    np.testing.assert_allclose([r["score"] for r in got], scores[order], rtol=1e-4)
    with pytest.raises(kiln.UserError, match="dimension mismatch"):
        df.vector_search("v", [1.0, 2.0], k=3)
    with pytest.raises(kiln.UserError, match="metric"):
        df.vector_search("v", query.tolist(), k=3, metric="hamming")
    with pytest.raises(kiln.UserError, match="no column 'w'"):
        df.vector_search("w", query.tolist())


def test_issue_example_shape(session: kiln.Session, minilm) -> None:
    """The README's pipeline: filter, embed, knn_join against a table."""
    session.register(
        "docs",
        pa.table(
            {
                "doc": ["d1", "d2", "d3"],
                "lang": ["en", "en", "de"],
                "body": ["rotate the api keys", "bake bread at home", "schluessel drehen"],
            }
        ),
    )
    session.register("q", pa.table({"qid": [1], "text": ["how do I rotate keys?"]}))
    questions = session.table("q").embed("text", as_="v", model=minilm)
    session.register("questions", questions.to_arrow())
    hits = (
        session.table("docs")
        .filter(col("lang") == "en")
        .embed("body", as_="v", model=minilm)
        .knn_join(session.table("questions"), left_on="v", right_on="v", k=1)
        .select("doc", "qid", "rank")
    )
    assert sorted(hits.to_pylist(), key=lambda r: r["doc"]) == [
        {"doc": "d1", "qid": 1, "rank": 1},
        {"doc": "d2", "qid": 1, "rank": 1},
    ]
