"""Tables: rows kept as partitioned Parquet (a folder of part files) on a data system, written and streamed
batch by batch, so tables larger than memory pass through in bounded memory."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from runhouse.resources.data.base import DataSystem, stage_path
from runhouse.resources.folder import DataResource

if TYPE_CHECKING:
    import pandas

ROWS_PER_PART = 1_000_000
DEFAULT_BATCH_ROWS = 65_536
_PART = "part-{:05d}.parquet"

TableData = Any  # pandas.DataFrame | pa.Table | pa.RecordBatch | Iterable of those


class Table(DataResource):
    """A table stored as Parquet part files (``part-00000.parquet``, ...) in a folder on a data system.

    ``data`` (a pandas DataFrame, a pyarrow Table or RecordBatch, or an iterable of any of them, e.g. a
    generator of record batches) is written by :meth:`write`, one batch at a time. The config holds the
    row count and the schema. Without a path, the table lives at ``~/.cache/runhouse/tables/<name>``.
    """

    RESOURCE_TYPE = "table"
    DEFAULT_FOLDER = "tables"

    def __init__(
        self,
        data: TableData = None,
        path: str | None = None,
        system: Any = None,
        name: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        num_rows: int | None = None,
        schema: list[dict[str, Any]] | None = None,
        rows_per_part: int = ROWS_PER_PART,
    ) -> None:
        super().__init__(path=path, system=system, name=name, storage_options=storage_options)
        if rows_per_part < 1:
            raise ValueError(f"rows_per_part must be at least 1, not {rows_per_part}")
        self._data = data
        self.num_rows = num_rows
        self._schema_fields = schema
        self._schema: pa.Schema | None = None
        self.rows_per_part = rows_per_part

    # --- writing -------------------------------------------------------------------------------------------
    def write(self, data: TableData = None) -> Table:
        """Write the table's data (or ``data``) as Parquet parts, replacing the table whole; a named table is
        saved under its name too (``rh.table(name=...)`` finds it). Returns self.

        Parts are written into a hidden sibling folder, swapped in when every part is complete.
        """
        source = self._data if data is None else data
        if source is None:
            raise ValueError(f"table {self.name or self.path!r} has no data to write")
        stage = stage_path(self.path)
        self.system.rm(stage)
        self.system.mkdir(stage)
        self.num_rows, self._schema = _write_parts(self.system, stage, _batches_of(source), self.rows_per_part)
        self._schema_fields = _fields(self._schema)
        self.system.replace(stage, self.path)
        self._data = None  # it is on the system now; an iterator could not be written twice anyway
        if self.name:
            self.save()
        return self

    def _write_pending(self) -> bool:
        return self._data is not None

    # --- reading -------------------------------------------------------------------------------------------
    def parts(self) -> list[str]:
        """Paths of the Parquet part files, in order."""
        return [posixpath.join(self.path, n) for n in self.system.ls(self.path) if n.endswith(".parquet")]

    def fetch(self, columns: list[str] | None = None) -> pa.Table:
        """The whole table as an Arrow table (only ``columns`` when given)."""
        tables = []
        for part in self.parts():
            with self.system.open(part, "rb") as f:
                tables.append(pq.read_table(f, columns=columns))
        if not tables:
            return self.schema.empty_table()
        return pa.concat_tables(tables)

    def to_pandas(self, columns: list[str] | None = None) -> pandas.DataFrame:
        """The whole table as a pandas DataFrame."""
        return self.fetch(columns).to_pandas()

    def stream(
        self, batch_size: int = DEFAULT_BATCH_ROWS, columns: list[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of exactly ``batch_size`` rows (the last may be shorter), read part by part, so
        memory holds about one batch and one part's row group at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for batch in self._part_batches(batch_size, columns):
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= batch_size:
                joined = pa.Table.from_batches(pending)
                yield _one_batch(joined.slice(0, batch_size))
                pending = joined.slice(batch_size).to_batches()
                pending_rows -= batch_size
        if pending_rows:
            yield _one_batch(pa.Table.from_batches(pending))

    def _part_batches(self, batch_size: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        for part in self.parts():
            with self.system.open(part, "rb") as f:
                yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema (of the data written, or read from the first part's footer)."""
        if self._schema is None:
            parts = self.parts()
            if not parts:
                raise ValueError(f"table {self.name or self.path!r} has no parts to read a schema from")
            with self.system.open(parts[0], "rb") as f:
                self._schema = pq.read_schema(f)
        return self._schema

    def rm(self) -> bool:
        """Remove the table's folder; returns whether there was one."""
        return self.system.rm(self.path)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_rows": self.num_rows, "schema": self._schema_fields}

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> Table:
        return cls(
            **cls._location(config),
            num_rows=config.get("num_rows"),
            schema=config.get("schema"),
        )


