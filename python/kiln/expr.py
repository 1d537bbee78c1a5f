"""Expressions: ``col``, ``lit`` and Python's operators on them."""

from __future__ import annotations

from typing import Any

from ._kiln import Expr, SortExpr
from ._kiln import col as _col
from ._kiln import lit as _lit

__all__ = ["Expr", "SortExpr", "col", "lit"]


def col(name: str) -> Expr:
    """The column ``name``, exactly as spelled (no case folding)."""
    return _col(name)


def lit(value: Any) -> Expr:
    """A constant: None, bool, int (Int64), float (Float64), str, bytes, or a
    list of numbers (a vector, FixedSizeList<Float32>)."""
    return _lit(value)
