"""Shared helpers of the benchmarks: statistics, timing harnesses, the baseline servers and their clients.

The baseline servers run in their own processes, started with ``python -c`` and this folder on
``sys.path``:

- :func:`serve_tcp`: a raw TCP server (the floor for latency and bulk transfer on loopback);
- :func:`serve_uvicorn`: a bare ASGI app on uvicorn (uvloop + httptools, like the daemon), which echoes a
  small body, swallows a large one and serves a large one.
"""

from __future__ import annotations

import http.client
import math
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
MIB = 1024 * 1024
MB = 1_000_000
HOST = "127.0.0.1"


# --- statistics --------------------------------------------------------------------------------------
def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / MB


# --- harnesses -----------------------------------------------------------------------------------------
def latencies(call: Callable[[], object], n: int, warmup: int) -> list[float]:
    """Seconds taken by each of ``n`` sequential calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    out = [0.0] * n
    clock = time.perf_counter
    for i in range(n):
        t0 = clock()
        call()
        out[i] = clock() - t0
    return out


def throughput(make_call: Callable[[], Callable[[], object]], threads: int, seconds: float) -> tuple[float, int]:
    """Calls per second of ``threads`` threads calling as fast as they can for ``seconds``.

    Each thread builds its own caller with ``make_call()`` and calls it once untimed (to open its
    connection) before all start together. Returns ``(calls/s, errors)``.
    """
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    errors = [0] * threads
    window: list[float] = []
    ends = [0.0] * threads

    def run(index: int) -> None:
        call = None
        try:
            call = make_call()
            call()
        except Exception:  # noqa: BLE001 - counted, reported by the caller
            errors[index] += 1
            call = None
        barrier.wait()
        deadline = window[0] + seconds
        done = 0
        clock = time.perf_counter
        while call is not None and clock() < deadline:
            try:
                call()
                done += 1
            except Exception:  # noqa: BLE001
                errors[index] += 1
                break
        counts[index] = done
        ends[index] = clock()

    pool = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    time.sleep(0.05)
    window.append(time.perf_counter())
    barrier.wait()
    for t in pool:
        t.join(seconds + 60)
    elapsed = max(ends) - window[0]
    return sum(counts) / elapsed, sum(errors)


def timed_runs(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    """Seconds taken by each of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# --- ports and processes ---------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Processes:
    """Every helper process the bench starts, so that all of them are stopped at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def spawn(self, call: str, name: str) -> subprocess.Popen:
        """Run ``_common.<call>`` in a new Python process (stdout/stderr to ``<log_dir>/<name>.log``)."""
        code = f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import _common; _common.{call}"
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 30.0) -> float:
    """Poll ``ready`` every 10 ms; seconds until it was true. Raises if ``proc`` exits or time runs out."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        if ready():
            return time.perf_counter() - t0
        time.sleep(0.01)
    raise RuntimeError(f"{what} did not become ready within {timeout} s")


def tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_health(port: int) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=0.2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


# --- baseline a: raw TCP ----------------------------------------------------------------------------------
# One request: !QQ (bytes that follow, bytes wanted back), then the bytes; the answer is the bytes wanted.
_TCP_HEAD = struct.Struct("!QQ")


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < view.nbytes:
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError
        got += n


