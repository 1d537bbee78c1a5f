"""``kiln.DataFrame``: a lazy query. Nothing runs until a terminal operation:
``to_arrow``, ``collect``, ``to_polars``, ``to_pandas``, ``write_parquet``,
``show``, ``count``, or any reader of ``__arrow_c_stream__``."""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING, Any, Sequence

from . import _kiln
from .expr import Expr, SortExpr

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    import polars
    import pyarrow

__all__ = ["DataFrame", "GroupBy"]



class DataFrame:
    """A lazy query over a session's data (polars' LazyFrame shape,
    datafusion-python's names). Methods return new frames."""

    def __init__(self, frame: _kiln.DataFrame) -> None:
        self._frame = frame

    def __repr__(self) -> str:
        return repr(self._frame)

    # --- transformations -------------------------------------------------

    @property
    def columns(self) -> list[str]:
        """The output's column names."""
        return list(self._frame.columns)

    def schema(self) -> "pyarrow.Schema":
        """The output's Arrow schema."""
        import pyarrow

        return pyarrow.schema(self._frame)

    def select(self, *exprs: str | Expr) -> DataFrame:
        """The columns ``exprs`` (names or expressions), in that order."""
        return DataFrame(self._frame.select(*exprs))

    def filter(self, predicate: Expr | str) -> DataFrame:
        """The rows where ``predicate`` (an Expr, or SQL text such as
        ``"lang = 'en'"``) is true."""
        return DataFrame(self._frame.filter(predicate))

    where = filter

    def with_column(self, name: str, expr: Any) -> DataFrame:
        """Adds (or replaces) column ``name`` computed by ``expr``."""
        return DataFrame(self._frame.with_column(name, expr))

    def with_columns(self, *exprs: Expr, **named: Any) -> DataFrame:
        """Adds (or replaces) several columns: aliased expressions
        (``(col("a") * 2).alias("b")``) or ``name=expr``."""
        frame = self._frame
        for e in exprs:
            name = _alias_of(e)
            frame = frame.with_column(name, e)
        for name, e in named.items():
            frame = frame.with_column(name, e)
        return DataFrame(frame)

    def with_column_renamed(self, old: str, new: str) -> DataFrame:
        """Renames column ``old`` to ``new``."""
        return DataFrame(self._frame.with_column_renamed(old, new))

    rename_column = with_column_renamed

    def drop(self, *columns: str) -> DataFrame:
        """Drops the named columns."""
        return DataFrame(self._frame.drop(*columns))

    def aggregate(self, group_by: Sequence[str | Expr], aggs: Sequence[Expr]) -> DataFrame:
        """One row per group of ``group_by`` with the aggregates ``aggs``."""
        return DataFrame(self._frame.aggregate(list(group_by), list(aggs)))

    def group_by(self, *keys: str | Expr) -> GroupBy:
        """Groups by ``keys``; ``.agg(...)`` aggregates each group."""
        return GroupBy(self._frame.group_by(*keys))

    def join(
        self,
        right: DataFrame,
        on: str | Sequence[str] | None = None,
        how: str = "inner",
        *,
        left_on: str | Sequence[str] | None = None,
        right_on: str | Sequence[str] | None = None,
    ) -> DataFrame:
        """Joins ``right`` on columns named alike (``on``, the right copies
        dropped) or on ``left_on``/``right_on``. ``how``: 'inner', 'left',
        'right', 'full', 'semi' or 'anti'. A right column whose name the
        left has is suffixed ``_right``."""
        return DataFrame(
            self._frame.join(right._frame, on=on, how=how, left_on=left_on, right_on=right_on)
        )

    def sort(self, *by: str | Expr | SortExpr, descending: bool | Sequence[bool] = False) -> DataFrame:
        """Sorts by ``by`` (names, expressions, or ``col("x").desc()``)."""
        flags = descending if isinstance(descending, bool) else list(descending)
        return DataFrame(self._frame.sort(*by, descending=flags))

    def limit(self, n: int, offset: int = 0) -> DataFrame:
        """The first ``n`` rows after skipping ``offset``."""
        return DataFrame(self._frame.limit(n, offset))

    head = limit

    def distinct(self) -> DataFrame:
        """The distinct rows."""
        return DataFrame(self._frame.distinct())

    def union(self, other: DataFrame) -> DataFrame:
        """This frame's rows, then ``other``'s (same columns)."""
        return DataFrame(self._frame.union(other._frame))

    # --- AI operators ----------------------------------------------------

    def embed(self, column: str, as_: str = "embedding", model: str | None = None) -> DataFrame:
        """Adds column ``as_``: the embedding of text column ``column`` by
        ``model`` (a name or a directory; default all-MiniLM-L6-v2), as
        FixedSizeList<Float32>. NULL text gives NULL."""
        return DataFrame(self._frame.embed(column, as_, model))

    def knn_join(
        self,
        corpus: DataFrame,
        left_on: str,
        right_on: str | None = None,
        k: int = 10,
        metric: str = "cosine",
    ) -> DataFrame:
        """For every row, its ``k`` nearest rows of ``corpus`` by the vector
        columns ``left_on`` and ``right_on`` (default: the same name): this
        frame's columns, the corpus's (clashing names prefixed ``corpus_``),
        ``rank`` and ``score``. Exact; ``metric``: 'cosine', 'dot' or 'l2'."""
        return DataFrame(self._frame.knn_join(corpus._frame, left_on, right_on, k, metric))

    def vector_search(
        self, column: str, query: Sequence[float], k: int = 10, metric: str = "cosine"
    ) -> DataFrame:
        """The ``k`` rows whose vector column ``column`` is closest to ``query``:
        all columns and ``score``, closest first. Exact."""
        return DataFrame(self._frame.vector_search(column, list(query), k, metric))

    def profile(self, top: int = 20) -> DataFrame:
        """The profile of these rows, one row per column: ``rows``, ``nulls``,
        ``distinct_approx`` (HyperLogLog, ~0.8% standard error), ``min``,
        ``max``; numeric ``mean``, ``stddev`` and ``p01``..``p99``
        (t-digest); text ``min_length``/``mean_length``/``max_length``;
        vector ``dimension``, ``norm_*``, ``zero_vectors``,
        ``duplicate_vectors`` (exact) and ``centroid``; and the
        ``top`` most frequent values with their counts."""
        return DataFrame(self._frame.profile(top))

    def lineage(self) -> dict[str, Any]:
        """Where each column of these rows comes from, as OpenLineage's
        ``columnLineage`` facet: ``fields`` maps each output column to its
        ``inputFields`` (``namespace``, ``name``: the dataset, ``field``, and
        ``transformations``: ``type`` DIRECT with ``subtype`` IDENTITY,
        TRANSFORMATION or AGGREGATION, or INDIRECT with CONDITIONAL or
        WINDOW); ``dataset`` lists what decides the rows (INDIRECT FILTER,
        JOIN, GROUP_BY, SORT). Traced on the optimized plan; runs nothing."""
        return json.loads(self._frame.lineage())

    def join_asof(
        self,
        other: DataFrame,
        *,
        on: str | None = None,
        left_on: str | None = None,
        right_on: str | None = None,
        by: str | list[str] | None = None,
        by_left: str | list[str] | None = None,
        by_right: str | list[str] | None = None,
        strategy: str = "backward",
        tolerance: int | float | datetime.timedelta | None = None,
        allow_exact_matches: bool = True,
        how: str = "left",
    ) -> DataFrame:
        """The as-of (point-in-time) join with ``other``, as Polars' ``join_asof``:
        for each row, the latest row of ``other`` with equal ``by`` keys whose
        ``on`` time is at or before this row's (strictly before when
        ``allow_exact_matches=False``), no further back than ``tolerance``
        (a number in the time's units, or a ``timedelta`` for dates and
        timestamps). ``how="left"`` keeps rows without a match (NULLs);
        ``"inner"`` drops them. Every column of this frame, then ``other``'s
        but its keys (a name taken suffixed ``_right``). A sort-merge join
        over key partitions: neither side need fit in memory."""
        if not isinstance(other, DataFrame):
            raise TypeError(f"join_asof: other must be a kiln DataFrame, got {type(other).__name__}")
        return DataFrame(
            self._frame.join_asof(
                other._frame, on, left_on, right_on, by, by_left, by_right, strategy, tolerance,
                allow_exact_matches, how,
            )
        )

    def drift(self, current: DataFrame, columns: str | list[str] | None = None) -> DataFrame:
        """How ``current`` drifted from these rows (the reference), one row per
        column (``columns``, or every column): ``test`` (chosen as Evidently
        chooses it: ``ks``, ``chisquare`` or ``z`` for a reference of at most
        1,000 values, else ``wasserstein`` or ``jensenshannon``;
        ``domain_classifier`` for embeddings), ``statistic``, ``p_value``,
        ``drift_score``, ``threshold``, ``drifted``, ``psi`` and, for
        embeddings, ``centroid_distance``."""
        if not isinstance(current, DataFrame):
            raise TypeError(f"drift: current must be a kiln DataFrame, got {type(current).__name__}")
        return DataFrame(self._frame.drift(current._frame, columns))

    # --- plans -----------------------------------------------------------

    def explain(self, analyze: bool = False, verbose: bool = False) -> str:
        """The plan as text, with where each operator runs (a GPU stage or the
        CPU, and why); ``analyze=True`` runs the query and adds metrics."""
        return self._frame.explain(analyze, verbose)

    # --- results ---------------------------------------------------------

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """The rows as an Arrow C stream, computed batch by batch as the
        consumer reads: ``pyarrow.table(df)``, ``polars.DataFrame(df)``,
        ``duckdb.sql("FROM df")``."""
        return self._frame.__arrow_c_stream__(requested_schema)

    def __arrow_c_schema__(self) -> Any:
        return self._frame.__arrow_c_schema__()

    def to_reader(self) -> "pyarrow.RecordBatchReader":
        """Runs the query as its rows are read: a pyarrow RecordBatchReader
        over the result's batches (for results larger than memory)."""
        import pyarrow

        return pyarrow.RecordBatchReader.from_stream(self)

    def __iter__(self):
        """The result's batches (pyarrow RecordBatches), computed as the loop
        asks for them."""
        return iter(self.to_reader())

    def to_arrow(self) -> "pyarrow.Table":
        """Runs the query; its rows as a pyarrow Table (no copy)."""
        import pyarrow

        return pyarrow.table(self._frame._collect_stream())

    def collect(self) -> list["pyarrow.RecordBatch"]:
        """Runs the query; its rows as a list of pyarrow RecordBatches."""
        return self.to_arrow().to_batches()

    def to_polars(self) -> "polars.DataFrame":
        """Runs the query; its rows as a polars DataFrame."""
        import polars

        return polars.from_arrow(self.to_arrow())

    def to_pandas(self) -> "pandas.DataFrame":
        """Runs the query; its rows as a pandas DataFrame."""
        return self.to_arrow().to_pandas()

    def to_pylist(self) -> list[dict]:
        """Runs the query; its rows as a list of dicts."""
        return self.to_arrow().to_pylist()

    def count(self) -> int:
        """Runs the query; its number of rows."""
        return self._frame.count()

    def write_parquet(self, path: str, single_file: bool | None = None) -> int:
        """Runs the query and writes its rows as Parquet at ``path``
        (replacing what is there; one file when ``single_file``, by default
        when ``path`` has an extension, else a directory), committed only
        when all rows are written. Returns the number of rows written."""
        return self._frame.write_parquet(str(path), single_file)

    def show(self, n: int = 20) -> None:
        """Prints the first ``n`` rows as a table."""
        print(self._frame._show_text(n))


class GroupBy:
    """``df.group_by(keys)``; ``.agg(...)`` makes one row per group."""

    def __init__(self, group_by: _kiln.GroupBy) -> None:
        self._group_by = group_by

    def agg(self, *aggs: Expr) -> DataFrame:
        """One row per group: the keys, then the aggregates."""
        return DataFrame(self._group_by.agg(*aggs))


def _alias_of(e: Any) -> str:
    name = e.alias_name if isinstance(e, Expr) else None
    if name is None:
        raise _kiln.UserError(f"with_columns: name the expression {e} with .alias(...) or name=expr")
    return name
