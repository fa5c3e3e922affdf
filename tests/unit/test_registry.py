"""The daemon's registry on disk: a snapshot plus a journal of changes, O(change) to save, crash-safe."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runhouse.server import registry as registry_module
from runhouse.server.envs import EnvSpec
from runhouse.server.registry import CLASS, FUNCTION, INSTANCE, VALUE, Entry, Registry


def _function(name: str, env: str = "default", payload: bytes = b"code") -> Entry:
    return Entry(name, env, FUNCTION, {"module": "m", "qualname": name}, payload, f"v-{name}", {"doc": ""})


def _state(reg: Registry) -> tuple[dict, dict]:
    return ({n: s.to_dict() for n, s in reg.envs.items()},
            {n: e.to_json() for n, e in reg.entries.items() if e.kind != VALUE})


def _populated(path: Path, count: int) -> Registry:
    reg = Registry(path)
    reg.set_env(EnvSpec("env_a", env_vars=(("A", "1"),)))
    for i in range(count):
        reg.set(_function(f"fn_{i}", "env_a" if i % 2 else "default"))
    return reg


def test_a_registry_opened_again_without_a_clean_close_has_every_change(tmp_path):
    path = tmp_path / "registry.json"
    reg = _populated(path, 10)
    reg.set(Entry("inst", "env_a", INSTANCE, {"class_name": "fn_1", "refs": []}, b"\x00args", "v1"))
    reg.remove("fn_2")
    reg.set(Entry("kept_value", "default", VALUE))
    again = Registry(path)  # the first one was never closed: as after a kill -9
    assert _state(again) == _state(reg)
    assert "fn_2" not in again.entries and "kept_value" not in again.entries
    assert again.entries["inst"].payload == b"\x00args"


def test_saving_one_change_appends_one_record_whatever_the_registry_size(tmp_path):
    written = []
    for count in (10, 2000):
        path = tmp_path / str(count) / "registry.json"
        path.parent.mkdir()
        reg = _populated(path, count)
        reg.compact()
        snapshot = path.stat()
        before = reg.journal_path.stat().st_size
        changed = _function("fn_3", "default", b"new code")
        reg.set(changed)
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (snapshot.st_ino, snapshot.st_mtime_ns)  # untouched
        grown = reg.journal_path.stat().st_size - before
        assert grown == len(registry_module._format_line({"entry": changed.to_json()}))
        written.append(grown)
        reg.remove("fn_4")
        assert reg.journal_path.stat().st_size - before - grown == len(registry_module._format_line({"drop": "fn_4"}))
    assert written[0] == written[1]


def test_the_journal_is_folded_into_the_snapshot_once_it_outgrows_it(tmp_path, monkeypatch):
    monkeypatch.setattr(registry_module, "JOURNAL_MIN_BYTES", 4096)
    path = tmp_path / "registry.json"
    reg = _populated(path, 5)
    reg.compact()
    compactions = 0
    for i in range(200):
        size = reg.journal_path.stat().st_size
        reg.set(_function("fn_0", payload=b"x" * i))
        compactions += reg.journal_path.stat().st_size < size
        assert reg.journal_path.stat().st_size <= max(2 * path.stat().st_size, 4096) + 1024
    assert compactions >= 2
    assert _state(Registry(path)) == _state(reg)


def test_a_torn_last_record_is_skipped_and_what_came_before_kept(tmp_path, capsys):
    path = tmp_path / "registry.json"
    reg = _populated(path, 3)
    reg.set(_function("last", payload=b"y" * 1000))
    with open(reg.journal_path, "r+b") as journal:
        journal.truncate(reg.journal_path.stat().st_size - 500)  # the daemon died half-way through the append
    again = Registry(path)
    assert set(again.entries) == {"fn_0", "fn_1", "fn_2"}
    assert "incomplete or damaged" in capsys.readouterr().err
    again.set(_function("after"))  # the journal is folded first: this append starts on a clean line
    assert len(again.journal_path.read_bytes().splitlines()) == 1
    assert set(Registry(path).entries) == {"fn_0", "fn_1", "fn_2", "after"}


def test_a_registry_only_read_writes_nothing(tmp_path):
    path = tmp_path / "registry.json"
    _populated(path, 3).close()
    reg = _populated(path, 2)  # the journal holds changes again
    files = {p: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in (path, reg.journal_path)}
    reader = Registry(path)  # e.g. a second daemon on the same port, about to find the port taken
    reader.close()
    assert {p: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in files} == files
    assert _state(Registry(path)) == _state(reg)


def test_a_saved_object_this_version_cannot_read_is_dropped_not_fatal(tmp_path, capsys):
    path = tmp_path / "registry.json"
    reg = _populated(path, 2)
    reg._append({"entry": {"name": "odd", "unknown_field": 1}})
    assert set(Registry(path).entries) == {"fn_0", "fn_1"}
    assert "dropped a saved object" in capsys.readouterr().err


def test_a_change_that_failed_half_written_does_not_damage_the_next_one(tmp_path, monkeypatch):
    path = tmp_path / "registry.json"
    reg = _populated(path, 2)
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data)[:20])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry_module.os, "write", disk_full)
    with pytest.raises(OSError):
        reg.set(_function("lost"))
    monkeypatch.setattr(registry_module.os, "write", real_write)
    reg.set(_function("next"))
    assert {"fn_0", "fn_1", "next"} <= set(Registry(path).entries)


def test_a_damaged_record_in_the_middle_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "registry.json"
    reg = _populated(path, 3)
    lines = reg.journal_path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"fn_1", b"fn_X")  # its checksum no longer matches
    reg.journal_path.write_bytes(b"".join(lines))
    assert set(Registry(path).entries) == {"fn_0", "fn_2"}


def test_a_journal_replayed_over_a_snapshot_that_holds_it_gives_the_same_registry(tmp_path):
    path = tmp_path / "registry.json"
    reg = _populated(path, 6)
    reg.remove_env("env_a")
    reg.set_env(EnvSpec("env_a", env_vars=(("A", "2"),)))
    reg.set(_function("fn_1", "env_a"))
    journal = reg.journal_path.read_bytes()
    reg.compact()
    reg.journal_path.write_bytes(journal)  # crashed after the snapshot was written, before the journal emptied
    assert _state(Registry(path)) == _state(reg)


def test_deleting_an_env_forgets_its_objects_for_good(tmp_path):
    path = tmp_path / "registry.json"
    reg = _populated(path, 6)
    reg.remove_env("env_a")
    reg.set_env(EnvSpec("env_a"))  # a new env of the same name starts empty
    again = Registry(path)
    assert set(again.entries) == {"fn_0", "fn_2", "fn_4"}
    assert again.envs["env_a"] == EnvSpec("env_a")


def test_a_value_stored_over_a_function_drops_the_function_from_disk(tmp_path):
    path = tmp_path / "registry.json"
    reg = _populated(path, 2)
    reg.set(Entry("fn_0", "default", VALUE))
    assert "fn_0" not in Registry(path).entries
    reg.set(Entry("cls", "default", CLASS, {"module": "m", "qualname": "C"}, b"", "v"))
    assert Registry(path).entries["cls"].kind == CLASS


def test_registry_files_are_owner_only(tmp_path):
    path = tmp_path / "registry.json"
    reg = _populated(path, 2)
    reg.close()
    for file in (path, reg.journal_path):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert reg.journal_path.stat().st_size == 0  # a clean close leaves everything in the snapshot


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from runhouse.server import registry as r
    r.JOURNAL_MIN_BYTES = 256 * 1024  # compactions happen too, so the kill lands in them as well
    reg = r.Registry(Path(sys.argv[1]))
    reg.set_env(r.EnvSpec("env_a"))
    i = 0
    while True:
        payload = bytes([i % 251]) * (8192 + i % 7919)
        reg.set(r.Entry(f"fn_{i % 300}", "env_a", r.FUNCTION, {"i": i}, payload, str(i)))
        if i % 17 == 0:
            reg.remove(f"fn_{(i * 7) % 300}")
        print(i, flush=True)
        i += 1
""")


