"""Does the daemon stay flat as its registry grows? One of each, then 1,000 functions, 100 envs, 1,000 instances.

Run from the repository root::

    .venv/bin/python bench/scale.py           # a few minutes on 2 cores
    .venv/bin/python bench/scale.py --quick   # smoke run: 100 functions, 10 envs, 100 instances

A daemon of its own (``RH_CONFIG_DIR`` in a new temporary folder, a free port). First with one env, one
function, one class and one instance, then again after deploying the rest (functions and instances spread
evenly over the envs, one class per env), the same figures are measured:

1. warm call p50 of the first function (sequential calls after a warm-up);
2. deploy time of a function never deployed before (a new name, into the first env), median;
3. creating a named instance, median;
4. what one deploy writes to the registry's files, in bytes;
5. daemon start until ready (stop, then ``local_daemon.start``), median of several restarts; then the first
   call to an instance made before the restart (re-created on its first use) and call p50 again.

The scaled figures are printed beside the one-of-each ones, as ratios (target: each <= 1.2x).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import _common as C  # noqa: E402
import _scale_funcs  # noqa: E402

TARGET_RATIO = 1.2


@dataclass(frozen=True)
class Config:
    functions: int = 1000
    envs: int = 100
    instances: int = 1000
    calls: int = 1000
    warmup: int = 200
    deploys: int = 20
    restarts: int = 5

    @classmethod
    def quick(cls) -> Config:
        return cls(functions=100, envs=10, instances=100, calls=200, warmup=50, deploys=5, restarts=2)


def folder_state(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime_ns) of the registry's files in ``folder``, by name."""
    out = {}
    for path in folder.glob("registry*"):
        if path.is_file():
            info = path.stat()
            out[str(path)] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return out


