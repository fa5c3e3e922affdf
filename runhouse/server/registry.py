"""The daemon's registry of envs and named objects, persisted so that a restarted daemon brings them back.

What is kept on disk is a snapshot and a journal of the changes since it, side by side::

    registry.json       {"envs": [...], "entries": [...]}, replaced atomically (paths.write_atomic)
    registry.journal    one line per change: "<crc32 of the JSON, 8 hex digits> <JSON record>\\n"

A change (an env or an entry set or dropped) is one line appended to the journal and made durable
(``fdatasync``) before the call that made it answers: saving costs the size of the change, not of the
registry. Loading reads the snapshot and replays the journal; a line whose checksum does not match (a daemon
killed in the middle of an append, or a damaged disk) is skipped. The journal is folded into a new snapshot
at the first change after loading a non-empty journal (or without a snapshot yet), at a clean stop, and while
the daemon runs once the journal outgrows ``max(JOURNAL_SLACK * snapshot, JOURNAL_MIN_BYTES)``, so each
change is written a bounded number of times (amortized O(change)). Records set or drop by name, so
replaying a journal over a snapshot that already holds it (a crash between writing the snapshot and emptying
the journal) gives the same registry.

Plain values (``put``, results of ``.remote()``) are registered but never persisted: they live in a worker.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runhouse.errors import BadRequestError, ObjectNotFoundError
from runhouse.paths import write_atomic
from runhouse.protocol import DEFAULT_ENV
from runhouse.server.envs import EnvSpec

FUNCTION, CLASS, INSTANCE, VALUE = "function", "class", "instance", "value"
# The journal is folded into the snapshot once it is larger than this many times the snapshot ...
JOURNAL_SLACK = 2
# ... and larger than this (small registries are not re-written on every few changes).
JOURNAL_MIN_BYTES = 1 << 20
_FILE_MODE = 0o600


@dataclass
class Entry:
    """One named object on the daemon."""

    name: str
    env: str
    kind: str
    spec: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""  # cloudpickled code, or serialized init args of an instance
    version: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["payload"] = base64.b64encode(self.payload).decode()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(**{**data, "payload": base64.b64decode(data["payload"])})


class Registry:
    """Envs and named objects by name (lookups are dict lookups), every change journaled as it is made.

    Change it only through :meth:`set`, :meth:`remove`, :meth:`set_env` and :meth:`remove_env`; read
    ``envs`` and ``entries`` freely.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal_path = path.with_suffix(".journal")
        self.envs: dict[str, EnvSpec] = {DEFAULT_ENV: EnvSpec(DEFAULT_ENV)}
        self.entries: dict[str, Entry] = {}
        self._snapshot_bytes = 0
        self._journal_bytes = 0
        self._load()
        # Opened, and the journal folded in, at the first change: a registry only read writes nothing (a second
        # daemon started on the same port reads it, then finds the port taken and exits).
        self._journal_fd: int | None = None
        self._fold_first = self._journal_bytes > 0 or not self.path.exists()

    # --- reading -------------------------------------------------------------------------------------
    def entry(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            raise ObjectNotFoundError(f"no object named {name!r} on this cluster") from None

    def _load(self) -> None:
        if self.path.exists():
            text = self.path.read_text()
            self._snapshot_bytes = len(text)
            data = json.loads(text)
            for env in data.get("envs", []):
                self._apply({"env": env})
            for item in data.get("entries", []):
                self._apply({"entry": item})
        for record in self._journal_records():
            self._apply(record)
        for name in [n for n, e in self.entries.items() if e.env not in self.envs]:
            del self.entries[name]

    def _journal_records(self) -> Iterator[dict[str, Any]]:
        try:
            with open(self.journal_path, "rb") as journal:
                for number, line in enumerate(journal, 1):
                    self._journal_bytes += len(line)
                    record = _parse_line(line)
                    if record is None:
                        print(f"runhouse daemon: skipped line {number} of {self.journal_path}: incomplete or "
                              "damaged (a crash while it was written)", file=sys.stderr)
                        continue
                    yield record
        except FileNotFoundError:
            return

    def _apply(self, record: dict[str, Any]) -> None:
        """Apply one journal record (or snapshot item) to the registry in memory."""
        if "env" in record:
            try:
                spec = EnvSpec.from_dict(record["env"])
            except BadRequestError as exc:  # kept by an older daemon that did not check specs
                print(f"runhouse daemon: dropped a saved env that is not valid ({exc})", file=sys.stderr)
                return
            self.envs[spec.name] = spec
        elif "entry" in record:
            try:
                entry = Entry.from_json(record["entry"])
            except (TypeError, KeyError, ValueError) as exc:  # not what this version writes: skipped, not fatal
                print(f"runhouse daemon: dropped a saved object that is not valid ({exc!r})", file=sys.stderr)
                return
            self.entries[entry.name] = entry
        elif "drop" in record:
            self.entries.pop(record["drop"], None)
        elif "drop_env" in record:
            name = record["drop_env"]
            self.envs.pop(name, None)
            for key in [k for k, e in self.entries.items() if e.env == name]:
                del self.entries[key]

    # --- changing ------------------------------------------------------------------------------------
    def set(self, entry: Entry) -> None:
        """Register ``entry`` under its name (replacing what was there); journaled unless it is a plain value."""
        previous = self.entries.get(entry.name)
        self.entries[entry.name] = entry
        if entry.kind != VALUE:
            self._append({"entry": entry.to_json()})
        elif previous is not None and previous.kind != VALUE:
            self._append({"drop": entry.name})

    def remove(self, name: str) -> Entry | None:
        """Forget the entry named ``name``; returns it (None when there was none)."""
        entry = self.entries.pop(name, None)
        if entry is not None and entry.kind != VALUE:
            self._append({"drop": name})
        return entry

    def set_env(self, spec: EnvSpec) -> None:
        """Register (or replace) an env."""
        self.envs[spec.name] = spec
        self._append({"env": spec.to_dict()})

    def remove_env(self, name: str) -> None:
        """Forget an env and every entry in it."""
        self.envs.pop(name, None)
        for key in [k for k, e in self.entries.items() if e.env == name]:
            del self.entries[key]
        self._append({"drop_env": name})

    def _journal(self) -> int:
        """The journal's file, open for appending (after folding what an earlier daemon left in it)."""
        if self._journal_fd is None:
            self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _FILE_MODE)
        if self._fold_first:
            self.compact()
        return self._journal_fd

    def _append(self, record: dict[str, Any]) -> None:
        line = _format_line(record)
        fd = self._journal()
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
        except OSError:  # e.g. the disk is full: part of the line may be there, so fold before the next one
            self._fold_first = True
            raise
        self._journal_bytes += len(line)
        if self._journal_bytes > max(JOURNAL_SLACK * self._snapshot_bytes, JOURNAL_MIN_BYTES):
            self.compact()

    def compact(self) -> None:
        """Fold the journal into a new snapshot (written atomically), then empty the journal."""
        text = json.dumps({
            "envs": [s.to_dict() for s in self.envs.values()],
            "entries": [e.to_json() for e in self.entries.values() if e.kind != VALUE],
        })
        self._fold_first = False
        fd = self._journal()
        write_atomic(self.path, text, _FILE_MODE)
        os.ftruncate(fd, 0)
        os.fsync(fd)
        self._snapshot_bytes, self._journal_bytes = len(text), 0

    def close(self) -> None:
        """Fold the journal into the snapshot (a clean stop leaves one file) and close it; a registry that was
        only read is left as it was."""
        if self._journal_fd is None:
            return
        try:
            self.compact()
        finally:
            with contextlib.suppress(OSError):
                os.close(self._journal_fd)
            self._journal_fd = None


def _format_line(record: dict[str, Any]) -> bytes:
    data = json.dumps(record, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(data), data)


def _parse_line(line: bytes) -> dict[str, Any] | None:
    """The record on one journal line, or None when the line is incomplete or its checksum does not match."""
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    data = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(data):
            return None
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
