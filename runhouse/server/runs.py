"""Runs: every call, map batch and command the daemon runs, with its output, kept on the cluster.

A :class:`Run` is made when the daemon sends a call to a worker (or starts a command) and finished when the
answer comes: its status is one of :data:`STATUSES`. While it runs it lives in memory, its output (what user
code printed or logged, as the worker's LOG frames) appended as it arrives, the newest
``max_output_bytes`` kept. Finished runs are written to disk by a background task, in batches, every
``FLUSH_INTERVAL_S`` (never on the call path, never fsynced: a run is a record, not a transaction), as JSON
lines appended to segment files under the daemon's ``runs/`` folder::

    runs/00000001.jsonl   one run per line: its summary and its "output"
    runs/00000002.jsonl   a new segment once the current one holds max_bytes / SEGMENTS

The store keeps at most ``max_count`` runs and ``max_bytes`` of segments: the oldest runs go first (a
segment file is deleted once none of its runs is kept). A restarted daemon reads the segments back. Runs
still going when a daemon stops are lost with it.

Settings, read where the daemon starts (:meth:`RunStore.from_env`): ``RH_RUNS=0`` records no runs (calls
cost what they did before runs existed: ``bench/calls.py`` compares), ``RH_RUNS_MAX_COUNT`` (default 10,000),
``RH_RUNS_MAX_BYTES`` (default 256 MiB) and ``RH_RUNS_MAX_OUTPUT_BYTES`` per run (default 1 MiB).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runhouse.errors import ObjectNotFoundError
from runhouse.protocol import LogSink

RUNNING, DONE, FAILED, CANCELLED, CRASHED = "running", "done", "failed", "cancelled", "crashed"
STATUSES = (RUNNING, DONE, FAILED, CANCELLED, CRASHED)
# What a run is: a call of a function or method, the items of a map one slot of a worker ran, or commands.
CALL, MAP, COMMAND = "call", "map", "command"

RUNS_ENV = "RH_RUNS"
MAX_COUNT_ENV = "RH_RUNS_MAX_COUNT"
MAX_BYTES_ENV = "RH_RUNS_MAX_BYTES"
MAX_OUTPUT_ENV = "RH_RUNS_MAX_OUTPUT_BYTES"
DEFAULT_MAX_COUNT = 10_000
DEFAULT_MAX_BYTES = 256 * 2**20
DEFAULT_MAX_OUTPUT_BYTES = 2**20
SEGMENTS = 8
FLUSH_INTERVAL_S = 0.5
# How far back "calls and errors in the last minute" look, in one-second buckets.
WINDOW_S = 60
_FILE_MODE = 0o600


class Run:
    """One run: what ran, where, for whom, when, how it ended, and its output (a :data:`LogSink` itself)."""

    __slots__ = ("id", "name", "method", "kind", "env", "pid", "caller", "run_name", "started_at", "ended_at",
                 "status", "error", "items", "_chunks", "_kept", "_total", "_limit")

    def __init__(self, run_id: str, name: str, method: str, kind: str, env: str, pid: int | None, caller: str,
                 run_name: str | None, limit: int) -> None:
        self.id, self.name, self.method, self.kind, self.env = run_id, name, method, kind, env
        self.pid, self.caller, self.run_name = pid, caller, run_name
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.status = RUNNING
        self.error: str | None = None
        self.items = 0  # map items this run ran
        self._chunks: list[bytes] = []
        self._kept = 0  # bytes in _chunks
        self._total = 0  # bytes ever written: the offset the next output starts at
        self._limit = limit

    def __call__(self, data: bytes) -> None:
        """Append output (whole lines), dropping the oldest beyond the run's limit."""
        self._chunks.append(data)
        self._kept += len(data)
        self._total += len(data)
        while self._kept > self._limit and len(self._chunks) > 1:
            self._kept -= len(self._chunks.pop(0))
        if self._kept > self._limit:  # one chunk larger than the limit: keep its end
            self._chunks[0] = self._chunks[0][-self._limit :]
            self._kept = len(self._chunks[0])

    def output_since(self, offset: int) -> tuple[bytes, int]:
        """The output from byte ``offset`` on (from what is still kept when older output was dropped), and the
        offset after it."""
        kept = b"".join(self._chunks)
        start = max(0, offset - (self._total - self._kept))
        return kept[start:], self._total

    def summary(self) -> dict[str, Any]:
        ended = self.ended_at
        return {
            "id": self.id, "name": self.name, "method": self.method, "kind": self.kind, "env": self.env,
            "pid": self.pid, "caller": self.caller, "run_name": self.run_name, "started_at": self.started_at,
            "ended_at": ended, "duration_s": (ended or time.time()) - self.started_at, "status": self.status,
            "error": self.error, "items": self.items, "output_bytes": self._total,
            "output_dropped_bytes": self._total - self._kept,
        }


