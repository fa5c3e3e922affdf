"""Explicit lifetimes: the base of everything that holds connections, processes or tunnels open."""

from __future__ import annotations

import abc
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
