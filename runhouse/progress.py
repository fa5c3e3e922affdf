"""What long operations show the person at the terminal, on stderr: each step of a cluster's bring-up or an
env's install as a spinner, then a line with how long it took; transfers as a bar with bytes and rate.

Quiet mode hides all of it (errors are raised as always): ``RH_QUIET=1`` in the environment, or
``rh.configs.set("quiet", True)``, or ``with progress.quietly():`` around a block of a script.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

from rich.console import Console
from rich.errors import LiveError

# The one console progress is drawn on (a second live display on it is refused, so nested steps draw none).
console = Console(stderr=True, highlight=False)
_quiet_here = threading.local()
_FALSE = ("", "0", "false", "no", "off")


def quiet() -> bool:
    """Whether progress is hidden: inside :func:`quietly`, ``RH_QUIET`` set (not 0/false/no), or the
    ``quiet`` setting of ``rh.configs``."""
    if getattr(_quiet_here, "on", False):
        return True
    if os.environ.get("RH_QUIET", "").strip().lower() not in _FALSE:
        return True
    from runhouse.config import configs

    return bool(configs.get("quiet"))


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """Hide progress in this thread for the block."""
    before = getattr(_quiet_here, "on", False)
    _quiet_here.on = True
    try:
        yield
    finally:
        _quiet_here.on = before


@contextlib.contextmanager
def step(description: str) -> Iterator[None]:
    """Show ``description`` with a spinner while the block runs, then ``✓ description (1.2 s)``, or
    ``✗ description`` when it raises (the error itself propagates untouched).

    A step inside another (or beside one in another thread) draws no second spinner: it prints its line.
    """
    if quiet():
        yield
        return
    began = time.perf_counter()
    status = console.status(description, spinner="dots")
    try:
        status.start()
        spinning = True
    except LiveError:
        spinning = False
    try:
        yield
    except BaseException:
        console.print(f"[red]✗[/red] {description}")
        raise
    finally:
        if spinning:
            status.stop()
    console.print(f"[green]✓[/green] {description} [dim]({time.perf_counter() - began:.1f} s)[/dim]")


def say(message: str) -> None:
    """One line of progress (unless quiet)."""
    if not quiet():
        console.print(message)
