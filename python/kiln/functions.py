"""The SQL functions as expression builders: DataFusion's (``sum``, ``avg``,
``lower``, ...) and Kiln's (``embed``, ``cosine_similarity``, ``chunk_text``,
``minhash``, ...). Any function SQL knows is here by its name:
``kiln.functions.upper(col("name"))``; ``names()`` lists them."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ._kiln import Expr
from ._kiln import call_function as _call
from ._kiln import function_names as _function_names

__all__ = [
    "avg",
    "call",
    "cosine_similarity",
    "count",
    "dot_product",
    "embed",
    "l2_distance",
    "l2_normalize",
    "max",
    "mean",
    "min",
    "names",
    "sum",
]

_DEFAULT_MODEL = "all-MiniLM-L6-v2"


def call(name: str, *args: Any) -> Expr:
    """The SQL function ``name`` applied to ``args`` (expressions, or Python
    constants taken as literals)."""
    return _call(name, *args)


@lru_cache(maxsize=1)
def _known() -> frozenset[str]:
    return frozenset(_function_names())


def names() -> list[str]:
    """The names of every function ``call`` knows, sorted."""
    return list(_function_names())


def embed(text: Any, model: str | None = None) -> Expr:
    """The embedding of ``text`` by ``model`` (a name or a directory; default
    all-MiniLM-L6-v2), as FixedSizeList<Float32>; NULL text gives NULL."""
    return _call("embed", text, model or _DEFAULT_MODEL)


def cosine_similarity(a: Any, b: Any) -> Expr:
    """Cosine similarity of two vectors (columns or list constants)."""
    return _call("cosine_similarity", a, b)


def dot_product(a: Any, b: Any) -> Expr:
    """Dot product of two vectors."""
    return _call("dot_product", a, b)


def l2_distance(a: Any, b: Any) -> Expr:
    """Euclidean distance between two vectors."""
    return _call("l2_distance", a, b)


def l2_normalize(v: Any) -> Expr:
    """The vector scaled to unit length."""
    return _call("l2_normalize", v)


def count(expr: Any = None) -> Expr:
    """``count(expr)``: the non-NULL values; ``count()``: the rows."""
    return _call("count", 1 if expr is None else expr)


def sum(expr: Any) -> Expr:  # noqa: A001 - SQL's name
    """The sum of the values."""
    return _call("sum", expr)


def avg(expr: Any) -> Expr:
    """The mean of the values."""
    return _call("avg", expr)


mean = avg


def min(expr: Any) -> Expr:  # noqa: A001 - SQL's name
    """The least value."""
    return _call("min", expr)


def max(expr: Any) -> Expr:  # noqa: A001 - SQL's name
    """The greatest value."""
    return _call("max", expr)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if name not in _known():
        raise AttributeError(f"kiln.functions has no function '{name}'")
    return lambda *args: _call(name, *args)