@dataclass
class _Stored:
    """A finished run: its summary in memory, its line in a segment (``segment`` 0: not written yet)."""

    summary: dict[str, Any]
    segment: int = 0
    offset: int = 0
    length: int = 0
    output: bytes | None = None  # until written
    line: bytes = b""  # made by the writer (off the event loop), until its place is recorded
    dropped: bool = False  # dropped by the count bound before it was written: the writer skips it


class _Window:
    """Calls and errors per env over the last :data:`WINDOW_S` seconds, in one-second buckets."""

    def __init__(self) -> None:
        self._buckets: dict[str, list[list[int]]] = {}

    def add(self, env: str, error: bool) -> None:
        now = int(time.monotonic())
        ring = self._buckets.get(env)
        if ring is None:
            ring = self._buckets[env] = [[-1, 0, 0] for _ in range(WINDOW_S)]
        bucket = ring[now % WINDOW_S]
        if bucket[0] != now:
            bucket[:] = [now, 0, 0]
        bucket[1] += 1
        bucket[2] += error

    def counts(self, env: str) -> tuple[int, int]:
        """(calls, errors) of ``env`` that finished in the last minute."""
        since = int(time.monotonic()) - WINDOW_S
        buckets = [b for b in self._buckets.get(env, ()) if b[0] > since]
        return sum(b[1] for b in buckets), sum(b[2] for b in buckets)


