"""Kiln for Python: SQL and lazy DataFrames over Parquet, Delta and Arrow data,
with embeddings and vector search, run by Kiln's Rust engine on a GPU (CUDA,
wgpu) or the CPU.

    import kiln
    s = kiln.Session()
    df = s.read_parquet("data/docs.parquet")
    hits = df.filter(kiln.col("lang") == "en").embed("body", as_="v")
    table = hits.to_arrow()

Every operation is the Rust engine's; results leave as Arrow through the C
stream interface (``__arrow_c_stream__``), so pyarrow, polars and DuckDB read
them without a copy.
"""

from __future__ import annotations

from . import functions
from ._kiln import (
    InternalError,
    KilnError,
    ResourceError,
    UserError,
    __version__,
)
from ._kiln import devices as _devices
from .dataframe import DataFrame, GroupBy
from .expr import Expr, SortExpr, col, lit
from .session import Session

__all__ = [
    "DataFrame",
    "Expr",
    "GroupBy",
    "InternalError",
    "KilnError",
    "ResourceError",
    "Session",
    "SortExpr",
    "UserError",
    "__version__",
    "col",
    "devices",
    "functions",
    "lit",
]


def devices() -> list[dict]:
    """The devices on this machine, as ``kiln devices`` lists them: one dict per
    device with ``id`` (the form ``Session(device=...)`` takes), ``backend``,
    ``name``, ``type``, ``memory_bytes`` and ``details``."""
    return list(_devices())