@pytest.mark.parametrize("kill_after", [5, 150, 700])
def test_a_kill_9_in_the_middle_of_saving_loses_nothing_that_was_saved(tmp_path, kill_after):
    path = tmp_path / "registry.json"
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    done = -1
    try:
        while done < kill_after:
            done = int(child.stdout.readline())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    reg = Registry(path)
    last = max(int(e.version) for e in reg.entries.values())  # the last step whose save went through
    assert last >= done, "a save the writer had finished was lost"
    before_drop = _writer_steps(last - 1)  # killed after the step's save, before its drop
    before_drop[f"fn_{last % 300}"] = last
    allowed = [_writer_steps(last), before_drop]
    assert reg.envs["env_a"] == EnvSpec("env_a")
    assert {n: int(e.version) for n, e in reg.entries.items()} in allowed
    for entry in reg.entries.values():
        saved_at = int(entry.version)
        assert entry.spec == {"i": saved_at} and entry.payload == bytes([saved_at % 251]) * (8192 + saved_at % 7919)


def _writer_steps(last: int) -> dict[str, int]:
    """What the writer's registry holds after its step ``last``: each name with the step that saved it."""
    expected: dict[str, int] = {}
    for i in range(last + 1):
        expected[f"fn_{i % 300}"] = i
        if i % 17 == 0:
            expected.pop(f"fn_{(i * 7) % 300}", None)
    return expected