def _setting(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    if not raw.isdigit() or int(raw) == 0:
        raise ValueError(f"{name}={raw!r} is not a positive integer")
    return int(raw)


class RunStore:
    """The daemon's runs: running ones in memory, finished ones bounded on disk under ``folder``.

    With ``enabled`` false, runs are still made (metrics and "in flight" counts use them) but their output is
    not captured and nothing is kept once they finish.
    """

    def __init__(self, folder: Path, *, enabled: bool = True, max_count: int = DEFAULT_MAX_COUNT,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self.folder, self.enabled = folder, enabled
        self.max_count, self.max_bytes = max_count, max_bytes
        self.segment_bytes = max(1, max_bytes // SEGMENTS)
        self.max_output_bytes = max(1, min(max_output_bytes, self.segment_bytes))
        self.running: dict[str, Run] = {}
        self.finished: OrderedDict[str, _Stored] = OrderedDict()  # oldest first
        self.window = _Window()
        self.on_finish: Callable[[Run], None] | None = None
        self._ids = itertools.count(1)
        self._prefix = f"{int(time.time() * 1000):x}-"
        self._segments: OrderedDict[int, list[int]] = OrderedDict()  # number -> [bytes, runs kept]
        self._unwritten: list[_Stored] = []
        self._writer: asyncio.Task | None = None
        if enabled:
            self._load()

    @classmethod
    def from_env(cls, folder: Path) -> RunStore:
        """The store with the settings of the ``RH_RUNS*`` environment variables (see the module docstring)."""
        return cls(folder, enabled=os.environ.get(RUNS_ENV, "1") != "0",
                   max_count=_setting(MAX_COUNT_ENV, DEFAULT_MAX_COUNT),
                   max_bytes=_setting(MAX_BYTES_ENV, DEFAULT_MAX_BYTES),
                   max_output_bytes=_setting(MAX_OUTPUT_ENV, DEFAULT_MAX_OUTPUT_BYTES))

    # --- recording -----------------------------------------------------------------------------------
    def start(self, name: str, method: str, kind: str, env: str, pid: int | None, caller: str,
              run_name: str | None) -> Run:
        run = Run(self._prefix + str(next(self._ids)), name, method, kind, env, pid, caller, run_name,
                  self.max_output_bytes)
        self.running[run.id] = run
        return run

    def sink(self, run: Run, also: LogSink | None) -> LogSink | None:
        """Where a run's output goes: into the run (when recording) and to ``also`` (a caller's stream)."""
        if not self.enabled:
            return also
        if also is None:
            return run

        def both(data: bytes) -> None:
            run(data)
            also(data)

        return both

    def finish(self, run: Run, status: str, error: str | None = None, ended_at: float | None = None) -> None:
        """End ``run`` with ``status`` (and the error text of a failure) at ``ended_at`` (default: now); it is
        written to disk soon after."""
        if run.status != RUNNING:
            return
        run.status, run.error, run.ended_at = status, error, ended_at or time.time()
        self.running.pop(run.id, None)
        self.window.add(run.env, status != DONE)
        if self.on_finish is not None:
            self.on_finish(run)
        if not self.enabled:
            return
        stored = _Stored(run.summary(), output=run.output_since(0)[0])
        self.finished[run.id] = stored
        self._unwritten.append(stored)
        while len(self.finished) > self.max_count:
            self._forget(next(iter(self.finished)))

    def in_flight(self, env: str) -> int:
        return sum(1 for run in self.running.values() if run.env == env)

    # --- reading -------------------------------------------------------------------------------------
    def runs(self, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Summaries of the newest ``limit`` runs, newest first; with ``name``, only runs of the object or with
        the run name ``name``."""
        summaries: Iterable[dict[str, Any]] = itertools.chain(
            (run.summary() for run in self.running.values()), (s.summary for s in self.finished.values())
        )
        if name is not None:
            summaries = (s for s in summaries if name in (s["name"], s["run_name"]))
        return sorted(summaries, key=lambda s: s["started_at"], reverse=True)[:limit]

    def logs(self, run_id: str, offset: int = 0) -> dict[str, Any]:
        """A run's summary and its output from byte ``offset`` on: ``{"run", "output", "offset"}``, ``offset``
        being where the next read starts (``--follow`` reads on from there while the run is running).

        Raises:
            ObjectNotFoundError: no run ``run_id`` is kept (never was, or dropped as one of the oldest).
        """
        run = self.running.get(run_id)
        if run is not None:
            data, end = run.output_since(offset)
            return {"run": run.summary(), "output": data.decode("utf-8", "replace"), "offset": end}
        stored = self.finished.get(run_id)
        record = self._record(stored) if stored is not None else None
        if stored is None or record is None:
            raise ObjectNotFoundError(f"no run {run_id!r} on this cluster (cluster.runs() lists the ones kept; the "
                                      f"oldest are dropped beyond {self.max_count} runs or {self.max_bytes} bytes)")
        data = record["output"].encode()
        end = stored.summary["output_bytes"]
        start = max(0, offset - stored.summary["output_dropped_bytes"])
        return {"run": stored.summary, "output": data[start:].decode("utf-8", "replace"), "offset": end}

    def _record(self, stored: _Stored) -> dict[str, Any] | None:
        if stored.output is not None:
            return {**stored.summary, "output": stored.output.decode("utf-8", "replace")}
        if stored.line:
            return json.loads(stored.line)
        try:
            with open(self.folder / _segment_name(stored.segment), "rb") as file:
                file.seek(stored.offset)
                return json.loads(file.read(stored.length))
        except (FileNotFoundError, ValueError):  # dropped meanwhile, or cut short by a crash
            return None

    # --- disk ----------------------------------------------------------------------------------------
    def start_writer(self) -> None:
        if self.enabled:
            self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            if self._unwritten:
                batch, self._unwritten = self._unwritten, []
                placed = await loop.run_in_executor(None, self._write, batch)
                self._placed(batch, placed)

    def close(self) -> None:
        """Write what is left (the daemon stops)."""
        if self._writer is not None:
            self._writer.cancel()
        if self._unwritten:
            batch, self._unwritten = self._unwritten, []
            self._placed(batch, self._write(batch))

    def _write(self, batch: list[_Stored]) -> list[tuple[int, int]]:
        """Append ``batch`` to the segments (on a thread); where each line went, as (segment, offset)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        number = next(reversed(self._segments), 0)
        size = self._segments[number][0] if number else self.segment_bytes
        placed, file = [], None
        try:
            for stored in batch:
                if stored.dropped or stored.output is None:
                    placed.append((0, 0))
                    continue
                output = stored.output.decode("utf-8", "replace")
                stored.line = json.dumps({**stored.summary, "output": output}).encode() + b"\n"
                if file is None or size >= self.segment_bytes:
                    if file is not None:
                        file.close()
                    if size >= self.segment_bytes:
                        number, size = number + 1, 0
                    fd = os.open(self.folder / _segment_name(number), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                 _FILE_MODE)
                    file = os.fdopen(fd, "ab")
                file.write(stored.line)
                placed.append((number, size))
                size += len(stored.line)
        finally:
            if file is not None:
                file.close()
        return placed

    def _placed(self, batch: list[_Stored], placed: list[tuple[int, int]]) -> None:
        """Record where ``batch`` was written (on the loop), then drop the oldest beyond the bounds."""
        for stored, (number, offset) in zip(batch, placed, strict=True):
            if not number:
                continue
            segment = self._segments.setdefault(number, [0, 0])
            segment[0] = offset + len(stored.line)
            stored.segment, stored.offset, stored.length = number, offset, len(stored.line)
            stored.line, stored.output = b"", None
            if stored.summary["id"] in self.finished:
                segment[1] += 1
        self._enforce_bounds()

    def _enforce_bounds(self) -> None:
        while len(self._segments) > 1 and (sum(s[0] for s in self._segments.values()) > self.max_bytes
                                           or next(iter(self._segments.values()))[1] == 0):
            number, _ = self._segments.popitem(last=False)
            for run_id in [i for i, s in self.finished.items() if s.segment == number]:
                del self.finished[run_id]
            (self.folder / _segment_name(number)).unlink(missing_ok=True)

    def _forget(self, run_id: str) -> None:
        stored = self.finished.pop(run_id)
        stored.dropped = True
        if stored.segment in self._segments:
            self._segments[stored.segment][1] -= 1

    def _load(self) -> None:
        """Read back the runs a previous daemon wrote."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.jsonl")):
            if not path.stem.isdigit():
                continue
            number, offset, kept = int(path.stem), 0, 0
            with open(path, "rb") as file:
                for line in file:
                    try:
                        record = json.loads(line)
                        record.pop("output")
                    except (ValueError, KeyError, AttributeError):  # a line cut short when a daemon died
                        offset += len(line)
                        continue
                    self.finished[record["id"]] = _Stored(record, number, offset, len(line))
                    offset += len(line)
                    kept += 1
            self._segments[number] = [offset, kept]
        while len(self.finished) > self.max_count:
            self._forget(next(iter(self.finished)))
        self._enforce_bounds()


def ended_with(info: dict[str, Any]) -> tuple[str, str]:
    """The status and error text of a run whose call failed with ``info`` (a packed exception: what user code
    raised, with its traceback)."""
    status = CANCELLED if info.get("type") == "CallCancelledError" else FAILED
    return status, info.get("traceback") or f"{info.get('type')}: {info.get('message')}"


def _segment_name(number: int) -> str:
    return f"{number:08d}.jsonl"
