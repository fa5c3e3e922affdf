"""File operations that POSIX data systems run where the data lives: in this process, in a cluster's worker, or
as a script over SSH (``python3 -I -S _ops.py OP ARGS_JSON``, printing the result as JSON).

Standard library only, so the same file runs on a host where runhouse is not installed. Paths are taken as
given when absolute; ``~`` is expanded and relative paths are relative to the home folder, the way rsync
and ssh treat them. Missing paths raise the builtin :class:`FileNotFoundError`; callers turn it into
runhouse's own error.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

_OLD_SUFFIX = ".rh-old"


def resolve(path: str) -> str:
    """The absolute path ``path`` names on this machine."""
    return os.path.normpath(os.path.join(os.path.expanduser("~"), os.path.expanduser(path)))


def exists(path: str) -> bool:
    """Whether a file or folder is at ``path``."""
    return os.path.exists(resolve(path))


def walk(path: str) -> dict[str, int]:
    """Every file under the folder ``path`` (recursively) as ``{relative posix name: size in bytes}``."""
    root = resolve(path)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no folder at {path}")
    found: dict[str, int] = {}
    for parent, _, files in os.walk(root):
        for name in files:
            full = os.path.join(parent, name)
            found[os.path.relpath(full, root).replace(os.sep, "/")] = os.path.getsize(full)
    return found


def ls(path: str) -> list[str]:
    """Names of the entries directly in the folder ``path``, sorted."""
    root = resolve(path)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no folder at {path}")
    return sorted(os.listdir(root))


def size(path: str) -> int:
    """Size in bytes of the file at ``path``."""
    full = resolve(path)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"no file at {path}")
    return os.path.getsize(full)


def read(path: str, offset: int = 0, length: int = -1) -> bytes:
    """``length`` bytes (all when negative) of the file at ``path`` from ``offset``."""
    full = resolve(path)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"no file at {path}")
    with open(full, "rb") as f:
        f.seek(offset)
        return f.read(length)


def read_many(root: str, names: list[str]) -> list[bytes]:
    """The whole content of each file ``root/name``, in order."""
    return [read(os.path.join(root, name)) for name in names]


def write(path: str, data: bytes, offset: int = 0) -> int:
    """Write ``data`` at ``offset`` of the file at ``path``; offset 0 truncates it first. Parents are created.

    Returns the size of the file afterwards.
    """
    full = resolve(path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "r+b" if offset and os.path.exists(full) else "wb") as f:
        f.seek(offset)
        f.write(data)
        return f.tell()


def write_many(root: str, files: dict[str, bytes]) -> None:
    """Write each ``{name: data}`` as the file ``root/name``."""
    for name, data in files.items():
        write(os.path.join(root, name), data)


def mkdir(path: str) -> None:
    """Create the folder ``path`` and its parents (nothing happens when it exists)."""
    os.makedirs(resolve(path), exist_ok=True)


def rm(path: str) -> bool:
    """Remove the file or folder (with its contents) at ``path``; returns whether there was one."""
    full = resolve(path)
    if os.path.isdir(full) and not os.path.islink(full):
        shutil.rmtree(full)
        return True
    if os.path.lexists(full):
        os.remove(full)
        return True
    return False


def replace(source: str, destination: str) -> None:
    """Move ``source`` to ``destination``, replacing what is there; a folder is swapped in by renames.

    The old destination is first renamed aside, so at no moment does ``destination`` hold a mix of both.
    """
    src, dst = resolve(source), resolve(destination)
    if not os.path.lexists(src):
        raise FileNotFoundError(f"nothing at {source}")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.isdir(dst) and not os.path.islink(dst):
        old = dst + _OLD_SUFFIX
        rm(old)
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


def swap(stage: str, destination: str, name: str | None = None) -> None:
    """Put a finished transfer in place: the folder ``stage``, or with ``name`` its one file (the stage is then
    removed), replaces ``destination``."""
    if name is None:
        replace(stage, destination)
        return
    replace(os.path.join(stage, name), destination)
    rm(stage)


def copy(root: str, names: list[str], destination: str) -> None:
    """Copy each file ``root/name`` to ``destination/name`` (parents created, metadata kept)."""
    src_root, dst_root = resolve(root), resolve(destination)
    for name in names:
        target = os.path.join(dst_root, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(src_root, name), target)


OPS: dict[str, Callable[..., Any]] = {
    fn.__name__: fn
    for fn in (resolve, exists, walk, ls, size, read, read_many, write, write_many, mkdir, rm, replace, swap, copy)
}


def run(op: str, *args: Any) -> Any:
    """Run the operation named ``op`` (the entry point deployed to a cluster's daemon)."""
    return OPS[op](*args)


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [_encode(item) for item in value]
    return value


def _main(argv: list[str]) -> int:
    """Script mode: run one operation, print ``{"ok": result}`` or ``{"error": type, "message": ...}`` as JSON."""
    try:
        result = run(argv[1], *json.loads(argv[2]))
    except (OSError, KeyError, ValueError) as exc:
        json.dump({"error": type(exc).__name__, "message": str(exc)}, sys.stdout)
        return 1
    json.dump({"ok": _encode(result)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
