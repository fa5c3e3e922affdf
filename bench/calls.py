"""How fast calls, transfers, deploys and daemon start are, next to what the transport underneath allows.

Run from the repository root (``make bench`` does)::

    .venv/bin/python bench/calls.py           # about a minute and a half on 2 cores
    .venv/bin/python bench/calls.py --quick   # smoke run, fewer calls and shorter windows

Everything runs against a daemon of its own: ``RH_CONFIG_DIR`` points to a new temporary folder, the
daemon listens on a free port, and every process started here (daemons, baseline servers) is stopped at the
end. The numbers are printed, never asserted; the final table shows each figure with its target, the
baselines measured in the same run, and ours divided by each baseline.

What is measured, for a trivial ``add(a, b)`` deployed by import path from ``bench/_funcs.py``:

1. warm call latency p50/p99 (sequential calls after a warm-up), with ``stream_logs=False`` and the default;
2. throughput of 16 caller threads sharing one function handle;
3. a 100 MiB numpy argument and a 100 MiB numpy return, in MB/s (MB = 10^6 bytes), through shared memory
   as on this machine (the median and the worst of the runs; for the return, also how long the function
   took to make its array in the worker, and the rest); and the argument in the HTTP request body, as from
   another host;
4. cold deploy to first result (a function never deployed before) and re-deploy of unchanged code;
5. daemon start until ready (``runhouse.resources.clusters.local_daemon.start``);
6. what recording every call as a run costs: p50 and throughput again on a daemon started with ``RH_RUNS=0``
   (no runs recorded), shown as a baseline of 1. (ratio = ours with runs / ours without);
7. ``map`` of 10,000 trivial items (items/s, beside Ray tasks), and of 100,000 items the peak memory growth
   of the client and of the daemon;
8. the same calls through the daemon (``RH_DIRECT_CALLS=0``: two hops, as every call went before direct
   calls), a baseline of section 1 in the same run.

Targets relative to a baseline are checked against that baseline of the same run: p50 <= 2x and p99 <= 3x the
bare uvicorn echo, 16 callers >= 0.5x its calls/s.

Baselines: a raw TCP ping-pong between two processes (the floor), a bare uvicorn (uvloop + httptools) ASGI
app called with the same kind of client as ours, and a Ray actor when ``ray`` is importable.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import _common as C  # noqa: E402
import _funcs  # noqa: E402

BIG = 100 * C.MIB  # bytes of the large argument / return
MAP_ITEMS = 10_000
BIG_MAP_ITEMS = 100_000
ECHO = "uvicorn echo"
DAEMON_PATH = "via the daemon"  # the same calls with RH_DIRECT_CALLS=0
SMALL_BODY = b"x" * 48  # about the size of a serialized add(1, 2) call


@dataclass(frozen=True)
class Config:
    warmup: int = 200
    calls: int = 2000
    threads: int = 16
    seconds: float = 5.0
    big_runs: int = 5
    cold_runs: int = 5
    redeploy_runs: int = 20
    start_runs: int = 3
    map_items: int = MAP_ITEMS

    @classmethod
    def quick(cls) -> Config:
        return cls(warmup=20, calls=200, threads=16, seconds=1.0, big_runs=3, cold_runs=2, redeploy_runs=5,
                   start_runs=1, map_items=MAP_ITEMS // 10)


# --- results ---------------------------------------------------------------------------------------------
@dataclass
class Metric:
    label: str
    unit: str  # "ms", "s", "calls/s" or "MB/s"
    lower_is_better: bool
    target: float | None
    # A target relative to a baseline of the same run: (baseline name, ratio ours / baseline must stay within).
    ratio_target: tuple[str, float] | None = None
    ours: float | None = None
    baselines: list[tuple[str, float]] = field(default_factory=list)

    def met(self) -> bool | None:
        if self.ours is None:
            return None
        verdicts = []
        if self.target is not None:
            verdicts.append(self.ours <= self.target if self.lower_is_better else self.ours >= self.target)
        if self.ratio_target is not None:
            name, limit = self.ratio_target
            base = dict(self.baselines).get(name)
            if base:
                ratio = self.ours / base
                verdicts.append(ratio <= limit if self.lower_is_better else ratio >= limit)
        return all(verdicts) if verdicts else None


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("ms", "s"):
        digits = 3 if value < 1 else 2 if value < 10 else 1 if value < 100 else 0
        return f"{value:.{digits}f} {unit}"
    return f"{value:,.0f} {unit}"


def fmt_ratio(ours: float | None, base: float) -> str:
    if ours is None or not base:
        return "n/a"
    r = ours / base
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x" if r < 100 else f"{r:,.0f}x"


def fmt_target(m: Metric) -> str:
    sign = "<=" if m.lower_is_better else ">="
    texts = [f"{sign} {fmt(m.target, m.unit)}"] if m.target is not None else []
    if m.ratio_target is not None:
        texts.append(f"{sign} {m.ratio_target[1]:g}x {m.ratio_target[0]}")
    return "\n".join(texts) or "-"


class Results:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {
            "p50": Metric("warm call p50 (stream_logs=False)", "ms", True, 0.5, (ECHO, 2.0)),
            "p99": Metric("warm call p99 (stream_logs=False)", "ms", True, 1.5, (ECHO, 3.0)),
            "p50_default": Metric("warm call p50 (default, stream_logs=True)", "ms", True, 0.5, (ECHO, 2.0)),
            "tput": Metric("throughput, 16 caller threads", "calls/s", False, 3000, (ECHO, 0.5)),
            "arg": Metric("100 MiB numpy argument, median of runs", "MB/s", False, 1000),
            "arg_worst": Metric("100 MiB numpy argument, worst run", "MB/s", False, 1000),
            "ret": Metric("100 MiB numpy return, median of runs", "MB/s", False, 1000),
            "ret_worst": Metric("100 MiB numpy return, worst run", "MB/s", False, 1000),
            "map": Metric(f"map of {MAP_ITEMS:,} trivial items", "items/s", False, 20_000),
            "map_client_mem": Metric(f"map of {BIG_MAP_ITEMS:,} items: client memory growth", "MiB", True, None),
            "map_daemon_mem": Metric(f"map of {BIG_MAP_ITEMS:,} items: daemon memory growth", "MiB", True, None),
            "arg_body": Metric("100 MiB argument in the HTTP body (no shm)", "MB/s", False, None),
            "cold": Metric("cold deploy to first result (new module)", "s", True, 0.2),
            "cold_value": Metric("cold deploy to first result (by value)", "s", True, 0.2),
            "first": Metric("first deploy + call on a just-started daemon", "s", True, None),
            "redeploy": Metric("re-deploy of unchanged code", "ms", True, 10),
            "ready": Metric("daemon start until ready", "s", True, 1.0),
        }
        self.failures: list[str] = []

    def ours(self, key: str, value: float) -> None:
        m = self.metrics[key]
        m.ours = value
        verdict = {True: "ok", False: "MISS", None: ""}[m.met()]
        target = f"   target {fmt_target(m)}: {verdict}" if m.target is not None else ""
        print(f"  {m.label:<48} {fmt(value, m.unit):>14}{target}")

    def baseline(self, key: str, name: str, value: float) -> None:
        self.metrics[key].baselines.append((name, value))

    def table(self) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=None if sys.stdout.isatty() else 132)
        table = Table(title="runhouse calls: ours vs targets and baselines (ratio = ours / baseline)",
                      show_lines=True)
        table.add_column("metric")
        table.add_column("ours", justify="right")
        table.add_column("target", justify="right")
        table.add_column("met", justify="center")
        table.add_column("baseline(s)")
        table.add_column("ratio", justify="right")
        for m in self.metrics.values():
            met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[m.met()]
            bases = "\n".join(f"{name}: {fmt(v, m.unit)}" for name, v in m.baselines) or "-"
            ratios = "\n".join(fmt_ratio(m.ours, v) for _, v in m.baselines) or "-"
            table.add_row(m.label, fmt(m.ours, m.unit), fmt_target(m), met, bases, ratios)
        console.print(table)
        console.print("ratio > 1 for ms/s means slower than the baseline; < 1 for calls/s and MB/s means slower.")
        if self.failures:
            console.print(f"[red]sections that failed: {', '.join(self.failures)}[/red]")




def rate_line(cfg: Config, rate: float, errors: int) -> str:
    return f"  {cfg.threads} threads, {cfg.seconds:g} s: {rate:,.0f} calls/s" + (f", {errors} failed" if errors else "")


def mbps_runs(times: list[float], nbytes: int = BIG) -> str:
    return ", ".join(f"{C.mb_per_s(nbytes, t):,.0f}" for t in times)


# --- ours -------------------------------------------------------------------------------------------------
def _fresh_module_function(root: Path, i: int) -> Callable:
    """A function in a module that did not exist before (its own folder, as a new project would be)."""
    folder = root / f"m{i}"
    folder.mkdir(parents=True)
    name = f"rhbench_fresh_{i}"
    (folder / f"{name}.py").write_text(f"def fresh_{i}(a, b):\n    return a + b\n")
    sys.path.insert(0, str(folder))
    return getattr(importlib.import_module(name), f"fresh_{i}")


def _fresh_closure(i: int) -> Callable:
    def fresh(a, b):  # a closure: runhouse sends it by value (cloudpickle)
        return a + b + 0 * i

    return fresh


def bench_daemon_start(rh, daemon, cfg: Config, R: Results, started: list[int]) -> None:
    ready, first, stops = [], [], []
    for i in range(cfg.start_runs):
        port = C.free_port()
        started.append(port)
        try:
            t0 = time.perf_counter()
            daemon.start(port)
            t1 = time.perf_counter()
            cluster = rh.cluster(name=f"bench-start-{i}", host="localhost", server_port=port)
            result = rh.function(_funcs.add).to(cluster)(1, 2, stream_logs=False)
            t2 = time.perf_counter()
            assert result == 3, result
        finally:
            t3 = time.perf_counter()
            daemon.stop(port)
            stops.append(time.perf_counter() - t3)
        ready.append(t1 - t0)
        first.append(t2 - t1)
    print(f"  start until ready, per run: {', '.join(f'{t:.3f}' for t in ready)} s; "
          f"then deploy + first call: {', '.join(f'{t:.3f}' for t in first)} s; "
          f"stop: {', '.join(f'{t:.3f}' for t in stops)} s")
    R.ours("ready", C.median(ready))
    R.ours("first", C.median(first))


def bench_ours(rh, daemon, cfg: Config, R: Results, started: list[int], state: Path, big) -> None:
    port = C.free_port()
    started.append(port)
    daemon.start(port)
    try:
        cluster = rh.cluster(name="bench", host="localhost", server_port=port)
        add = rh.function(_funcs.add).to(cluster)
        assert add(1, 2, stream_logs=False) == 3
        print(f"  daemon on 127.0.0.1:{port}, RH_CONFIG_DIR={os.environ['RH_CONFIG_DIR']}")

        print(f"-- deploys ({cfg.cold_runs} fresh functions each way, {cfg.redeploy_runs} re-deploys)")
        cold, cold_value, redeploy = [], [], []
        fresh_fns = []
        for i in range(cfg.cold_runs):
            fn = _fresh_module_function(state / "fresh", i)  # written and imported here before the clock starts
            t0 = time.perf_counter()
            result = rh.function(fn).to(cluster)(1, 2, stream_logs=False)
            cold.append(time.perf_counter() - t0)
            assert result == 3, result
            fresh_fns.append(fn)
        for i in range(cfg.cold_runs):
            fn = _fresh_closure(i)
            t0 = time.perf_counter()
            result = rh.function(fn, name=f"fresh_by_value_{i}").to(cluster)(1, 2, stream_logs=False)
            cold_value.append(time.perf_counter() - t0)
            assert result == 3, result
        for _ in range(cfg.redeploy_runs):
            t0 = time.perf_counter()
            again = rh.function(fresh_fns[0]).to(cluster)
            redeploy.append(time.perf_counter() - t0)
        assert again(2, 3, stream_logs=False) == 5
        print(f"  cold (new module), per run: {', '.join(f'{t * 1e3:.1f}' for t in cold)} ms")
        print(f"  cold (by value), per run:   {', '.join(f'{t * 1e3:.1f}' for t in cold_value)} ms")
        print(f"  re-deploy: {C.lat_summary(redeploy)}")
        R.ours("cold", C.median(cold))
        R.ours("cold_value", C.median(cold_value))
        R.ours("redeploy", C.median(redeploy) * 1e3)

        print(f"-- warm calls: add(1, 2), {cfg.calls} sequential after {cfg.warmup} warm-up")
        lat = C.latencies(lambda: add(1, 2, stream_logs=False), cfg.calls, cfg.warmup)
        print(f"  stream_logs=False: {C.lat_summary(lat)}")
        lat_default = C.latencies(lambda: add(1, 2), cfg.calls, cfg.warmup)
        print(f"  default:           {C.lat_summary(lat_default)}")
        R.ours("p50", C.median(lat) * 1e3)
        R.ours("p99", C.percentile(lat, 99) * 1e3)
        R.ours("p50_default", C.median(lat_default) * 1e3)

        print(f"-- throughput: {cfg.threads} threads sharing one handle, {cfg.seconds:g} s, stream_logs=False")
        rate, errors = C.throughput(lambda: (lambda: add(1, 2, stream_logs=False)), cfg.threads, cfg.seconds)
        print(rate_line(cfg, rate, errors))
        R.ours("tput", rate)

        print(f"-- 100 MiB: median of {cfg.big_runs} runs after 1 warm-up (MB = 10^6 bytes)")
        nbytes = rh.function(_funcs.nbytes).to(cluster)
        ones = rh.function(_funcs.ones).to(cluster)
        assert nbytes(big, stream_logs=False) == BIG
        times = C.timed_runs(lambda: nbytes(big, stream_logs=False), cfg.big_runs)
        print(f"  argument, MB/s per run: {mbps_runs(times)}")
        R.ours("arg", C.mb_per_s(BIG, C.median(times)))
        R.ours("arg_worst", C.mb_per_s(BIG, max(times)))
        made_in = rh.function(_funcs.made_in_s).to(cluster)
        back = ones(BIG, stream_logs=False)
        assert back.nbytes == BIG and back[0] == 1 and back[-1] == 1
        del back
        made_in()
        times = C.timed_runs(lambda: ones(BIG, stream_logs=False), cfg.big_runs, warmup=0)
        making = made_in()
        print(f"  return, MB/s per run: {mbps_runs(times)}")
        print(f"    of which the function making its array in the worker, ms per run: "
              f"{', '.join(f'{t * 1e3:.0f}' for t in making)}; the rest (runhouse), MB/s per run: "
              f"{mbps_runs([t - m for t, m in zip(times, making, strict=True)])}")
        R.ours("ret", C.mb_per_s(BIG, C.median(times)))
        R.ours("ret_worst", C.mb_per_s(BIG, max(times)))
        # As from another host: no shared memory, all 100 MiB in the request body the daemon reads.
        from runhouse import protocol, serialization

        parts = serialization.serialize(((big,), {}))
        def in_body() -> object:
            return cluster.request(protocol.call_path("nbytes", "call"), {"stream_logs": False}, parts).value()

        assert in_body() == BIG
        times = C.timed_runs(in_body, cfg.big_runs)
        print(f"  argument in the HTTP body (no shared memory), MB/s per run: {mbps_runs(times)}")
        R.ours("arg_body", C.mb_per_s(BIG, C.median(times)))
        kept = rh.function(_funcs.kept_ones).to(cluster)
        times = C.timed_runs(lambda: kept(BIG, stream_logs=False), cfg.big_runs)
        print(f"  return of an array the worker already holds (transport only), MB/s per run: {mbps_runs(times)}")
        bench_map(add, cluster, cfg, R, port)
        bench_daemon_path(add, cfg, R)
    finally:
        daemon.stop(port)


def bench_map(add, cluster, cfg: Config, R: Results, port: int) -> None:
    """``map`` of trivial items: items/s for 10,000; for 100,000 the peak memory growth of client and daemon."""
    import psutil

    items = cfg.map_items
    print(f"-- map: add over {items:,} items (median of 3), then {BIG_MAP_ITEMS:,} items watching memory")
    assert add.map(range(100), range(100), stream_logs=False) == [2 * i for i in range(100)]
    times = C.timed_runs(lambda: add.map(range(items), range(items), stream_logs=False), 3)
    print(f"  items/s per run: {', '.join(f'{items / t:,.0f}' for t in times)}")
    R.ours("map", items / C.median(times))
    from runhouse.transport.client import health

    daemon_pid = int(health(port)["pid"])
    procs = {"client": psutil.Process(), "daemon": psutil.Process(daemon_pid)}
    before = {k: p.memory_info().rss for k, p in procs.items()}
    peak = dict(before)
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            for key, proc in procs.items():
                peak[key] = max(peak[key], proc.memory_info().rss)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    results = add.map(range(BIG_MAP_ITEMS), range(BIG_MAP_ITEMS), stream_logs=False)
    took = time.perf_counter() - t0
    watching.set()
    watcher.join()
    assert results[-1] == 2 * (BIG_MAP_ITEMS - 1)
    grown = {k: (peak[k] - before[k]) / C.MIB for k in procs}
    print(f"  {BIG_MAP_ITEMS:,} items in {took:.2f} s ({BIG_MAP_ITEMS / took:,.0f}/s); peak memory growth: "
          f"client {grown['client']:.0f} MiB, daemon {grown['daemon']:.0f} MiB "
          f"(the results list alone: {sys.getsizeof(results) / C.MIB:.1f} MiB of pointers)")
    R.ours("map_client_mem", grown["client"])
    R.ours("map_daemon_mem", grown["daemon"])


def bench_daemon_path(add, cfg: Config, R: Results) -> None:
    """The same calls through the daemon (two hops), as every call went before direct calls: the before/after."""
    os.environ["RH_DIRECT_CALLS"] = "0"
    try:
        print("-- the same calls through the daemon (RH_DIRECT_CALLS=0)")
        lat = C.latencies(lambda: add(1, 2, stream_logs=False), cfg.calls, cfg.warmup)
        print(f"  stream_logs=False: {C.lat_summary(lat)}")
        rate, errors = C.throughput(lambda: (lambda: add(1, 2, stream_logs=False)), cfg.threads, cfg.seconds)
        print(rate_line(cfg, rate, errors))
    finally:
        del os.environ["RH_DIRECT_CALLS"]
    R.baseline("p50", DAEMON_PATH, C.median(lat) * 1e3)
    R.baseline("p99", DAEMON_PATH, C.percentile(lat, 99) * 1e3)
    R.baseline("tput", DAEMON_PATH, rate)


# --- baselines --------------------------------------------------------------------------------------------
def bench_runs_off(rh, daemon, cfg: Config, R: Results, started: list[int]) -> None:
    """p50 and throughput of a daemon that records no runs (``RH_RUNS=0``), beside section 1's (runs on)."""
    port = C.free_port()
    started.append(port)
    os.environ["RH_RUNS"] = "0"
    try:
        daemon.start(port)
    finally:
        del os.environ["RH_RUNS"]
    cluster = rh.cluster(name="bench-runs-off", host="localhost", server_port=port)
    add = rh.function(_funcs.add).to(cluster)
    assert cluster.status()["runs"]["recording"] is False
    lat = C.latencies(lambda: add(1, 2, stream_logs=False), cfg.calls, cfg.warmup)
    print(f"  runs off, stream_logs=False: {C.lat_summary(lat)}")
    rate, errors = C.throughput(lambda: (lambda: add(1, 2, stream_logs=False)), cfg.threads, cfg.seconds)
    print(rate_line(cfg, rate, errors))
    p50_off = C.median(lat) * 1e3
    R.baseline("p50", "runs off (RH_RUNS=0)", p50_off)
    R.baseline("tput", "runs off (RH_RUNS=0)", rate)
    on_p50, on_rate = R.metrics["p50"].ours, R.metrics["tput"].ours
    if on_p50 is not None and on_rate is not None:
        print(f"  runs on / off: p50 {on_p50:.3f} / {p50_off:.3f} ms = {on_p50 / p50_off:.2f}; "
              f"throughput {on_rate:,.0f} / {rate:,.0f} calls/s = {on_rate / rate:.2f}")


