"""``kiln.Session``: where queries run, and the tables they see."""

from __future__ import annotations

from typing import Any, Mapping

from . import _kiln
from .dataframe import DataFrame

__all__ = ["Session"]


class Session:
    """A Kiln session: a device, options and tables.

    ``device`` is ``"auto"`` (default: ``KILN_DEVICE``, else auto), ``"cpu"``,
    ``"wgpu"``, ``"cuda"`` or one device such as ``"cuda:1"`` (see
    ``kiln.devices()``). ``target_partitions`` is DataFusion's parallelism
    (default: the number of cores). ``options`` are set as SQL ``SET`` sets
    them (``{"kiln.embed_precision": "int8"}``). ``cluster`` runs the
    session's queries on a Kiln cluster (``"df://host:50050"``).
    """

    def __init__(
        self,
        device: str | None = None,
        target_partitions: int | None = None,
        options: Mapping[str, Any] | None = None,
        cluster: str | None = None,
    ) -> None:
        self._session = _kiln.Session(
            device=device,
            target_partitions=target_partitions,
            options=dict(options) if options else None,
            cluster=cluster,
        )

    def __repr__(self) -> str:
        return repr(self._session)

    @property
    def device(self) -> str:
        """``auto``, or the device a named request resolved to (``wgpu:0``)."""
        return self._session.device

    def sql(self, query: str) -> DataFrame:
        """Runs one SQL statement. DDL, ``SET`` and ``COPY`` take effect now; a
        query comes back as a lazy DataFrame."""
        return DataFrame(self._session.sql(query))

    def read_parquet(self, path: str) -> DataFrame:
        """A lazy DataFrame over Parquet at ``path``: a file, a directory or a
        prefix, local or in an object store (``s3://``, ``gs://``, ...)."""
        return DataFrame(self._session.read_parquet(str(path)))

    def register_parquet(self, name: str, path: str) -> None:
        """Registers Parquet at ``path`` as table ``name``."""
        self._session.register_parquet(name, str(path))

    def register(self, name: str, data: Any) -> None:
        """Registers in-memory data as table ``name`` (replacing one of that
        name): any object with ``__arrow_c_stream__`` (a pyarrow Table or
        RecordBatchReader, a polars DataFrame, ...), a pandas DataFrame, or
        what ``pyarrow.table`` accepts. Arrow data is not copied."""
        self._session.register_arrow(name, _arrow(data))

    def from_arrow(self, data: Any) -> DataFrame:
        """A lazy DataFrame over in-memory data (as ``register`` takes it)."""
        return DataFrame(self._session.read_arrow(_arrow(data)))

    def configure_store(self, location: str, options: Mapping[str, str]) -> None:
        """Configures the object store of ``location`` (``"s3://bucket/"``,
        ``"gs://bucket/"``, ...) with explicit options (``aws.access_key_id``,
        ``aws.secret_access_key``, ``aws.region``, ``aws.endpoint``,
        ``gcp.service_account_path``, ...), as ``CREATE EXTERNAL TABLE ...
        OPTIONS`` does. Without them Kiln reads the usual environment
        (``AWS_*``, instance metadata)."""
        self._session.configure_store(location, {str(k): str(v) for k, v in options.items()})

    def table(self, name: str) -> DataFrame:
        """The table or view ``name`` as a lazy DataFrame."""
        return DataFrame(self._session.table(name))

    def tables(self) -> list[str]:
        """The names of the session's tables."""
        return list(self._session.tables())

    def deregister(self, name: str) -> bool:
        """Drops table ``name``; whether there was one."""
        return self._session.deregister(name)

    def set(self, key: str, value: Any) -> None:
        """Sets an option (``kiln.*`` or ``datafusion.*``) as ``SET`` does;
        a bad key or value raises ``UserError`` now."""
        self._session.set(key, value)

    def get(self, key: str) -> str | None:
        """An option's current value (None when unset)."""
        return self._session.get(key)


def _arrow(data: Any) -> Any:
    """Arrow C stream data: as it is if it has ``__arrow_c_stream__``, else
    through ``pyarrow.table`` (pandas, dicts of lists)."""
    if hasattr(data, "__arrow_c_stream__"):
        return data
    try:
        import pyarrow
    except ImportError as e:  # pragma: no cover - pyarrow is a dependency
        raise _kiln.UserError(
            f"a {type(data).__name__} is not Arrow data and pyarrow is not installed"
        ) from e
    try:
        return pyarrow.table(data)
    except (TypeError, ValueError, pyarrow.ArrowException) as e:
        raise _kiln.UserError(
            f"a {type(data).__name__} is not Arrow data: pass an object with "
            "__arrow_c_stream__ (a pyarrow Table, a polars or pandas DataFrame)"
        ) from e