def serve_tcp(port: int) -> None:
    """Raw TCP server for the floor measurements; serves one connection at a time until killed.

    Its receive and send buffers are made once and reused, so bulk transfers measure the transport alone.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, port))
    listener.listen(8)
    inbox = bytearray(64)
    outboxes: dict[int, bytes] = {}
    head = bytearray(_TCP_HEAD.size)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                _recv_into(conn, memoryview(head))
                size, want = _TCP_HEAD.unpack(head)
                if size > len(inbox):
                    inbox = bytearray(size)
                _recv_into(conn, memoryview(inbox)[:size])
                if want not in outboxes:
                    outboxes[want] = b"\x01" * want
                conn.sendall(outboxes[want])
        except (EOFError, OSError):
            conn.close()


class TcpClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._small = bytearray(64)
        self._big = bytearray(0)

    def ping(self, message: bytes = b"12345678") -> None:
        self.sock.sendall(_TCP_HEAD.pack(len(message), len(message)) + message)
        _recv_into(self.sock, memoryview(self._small)[: len(message)])

    def upload(self, data: memoryview) -> None:
        self.sock.sendall(_TCP_HEAD.pack(data.nbytes, 8))
        self.sock.sendall(data)
        _recv_into(self.sock, memoryview(self._small)[:8])

    def download(self, n: int) -> bytearray:
        """Receive ``n`` bytes into a buffer reused across calls: the transport alone, no allocation."""
        self.sock.sendall(_TCP_HEAD.pack(0, n))
        if len(self._big) != n:
            self._big = bytearray(n)
        _recv_into(self.sock, memoryview(self._big))
        return self._big

    def close(self) -> None:
        self.sock.close()


# --- baseline b: bare uvicorn -----------------------------------------------------------------------------
async def _read_body(receive: Callable, headers: dict) -> bytearray:
    expected = int(headers.get(b"content-length", b"0") or 0)
    buf = bytearray(expected)
    pos = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        buf[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
        if not message.get("more_body"):
            return buf


class EchoApp:
    """``GET /health``; ``POST /echo`` answers its body; ``POST /sink`` answers the body's length;
    ``GET /blob?n=N`` answers N bytes (built once per size)."""

    def __init__(self) -> None:
        self.blobs: dict[int, bytes] = {}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        status = 200
        if method == "POST" and path == "/echo":
            body = bytes(await _read_body(receive, dict(scope["headers"])))
        elif method == "POST" and path == "/sink":
            body = str(len(await _read_body(receive, dict(scope["headers"])))).encode()
        elif method == "GET" and path == "/blob":
            n = int(scope["query_string"].decode().partition("n=")[2] or 0)
            if n not in self.blobs:
                self.blobs[n] = b"\x01" * n
            body = self.blobs[n]
        elif method == "GET" and path == "/health":
            body = b"ok"
        else:
            status, body = 404, b"not found"
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/octet-stream"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def serve_uvicorn(port: int) -> None:
    import uvicorn

    uvicorn.run(EchoApp(), host=HOST, port=port, loop="uvloop", http="httptools", lifespan="on",
                log_level="warning", access_log=False, timeout_keep_alive=300, proxy_headers=False,
                server_header=False, date_header=False)


class HttpClient:
    """The client runhouse uses (its keep-alive socket connection with the httptools parser), pointed at
    the bare uvicorn app, so the baseline differs from runhouse only in what the server does."""

    def __init__(self, port: int) -> None:
        from runhouse.transport.client import _Connection

        self.conn = _Connection(HOST, port)
        self.fixed = f"Host: {HOST}:{port}\r\nAuthorization: Bearer {'x' * 43}\r\n"

    def _exchange(self, head: str, parts: list, size: int) -> bytearray:
        reader = self.conn.exchange(head.encode(), parts, size, None, 60.0)
        status = reader.headers.get(":status")
        if status != "200":
            raise RuntimeError(f"HTTP {status}: {bytes(reader.raw[:200])!r}")
        return reader.raw

    def post(self, path: str, data: bytes | memoryview) -> bytearray:
        size = memoryview(data).nbytes
        head = (
            f"POST {path} HTTP/1.1\r\n{self.fixed}"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        )
        return self._exchange(head, [data], size)

    def get(self, path: str) -> bytearray:
        return self._exchange(f"GET {path} HTTP/1.1\r\n{self.fixed}\r\n", [], 0)

    def close(self) -> None:
        self.conn.close()


def fresh_buffer_ms(nbytes: int, runs: int = 3) -> float:
    """Median ms to allocate and first touch a buffer of ``nbytes`` (what each hop of a transfer that
    receives into a new buffer pays before copying a byte)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        buf = bytearray(nbytes)  # zero-filled: every page is touched
        times.append(time.perf_counter() - t0)
        del buf
    return median(times) * 1e3


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def git_revision(repo: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{rev}{' (+ uncommitted changes)' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def new_state(prefix: str) -> Path:
    """A new temporary folder for one bench run, with ``logs/`` in it, and ``RH_CONFIG_DIR`` pointed inside it
    (call before runhouse is imported; the daemons and servers a bench starts inherit it)."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["RH_CONFIG_DIR"] = str(state / "rh")
    (state / "logs").mkdir()
    return state


def drop_state(state: Path, keep: bool) -> None:
    """Delete a run's folder, or say where it is kept."""
    if keep:
        print(f"kept {state}")
    else:
        shutil.rmtree(state, ignore_errors=True)


def run_header(version: str, quick: bool) -> str:
    """One line saying what ran where: runhouse version and revision, Python, CPUs, quick or full run."""
    return (f"runhouse {version} at {git_revision(BENCH_DIR.parent)}; Python {platform.python_version()}; "
            f"{cpu_count()} CPUs ({cpu_model()}); {'quick' if quick else 'full'} run")


def finish(began: float, results: Any) -> int:
    """Print the run's duration and ``results.table()``; the exit code: 1 if any section failed."""
    print(f"\nbench took {time.perf_counter() - began:.1f} s\n")
    results.table()
    return 1 if results.failures else 0


def section(failures: list[str], title: str, fn: Callable[[], object]) -> None:
    """Run one part of a bench; a failure is printed, its title's head added to ``failures``, and the rest goes on."""
    print(f"\n== {title}", flush=True)
    t0 = time.perf_counter()
    try:
        fn()
    except Exception:  # noqa: BLE001 - the bench reports, never stops half-way
        traceback.print_exc(file=sys.stdout)
        failures.append(title.split(":")[0])
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)


def lat_summary(samples: Sequence[float]) -> str:
    """n, p50, p90, p99, mean and max of latencies given in seconds, printed in ms."""
    if not samples:
        return "n=0"
    ms = [s * 1e3 for s in samples]
    return (f"n={len(ms)} p50 {median(ms):.3f} ms, p90 {percentile(ms, 90):.3f}, "
            f"p99 {percentile(ms, 99):.3f}, mean {sum(ms) / len(ms):.3f}, max {max(ms):.2f} ms")