def bench_tcp(cfg: Config, R: Results, procs: C.Processes, big) -> None:
    port = C.free_port()
    proc = procs.spawn(f"serve_tcp({port})", "tcp")
    try:
        C.wait_until(lambda: C.tcp_accepts(port), proc, "the TCP server")
        client = C.TcpClient(port)
        lat = C.latencies(client.ping, cfg.calls, cfg.warmup)
        print(f"  ping-pong (8 bytes each way): {C.lat_summary(lat)}")
        for key in ("p50", "p50_default"):
            R.baseline(key, "raw TCP", C.median(lat) * 1e3)
        R.baseline("p99", "raw TCP", C.percentile(lat, 99) * 1e3)
        view = memoryview(big)
        times = C.timed_runs(lambda: client.upload(view), cfg.big_runs)
        print(f"  100 MiB one way (buffers reused), MB/s per run: {mbps_runs(times)}")
        R.baseline("arg", "raw TCP", C.mb_per_s(BIG, C.median(times)))
        times = C.timed_runs(lambda: client.download(BIG), cfg.big_runs)
        print(f"  100 MiB back (buffers reused), MB/s per run: {mbps_runs(times)}")
        R.baseline("ret", "raw TCP", C.mb_per_s(BIG, C.median(times)))
        client.close()
    finally:
        procs.stop(proc)


