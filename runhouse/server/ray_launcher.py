"""The Ray actor that starts one worker on its node, holds that worker's resources, and ends it.

:class:`~runhouse.server.ray_backend.RayBackend` creates one :class:`WorkerLauncher` per remote worker, placed
by Ray on the worker's node (``NodeAffinitySchedulingStrategy``) with the resources the env asks for (so Ray
sets ``CUDA_VISIBLE_DEVICES`` and no other env gets them while it lives). The launcher makes the env's
interpreter on its node, connects to the head daemon's worker listener, proves itself with the worker's
one-time secret, and hands the connected socket to :mod:`runhouse.server.worker`, spawned as its child: the
daemon then speaks to the worker directly, as to a local one. The worker dies with its launcher (a parent-death
signal), and the launcher with its node's raylet.

This module runs on the nodes, inside Ray workers; it is imported by name there (runhouse is installed on every
node), never pickled by value.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from runhouse.server.channel import signal_group, spawn_worker
from runhouse.server.envs import EnvSpec, ensure_python

CONNECT_TIMEOUT_S = 30.0
# TCP keepalive on the channel: a node that vanishes without closing it (power loss, a cut network) is noticed
# within about IDLE + INTERVAL * COUNT seconds.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 2, 3


def tune_channel(sock: socket.socket) -> None:
    """Low latency (no Nagle delay) and keepalive probes on a TCP channel between the daemon and a worker."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


class WorkerLauncher:
    """One worker of an env on this node (a Ray actor; see the module docstring)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def launch(self, spec: dict[str, Any], listener: tuple[str, int], secret: bytes, env: dict[str, str]) -> int:
        """Make the env's interpreter here, connect to the daemon's ``listener`` and start the worker on that
        connection; returns the worker's pid.

        Raises:
            EnvCreationError: the env's requirements could not be installed on this node.
            OSError: the daemon's listener could not be reached.
        """
        env_spec = EnvSpec.from_dict(spec)
        python = asyncio.run(ensure_python(env_spec, _quiet))
        channel = socket.create_connection(listener, timeout=CONNECT_TIMEOUT_S)
        try:
            tune_channel(channel)
            channel.sendall(secret)
            channel.settimeout(None)
            environ = {**os.environ, **dict(env_spec.env_vars), **env, "RH_ENV_NAME": env_spec.name,
                       "PYTHONUNBUFFERED": "1"}
            self.proc = spawn_worker(python, channel, environ, cwd=str(Path.home()))
        finally:
            channel.close()
        return self.proc.pid

    def wait_exit(self, timeout: float) -> int | None:
        """The worker's exit code once it exited (killed first when it has not within ``timeout`` s)."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """Kill the worker and everything in its process group now."""
        if self.proc is not None:
            signal_group(self.proc.pid, signal.SIGKILL)

    def stop(self, grace: float) -> int | None:
        """Stop the worker (TERM, then KILL after ``grace`` s) and what it spawned; returns its exit code."""
        if self.proc is None:
            return None
        signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        signal_group(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()

    def memory(self) -> int:
        """Resident memory of the worker in bytes (0 when it is gone)."""
        import psutil

        try:
            return psutil.Process(self.proc.pid).memory_info().rss if self.proc else 0
        except psutil.Error:
            return 0


def _quiet(_: str) -> None:
    pass