def _batches_of(data: TableData) -> Iterator[pa.RecordBatch]:
    """Record batches of a DataFrame, an Arrow table or batch, or an iterable of any of them, lazily."""
    if isinstance(data, pa.RecordBatch):
        yield data
    elif isinstance(data, pa.Table):
        yield from data.to_batches(max_chunksize=DEFAULT_BATCH_ROWS)
    elif type(data).__name__ == "DataFrame" and hasattr(data, "to_records"):  # pandas, without importing it
        yield from pa.Table.from_pandas(data).to_batches(max_chunksize=DEFAULT_BATCH_ROWS)
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        for item in data:
            yield from _batches_of(item)
    else:
        raise TypeError(
            f"cannot write a {type(data).__name__} as a table: give a pandas DataFrame, a pyarrow Table or "
            "RecordBatch, or an iterable of them"
        )


def _write_parts(
    system: DataSystem, folder: str, batches: Iterator[pa.RecordBatch], rows_per_part: int
) -> tuple[int, pa.Schema]:
    """Write ``batches`` as part files of at most ``rows_per_part`` rows; returns (rows, schema)."""
    total, part, in_part = 0, 0, 0
    schema: pa.Schema | None = None
    writer: pq.ParquetWriter | None = None
    sink: Any = None
    try:
        for batch in batches:
            schema = schema or batch.schema
            offset = 0
            while offset < batch.num_rows:
                if writer is None:
                    sink = system.open(posixpath.join(folder, _PART.format(part)), "wb")
                    writer = pq.ParquetWriter(sink, schema)
                take = min(rows_per_part - in_part, batch.num_rows - offset)
                writer.write_batch(batch.slice(offset, take))
                offset, in_part, total = offset + take, in_part + take, total + take
                if in_part == rows_per_part:
                    writer.close()
                    sink.close()
                    writer, part, in_part = None, part + 1, 0
        if schema is None:
            raise ValueError("the table's data has no batches, so it has no schema: give at least one batch")
        if total == 0:  # no rows: one empty part keeps the schema
            with system.open(posixpath.join(folder, _PART.format(0)), "wb") as empty:
                pq.write_table(schema.empty_table(), empty)
    finally:
        if writer is not None:
            writer.close()
            sink.close()
    return total, schema


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    return table.combine_chunks().to_batches()[0]


def _fields(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def table(
    data: TableData = None,
    name: str | None = None,
    path: str | None = None,
    system: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    rows_per_part: int = ROWS_PER_PART,
    dryrun: bool = False,
) -> Table:
    """A table of rows stored as partitioned Parquet on ``system`` ("file" by default, a cluster, "s3", "gs").

    Called with only a name, loads the table saved under it.

    Example::

        t = rh.table(data=df, name="events").write().save()
        rh.table(name="events").fetch()                        # a pyarrow Table
        for batch in t.stream(batch_size=10_000): ...
        t.to(gpu)
    """
    if name is not None and data is None and path is None and system is None:
        from runhouse.resources.resource import load_typed

        return load_typed(Table, name, dryrun=dryrun)
    return Table(data=data, path=path, system=system, name=name, storage_options=storage_options,
                 rows_per_part=rows_per_part)