def bytes_written(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> int:
    """Bytes a change wrote: a file replaced or new counts whole, a file grown counts its growth."""
    total = 0
    for name, (inode, size, mtime) in after.items():
        old = before.get(name)
        if old is None or old[0] != inode:
            total += size
        elif old[2] != mtime:
            total += max(size - old[1], 0) or size  # rewritten in place: count it whole
    return total


class Bench:
    def __init__(self, rh: Any, daemon: Any, cfg: Config, port: int) -> None:
        self.rh, self.daemon, self.cfg, self.port = rh, daemon, cfg, port
        self.cluster = rh.cluster(name="bench-scale", host="localhost", server_port=port)
        from runhouse.daemon_files import DaemonFiles

        self.folder = Path(DaemonFiles.local(port).folder)
        self.probes = 0

    def env(self, i: int) -> str:
        return f"env_{i}"

    def populate(self, functions: range, envs: range, instances: range) -> float:
        """Create envs, functions (one name each), a class per env and instances; returns the seconds taken."""
        rh, cluster = self.rh, self.cluster
        t0 = time.perf_counter()
        for e in envs:
            rh.env(name=self.env(e), env_vars={"ENV_INDEX": str(e)}).to(cluster)
            rh.module(_scale_funcs.Counter).to(cluster, env=self.env(e), name=f"Counter_{e}")
        for f in functions:
            rh.function(_scale_funcs.add).to(cluster, env=self.env(f % self.cfg.envs), name=f"fn_{f}")
        for k in instances:
            counter_class = rh.module(_scale_funcs.Counter).to(
                cluster, env=self.env(k % self.cfg.envs), name=f"Counter_{k % self.cfg.envs}")
            counter_class(start=k, name=f"inst_{k}")
        return time.perf_counter() - t0

    def measure(self, label: str) -> dict[str, float]:
        rh, cluster, cfg = self.rh, self.cluster, self.cfg
        fn = rh.function(_scale_funcs.add).to(cluster, env=self.env(0), name="fn_0")
        lat = C.latencies(lambda: fn(1, 2, stream_logs=False), cfg.calls, cfg.warmup)
        deploys, creates = [], []
        counter_class = rh.module(_scale_funcs.Counter).to(cluster, env=self.env(0), name="Counter_0")
        written = 0
        for _ in range(cfg.deploys):
            self.probes += 1
            before = folder_state(self.folder)
            t0 = time.perf_counter()
            rh.function(_scale_funcs.add).to(cluster, env=self.env(0), name=f"probe_{self.probes}")
            deploys.append(time.perf_counter() - t0)
            written = bytes_written(before, folder_state(self.folder))
            t0 = time.perf_counter()
            counter_class(start=1, name=f"probe_inst_{self.probes}")
            creates.append(time.perf_counter() - t0)
        print(f"  [{label}] call: {C.lat_summary(lat)}")
        print(f"  [{label}] deploy of a new function: {C.lat_summary(deploys)}; wrote {written:,} bytes")
        print(f"  [{label}] new named instance: {C.lat_summary(creates)}")
        return {"p50": C.median(lat) * 1e3, "deploy": C.median(deploys) * 1e3,
                "instance": C.median(creates) * 1e3, "written": float(written)}

    def restart(self, label: str) -> dict[str, float]:
        starts, first_instance = [], []
        for _ in range(self.cfg.restarts):
            self.daemon.stop(self.port)
            t0 = time.perf_counter()
            self.daemon.start(self.port)
            starts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            self.cluster.get("inst_0").increment(stream_logs=False)
            first_instance.append(time.perf_counter() - t0)
        fn = self.rh.function(_scale_funcs.add).to(self.cluster, env=self.env(0), name="fn_0")
        lat = C.latencies(lambda: fn(1, 2, stream_logs=False), self.cfg.calls, self.cfg.warmup)
        print(f"  [{label}] start until ready: {', '.join(f'{t:.3f}' for t in starts)} s; first call to an "
              f"instance after it: {', '.join(f'{t * 1e3:.1f}' for t in first_instance)} ms; "
              f"then call {C.lat_summary(lat)}")
        return {"start": C.median(starts) * 1e3, "first_instance": C.median(first_instance) * 1e3,
                "p50_after": C.median(lat) * 1e3}


ROWS = [
    ("p50", "warm call p50", "ms"),
    ("deploy", "deploy of a new function", "ms"),
    ("instance", "new named instance", "ms"),
    ("written", "bytes one deploy writes", "B"),
    ("start", "daemon start until ready", "ms"),
    ("first_instance", "first call to an instance after start", "ms"),
    ("p50_after", "warm call p50 after a restart", "ms"),
]
TARGETED = {"p50", "deploy", "start"}


def table(cfg: Config, one: dict[str, float], many: dict[str, float]) -> bool:
    print(f"\n| figure | one of each | {cfg.functions} fns, {cfg.envs} envs, {cfg.instances} instances | ratio | "
          f"target |")
    print("|---|---|---|---|---|")
    met = True
    for key, name, unit in ROWS:
        ratio = many[key] / one[key] if one[key] else float("nan")
        target = f"<= {TARGET_RATIO}x" if key in TARGETED else ""
        if key in TARGETED and not ratio <= TARGET_RATIO:
            met = False
        shown = [f"{v:,.0f} {unit}" if unit == "B" else f"{v:.3f} {unit}" for v in (one[key], many[key])]
        print(f"| {name} | {shown[0]} | {shown[1]} | {ratio:.2f}x | {target} |")
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a tenth of the objects, fewer calls")
    parser.add_argument("--keep-state", action="store_true", help="keep the temporary RH_CONFIG_DIR")
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    state = C.new_state("rh-bench-scale-")  # before runhouse is imported
    import runhouse as rh
    from runhouse.resources.clusters import local_daemon as daemon

    print(C.run_header(rh.__version__, args.quick))
    port = C.free_port()
    began = time.perf_counter()
    try:
        daemon.start(port)
        bench = Bench(rh, daemon, cfg, port)
        print("\n== one of each: 1 env, 1 function, 1 class, 1 instance")
        bench.populate(range(1), range(1), range(1))
        one = {**bench.measure("one"), **bench.restart("one")}
        print(f"\n== populating: {cfg.functions} functions, {cfg.envs} envs, {cfg.instances} instances")
        took = bench.populate(range(1, cfg.functions), range(1, cfg.envs), range(1, cfg.instances))
        print(f"  took {took:.1f} s; the registry's files hold "
              f"{sum(s for _, s, _ in folder_state(bench.folder).values()):,} bytes")
        many = {**bench.measure("many"), **bench.restart("many")}
        print(f"\nbench took {time.perf_counter() - began:.1f} s")
        met = table(cfg, one, many)
        print(f"\ntargets {'met' if met else 'NOT met'}")
    finally:
        daemon.stop(port)
        C.drop_state(state, args.keep_state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
