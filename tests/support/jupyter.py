"""Looking at JupyterLab servers from a test: who runs (this machine is also the loopback SSH host), what listens,
what its API answers."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import psutil


def jupyterlab_processes(port: int) -> list[psutil.Process]:
    """The JupyterLab servers listening on ``port`` (this machine is also the loopback host) and what they run."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "jupyterlab" in cmdline and f"--port={port}" in cmdline:
            found += [proc, *proc.children(recursive=True)]
    return found


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def api(port: int, path: str, token: str | None, body: bytes | None = None) -> tuple[int, dict]:
    """JupyterLab's answer at ``path`` through the local port: status code and JSON body."""
    headers = {"Authorization": f"token {token}"} if token is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    return left