def bench_uvicorn(cfg: Config, R: Results, procs: C.Processes, big) -> None:
    ready = []
    proc = None
    port = 0
    try:
        for i in range(cfg.start_runs):
            if proc is not None:
                procs.stop(proc)
            port = C.free_port()
            t0 = time.perf_counter()
            proc = procs.spawn(f"serve_uvicorn({port})", f"uvicorn-{i}")
            C.wait_until(partial(C.http_health, port), proc, "the uvicorn server")
            ready.append(time.perf_counter() - t0)
        print(f"  process start until it answers, per run: {', '.join(f'{t:.3f}' for t in ready)} s")
        R.baseline("ready", "bare uvicorn process", C.median(ready))

        client = C.HttpClient(port)
        assert bytes(client.post("/echo", SMALL_BODY)) == SMALL_BODY
        lat = C.latencies(lambda: client.post("/echo", SMALL_BODY), cfg.calls, cfg.warmup)
        print(f"  POST /echo (48 bytes), keep-alive: {C.lat_summary(lat)}")
        for key in ("p50", "p50_default"):
            R.baseline(key, "uvicorn echo", C.median(lat) * 1e3)
        R.baseline("p99", "uvicorn echo", C.percentile(lat, 99) * 1e3)

        def make_call() -> Callable[[], object]:
            own = C.HttpClient(port)
            return lambda: own.post("/echo", SMALL_BODY)

        rate, errors = C.throughput(make_call, cfg.threads, cfg.seconds)
        print(rate_line(cfg, rate, errors))
        R.baseline("tput", "uvicorn echo", rate)

        view = memoryview(big)
        assert int(client.post("/sink", view)) == BIG
        times = C.timed_runs(lambda: client.post("/sink", view), cfg.big_runs, warmup=0)
        print(f"  POST 100 MiB, MB/s per run: {mbps_runs(times)}")
        for key in ("arg", "arg_body"):
            R.baseline(key, "uvicorn POST", C.mb_per_s(BIG, C.median(times)))
        assert len(client.get(f"/blob?n={BIG}")) == BIG
        times = C.timed_runs(lambda: client.get(f"/blob?n={BIG}"), cfg.big_runs, warmup=0)
        print(f"  GET 100 MiB, MB/s per run: {mbps_runs(times)}")
        R.baseline("ret", "uvicorn GET", C.mb_per_s(BIG, C.median(times)))
        client.close()
    finally:
        if proc is not None:
            procs.stop(proc)


