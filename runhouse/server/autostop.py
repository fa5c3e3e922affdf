"""Autostop: the daemon's idle timer, which runs the cluster's stop action when nobody has used it for a while.

Every authenticated request counts as use while it runs (calls, commands, streams of logs, a ``get`` waiting
for a ref), and so does a ``.remote()`` call still running on the cluster; ``/health`` does not. After
``minutes`` without any, the timer writes why to the daemon's log, runs the stop ``command`` when there is
one (an on-demand cluster's "stop my machines", a command from a cluster's config), and stops the daemon.
``minutes`` None or negative turns it off (``cluster.keep_warm()``). Settings survive restarts in
:attr:`runhouse.daemon_files.DaemonFiles.autostop`.

A ``keepalive`` command, when set, runs at most every :data:`KEEPALIVE_INTERVAL_S` while the daemon is in use:
it tells a provisioner's own autostop (SkyPilot's, the second line) that the machines are busy, since that one
counts only its own jobs and SSH sessions, never runhouse's calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runhouse.paths import write_atomic

# How often the timer looks, at most (shorter for short timeouts), and how long the stop command may run.
CHECK_INTERVAL_S = 5.0
COMMAND_TIMEOUT_S = 600.0
# How often, at most, the keepalive command runs while the daemon is in use (shorter for short timeouts).
KEEPALIVE_INTERVAL_S = 60.0
# A daemon just started never stops itself sooner than this: the client that started it is still connecting
# (and may be about to change the settings it kept from before).
STARTUP_GRACE_S = 5.0


class IdleTimer:
    """Counts requests in flight and the time since the last one; stops the daemon after ``minutes`` idle."""

    def __init__(self, settings: Path, busy_elsewhere: Callable[[], bool] = lambda: False) -> None:
        self._settings = settings
        self._busy_elsewhere = busy_elsewhere  # work that runs without a request (a .remote() call)
        self.in_flight = 0
        self.last_active = time.monotonic()
        self.minutes: float | None = None
        self.command: str | None = None
        self.keepalive: str | None = None
        self._kept_alive = 0.0  # when the keepalive command last ran
        self._task: asyncio.Task | None = None
        self._changed: asyncio.Event | None = None  # wakes the watcher when the settings change
        self._started = time.monotonic()
        try:
            saved = json.loads(settings.read_text())
            self.minutes, self.command = saved.get("minutes"), saved.get("command")
            self.keepalive = saved.get("keepalive")
        except (FileNotFoundError, ValueError, AttributeError):
            pass

    def begin(self) -> None:
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight -= 1
        self.last_active = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.minutes is not None and self.minutes >= 0

    def idle_seconds(self) -> float:
        """How long nothing has used the daemon (0 while something does)."""
        if self.in_flight or self._busy_elsewhere():
            self.last_active = time.monotonic()
            return 0.0
        return time.monotonic() - self.last_active

    def set(
        self, minutes: float | None, command: str | None = None, keepalive: str | None = None,
        keep_commands: bool = True,
    ) -> dict[str, Any]:
        """New settings (the idle time restarts from now; the commands change unless ``keep_commands``);
        returns them as :meth:`describe` does."""
        self.minutes = minutes if minutes is not None and minutes >= 0 else None
        if not keep_commands:
            self.command, self.keepalive = command, keepalive
        self.last_active = time.monotonic()
        settings = {"minutes": self.minutes, "command": self.command, "keepalive": self.keepalive}
        write_atomic(self._settings, json.dumps(settings))
        if self._changed is not None:
            self._changed.set()
        return self.describe()

    def describe(self) -> dict[str, Any]:
        return {"minutes": self.minutes, "command": self.command, "keepalive": self.keepalive,
                "idle_s": round(self.idle_seconds(), 3)}

    def start(self) -> None:
        self.last_active = time.monotonic()
        self._started = self.last_active
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            interval = CHECK_INTERVAL_S
            if self.enabled:
                assert self.minutes is not None
                interval = min(CHECK_INTERVAL_S, max(0.05, self.minutes * 60 / 10))
                idle = self.idle_seconds()
                if idle >= self.minutes * 60 and time.monotonic() - self._started >= STARTUP_GRACE_S:
                    await self._fire(idle)
                    return
                self._keep_alive(idle)
            assert self._changed is not None
            try:
                await asyncio.wait_for(self._changed.wait(), interval)
            except asyncio.TimeoutError:
                pass
            self._changed.clear()

    def _keep_alive(self, idle: float) -> None:
        """Run the keepalive command when the daemon was used since it last ran and its interval is over."""
        assert self.minutes is not None
        every = min(KEEPALIVE_INTERVAL_S, max(0.5, self.minutes * 60 / 2))
        now = time.monotonic()
        if self.keepalive and now - idle > self._kept_alive and now - self._kept_alive >= every:
            self._kept_alive = now
            asyncio.get_running_loop().create_task(self._run_keepalive(self.keepalive))

    async def _run_keepalive(self, command: str) -> None:
        proc = await asyncio.create_subprocess_shell(command, stdin=asyncio.subprocess.DEVNULL,
                                                     stdout=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            await asyncio.wait_for(proc.wait(), COMMAND_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()

    async def _fire(self, idle: float) -> None:
        print(f"runhouse autostop: no call, command or stream for {idle / 60:.2f} min (autostop_mins="
              f"{self.minutes}); " + (f"running the stop command {self.command!r}" if self.command else
                                      "stopping the daemon"), file=sys.stderr, flush=True)
        if self.command:
            proc = await asyncio.create_subprocess_shell(self.command, stdin=asyncio.subprocess.DEVNULL,
                                                         start_new_session=True)
            try:
                code = await asyncio.wait_for(proc.wait(), COMMAND_TIMEOUT_S)
                print(f"runhouse autostop: the stop command exited with code {code}", file=sys.stderr, flush=True)
            except asyncio.TimeoutError:
                proc.kill()
                print(f"runhouse autostop: the stop command ran past {COMMAND_TIMEOUT_S:.0f} s and was killed",
                      file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # the graceful shutdown stops every worker
