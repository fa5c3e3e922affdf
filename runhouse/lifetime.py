"""Explicit lifetimes: the base of everything that holds connections, processes or tunnels open, and how a
background process (the daemon, Den) is checked and stopped."""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import time
from types import TracebackType
from typing import TypeVar

C = TypeVar("C", bound="Closeable")


class Closeable(abc.ABC):
    """Something to :meth:`close`; as a context manager it is closed on leaving the block.

    Example::

        with DaemonClient("127.0.0.1", 32300, token) as client:
            client.request(...)
    """

    @abc.abstractmethod
    def close(self) -> None:
        """Release what this object holds open; using it afterwards opens anew where that makes sense."""

    def __enter__(self: C) -> C:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (reaped first if it is our child; a zombie counts as gone)."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def terminate_process(pid: int, timeout: float) -> None:
    """Stop the process ``pid``, leader of a session of its own: SIGTERM, then, if it still runs after
    ``timeout`` seconds, SIGKILL to its whole process group."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # it exited meanwhile
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