def bench_ray(cfg: Config, R: Results, big) -> None:
    try:
        import ray
    except ImportError:
        print("  note: ray is not importable; Ray baselines skipped (install ray in the venv to include them)")
        return

    class Adder:  # defined here so Ray ships it by value: its workers need not import bench/
        def add(self, a, b):
            return a + b

        def nbytes(self, arr):
            return int(arr.nbytes)

        def ones(self, n):
            import numpy as np

            return np.ones(n, dtype=np.uint8)

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        init = time.perf_counter() - t0
        print(f"  ray.init(num_cpus=2): {init:.3f} s")
        R.baseline("ready", "ray.init", init)
        actor_cls = ray.remote(Adder)
        t0 = time.perf_counter()
        actor = actor_cls.remote()
        assert ray.get(actor.add.remote(1, 2)) == 3
        cold = time.perf_counter() - t0
        print(f"  new actor until first result: {cold:.3f} s")
        R.baseline("cold", "Ray new actor", cold)
        R.baseline("cold_value", "Ray new actor", cold)

        lat = C.latencies(lambda: ray.get(actor.add.remote(1, 2)), cfg.calls, cfg.warmup)
        print(f"  actor call: {C.lat_summary(lat)}")
        for key in ("p50", "p50_default"):
            R.baseline(key, "Ray actor", C.median(lat) * 1e3)
        R.baseline("p99", "Ray actor", C.percentile(lat, 99) * 1e3)

        rate, errors = C.throughput(lambda: (lambda: ray.get(actor.add.remote(1, 2))), cfg.threads, cfg.seconds)
        print(rate_line(cfg, rate, errors))
        R.baseline("tput", "Ray actor", rate)

        times = C.timed_runs(lambda: ray.get(actor.nbytes.remote(big)), cfg.big_runs)
        print(f"  100 MiB argument, MB/s per run: {mbps_runs(times)}")
        R.baseline("arg", "Ray actor", C.mb_per_s(BIG, C.median(times)))
        times = C.timed_runs(lambda: ray.get(actor.ones.remote(BIG)), cfg.big_runs)
        print(f"  100 MiB return, MB/s per run: {mbps_runs(times)}")
        R.baseline("ret", "Ray actor", C.mb_per_s(BIG, C.median(times)))

        add_task = ray.remote(lambda a, b: a + b)
        items = cfg.map_items
        assert ray.get([add_task.remote(i, i) for i in range(100)]) == [2 * i for i in range(100)]
        times = C.timed_runs(lambda: ray.get([add_task.remote(i, i) for i in range(items)]), 3, warmup=0)
        print(f"  {items:,} tasks (add), items/s per run: {', '.join(f'{items / t:,.0f}' for t in times)}")
        R.baseline("map", "Ray tasks", items / C.median(times))
    finally:
        ray.shutdown()


# --- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer calls, shorter windows")
    parser.add_argument("--keep-state", action="store_true",
                        help="keep the temporary RH_CONFIG_DIR (daemon logs) instead of deleting it")
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()

    state = C.new_state("rh-bench-")  # before runhouse is imported
    import numpy as np

    import runhouse as rh
    from runhouse.resources.clusters import local_daemon as daemon

    print(C.run_header(rh.__version__, args.quick))
    print(f"state in {state}; a fresh 100 MiB buffer (allocate + first touch) costs "
          f"{C.fresh_buffer_ms(BIG):.0f} ms here")
    R = Results()
    procs = C.Processes(state / "logs")
    started: list[int] = []
    began = time.perf_counter()
    big = np.ones(BIG, dtype=np.uint8)
    try:
        C.section(R.failures, f"5. daemon start until ready ({cfg.start_runs} runs, each on a new port)",
                lambda: bench_daemon_start(rh, daemon, cfg, R, started))
        C.section(R.failures, "1-4. ours: a daemon of our own",
                  lambda: bench_ours(rh, daemon, cfg, R, started, state, big))
        C.section(R.failures, "6. ours with run recording off (RH_RUNS=0)",
                  lambda: bench_runs_off(rh, daemon, cfg, R, started))
        C.section(R.failures, "a. baseline: raw TCP between two processes", lambda: bench_tcp(cfg, R, procs, big))
        C.section(R.failures, "b. baseline: bare uvicorn (uvloop, httptools), runhouse's keep-alive client",
                lambda: bench_uvicorn(cfg, R, procs, big))
        C.section(R.failures, "c. baseline: Ray actor", lambda: bench_ray(cfg, R, big))
    finally:
        for port in started:
            try:
                daemon.stop(port)
            except Exception as exc:  # noqa: BLE001
                print(f"could not stop the daemon on port {port}: {exc}")
        procs.stop_all()
        C.drop_state(state, args.keep_state)
    return C.finish(began, R)


if __name__ == "__main__":
    sys.exit(main())
