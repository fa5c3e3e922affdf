"""How a three-node runhouse cluster does next to plain Ray on the same Ray cluster, in the same run.

Run from the repository root (``make bench`` does)::

    .venv/bin/python bench/multinode.py           # about two minutes (most of it the first bring-up)
    .venv/bin/python bench/multinode.py --quick   # smoke run: one round of each, fewer calls

The "nodes" are three sshd servers on the loopback aliases 127.0.0.2-127.0.0.4 (``tests/support/sshd.py``'s
``LoopbackNodes``), each with its own home folder, all on this machine. ``RH_CONFIG_DIR`` points to a new
temporary folder; ``rh.cluster(ips=...)`` installs runhouse with Ray on every node and makes them one Ray
cluster (one CPU per node), and this process then joins that Ray cluster as a plain Ray driver with the head's
token, for the baselines. Everything is torn down at the end. Figures are printed, never asserted.

What is measured (runhouse / plain Ray on the same nodes):

1. ``fn.map(range(1000))`` of a trivial function, items/s, beside 1,000 Ray tasks (``ray.get([...])``);
   best of 3 rounds each, alternating, after a warm-up;
2. ``fn.map([1.0] * 6)`` of a function that needs 1 s of CPU (it spins until its thread has had that much),
   wall time, best of 3, beside 6 Ray tasks, with how the items spread over the nodes; the ideal is 2 s (6
   items on 3 one-CPU nodes), which a machine with fewer than 3 cores cannot reach (said when so);
3. a call to an instance living on another node (127.0.0.3), p50 of sequential calls, beside a Ray actor
   pinned to that node (``NodeAffinitySchedulingStrategy``);
4. bring-up from nothing (``c.up_if_not()``: installs runhouse and Ray on each node, starts Ray and the
   daemon) and of a new handle while the cluster is up; the second beside ``ray.init`` joining the running
   Ray cluster.

The Ray driver here may run another patch release of Python than the nodes' venvs (made with each node's
``python3``); Ray is told to compare the minor version only (``RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL``).

Code deployed is importable by path on the nodes (runhouse syncs this repo to each): it is at module level
below, and importing this module runs nothing.
"""

from __future__ import annotations

import os
import time


# --- deployed code (imported by path on the nodes: keep it free of side effects) -----------------------------
def trivial(x: int) -> int:
    return x


def burn(seconds: float) -> tuple[str, float, float]:
    """Keep a CPU busy until this thread has had ``seconds`` of CPU time: an item that needs that much work,
    so it takes longer when it shares a CPU (or a GIL) with another. Returns where it ran (the node's runhouse
    folder) and when it started and ended (``time.time()``, one clock for every loopback node)."""
    started = time.time()
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass
    return os.environ.get("RH_CONFIG_DIR", "?"), started, time.time()


class Pinger:
    def ping(self) -> str:
        return "pong"

    def where(self) -> str:
        """The runhouse folder of the node this runs on (each loopback node has its own)."""
        return os.environ.get("RH_CONFIG_DIR", "?")


# --- everything else runs only from main() ------------------------------------------------------------------
RAY_PORT = 46399  # not Ray's default, nor the multi-node tests' port
NODE_RESOURCES = {"num_cpus": 1, "memory": 500_000_000, "object_store_memory": 100_000_000}
MAP_ITEMS = 1000
BURN_ITEMS = 6
BURN_S = 1.0
NODE_COUNT = 3


def _config(quick: bool) -> dict[str, int]:
    return {"rounds": 1, "calls": 100, "warmup": 20} if quick else {"rounds": 3, "calls": 500, "warmup": 50}


class Row:
    """One figure: ours, the Ray baseline, which way is better, and the target."""

    def __init__(self, label: str, unit: str, lower_is_better: bool, target: str) -> None:
        self.label, self.unit, self.lower_is_better, self.target = label, unit, lower_is_better, target
        self.ours: float | None = None
        self.ray: float | None = None
        self.ray_name = "Ray"
        self.ideal: float | None = None  # a figure to compare with besides Ray (the 2 s of the CPU-bound map)
        self.met: bool | None = None

    def ratio(self) -> str:
        """runhouse / Ray (whether above 1 is better depends on the unit: see :meth:`direction`)."""
        if self.ours is None or not self.ray:
            return "n/a"
        return f"{self.ours / self.ray:.2f}x"

    def direction(self) -> str:
        return "lower is better" if self.lower_is_better else "higher is better"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    return f"{value:,.0f} {unit}"


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {
            "map": Row(f"map of {MAP_ITEMS:,} trivial items", "items/s", False, "runhouse/ray >= 1.0"),
            "burn": Row(f"map of {BURN_ITEMS} CPU-bound {BURN_S:g} s items", "s", True, "<= 1.2x ideal (2 s)"),
            "ping": Row("call to an instance on another node, p50", "ms", True, "runhouse/ray <= 1.0"),
            "cold": Row("bring-up from nothing", "s", True, "< 60 s"),
            "warm": Row("bring-up when already up (new handle)", "s", True, "< 2 s"),
        }
        self.failures: list[str] = []
        self.notes: list[str] = []

    def report(self, key: str) -> None:
        """Print one row as soon as both sides are in."""
        r = self.rows[key]
        ray = f"{r.ray_name} {fmt(r.ray, r.unit)}" if r.ray is not None else f"{r.ray_name}: n/a"
        line = f"  -> runhouse {fmt(r.ours, r.unit)}, {ray}; runhouse/ray {r.ratio()} ({r.direction()})"
        if r.ideal is not None and r.ours is not None:
            line += f"; runhouse/ideal {r.ours / r.ideal:.2f}x"
            if r.ray is not None:
                line += f", ray/ideal {r.ray / r.ideal:.2f}x"
        verdict = {True: "met", False: "MISSED", None: "-"}[r.met]
        print(f"{line}; target {r.target}: {verdict}", flush=True)

    def table(self) -> None:
        heads = ("figure", "runhouse", "Ray baseline", "runhouse/ray", "better", "target", "met")
        body = []
        for r in self.rows.values():
            ray = f"{fmt(r.ray, r.unit)}" if r.ray is not None else "n/a"
            if r.ray is not None and r.ray_name != "Ray":
                ray += f" ({r.ray_name})"
            ratio = r.ratio()
            if r.ideal is not None and r.ours is not None:
                ratio += f" (ideal: {r.ours / r.ideal:.2f}x)"
            better = "lower" if r.lower_is_better else "higher"
            met = {True: "yes", False: "NO", None: "-"}[r.met]
            body.append((r.label, fmt(r.ours, r.unit), ray, ratio, better, r.target, met))
        widths = [max(len(row[i]) for row in [heads, *body]) for i in range(len(heads))]
        for row in [heads, tuple("-" * w for w in widths), *body]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        print("runhouse/ray: the runhouse figure divided by Ray's; for items/s higher is better, for s and ms lower.")
        for note in self.notes:
            print(f"note: {note}")
        if self.failures:
            print(f"\nfailed sections: {', '.join(self.failures)}")


# --- the measurements ----------------------------------------------------------------------------------------
def rate(run, items: int) -> float:
    """Items per second of one ``run()``."""
    t0 = time.perf_counter()
    run()
    return items / (time.perf_counter() - t0)


def bench_map(rh, ray, c, M, cfg: dict[str, int], R: Results) -> None:
    t0 = time.perf_counter()
    fn = rh.function(M.trivial).to(c)
    print(f"  deploy of trivial (repo synced to every node): {time.perf_counter() - t0:.2f} s")
    trivial_task = ray.remote(M.trivial)
    items = list(range(MAP_ITEMS))
    t0 = time.perf_counter()
    assert fn.map(items) == items
    print(f"  runhouse warm-up map (starts the pool on every node): {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    assert ray.get([trivial_task.remote(i) for i in items]) == items
    print(f"  Ray warm-up tasks (starts its workers): {time.perf_counter() - t0:.2f} s")
    ours, quiet, theirs = [], [], []
    for _ in range(cfg["rounds"]):  # alternating, so all see the same machine load
        ours.append(rate(lambda: fn.map(items), MAP_ITEMS))
        quiet.append(rate(lambda: fn.map(items, stream_logs=False), MAP_ITEMS))
        theirs.append(rate(lambda: ray.get([trivial_task.remote(i) for i in items]), MAP_ITEMS))
    print(f"  runhouse fn.map, items/s per round:                    {', '.join(f'{v:,.0f}' for v in ours)}")
    print(f"  runhouse fn.map(stream_logs=False), items/s per round: {', '.join(f'{v:,.0f}' for v in quiet)}")
    print(f"  Ray tasks, items/s per round:                          {', '.join(f'{v:,.0f}' for v in theirs)}")
    r = R.rows["map"]
    r.ours, r.ray = max(ours), max(theirs)
    r.met = r.ours / r.ray >= 1.0
    R.report("map")


def spread(results: list[tuple[str, float, float]], homes: list) -> str:
    """Items per node and the most that ran at once on one node, from what :func:`burn` returned."""
    by_node: dict[str, list[tuple[float, float]]] = {}
    for folder, start, end in results:
        node = next((home.parent.name for home in homes if folder.startswith(str(home))), folder)
        by_node.setdefault(node, []).append((start, end))
    parts = []
    for node in sorted(by_node):
        spans = by_node[node]
        most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
        parts.append(f"{node}: {len(spans)} items, at most {most} at once")
    return "; ".join(parts)


def bench_burn(rh, ray, c, M, nodes, cfg: dict[str, int], R: Results) -> None:
    import _common as C

    fn = rh.function(M.burn).to(c)
    burn_task = ray.remote(M.burn)
    work = [BURN_S] * BURN_ITEMS
    fn.map([0.05] * BURN_ITEMS)  # warm: the pool is up
    ray.get([burn_task.remote(0.05) for _ in range(BURN_ITEMS)])
    ours, theirs = [], []
    for _ in range(cfg["rounds"]):
        t0 = time.perf_counter()
        ours_out = fn.map(work)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs_out = ray.get([burn_task.remote(s) for s in work])
        theirs.append(time.perf_counter() - t0)
    print(f"  runhouse fn.map, wall s per round: {', '.join(f'{v:.2f}' for v in ours)}")
    print(f"    last round: {spread(ours_out, nodes.homes)}")
    print(f"  Ray tasks, wall s per round:       {', '.join(f'{v:.2f}' for v in theirs)}")
    print(f"    last round: {spread(theirs_out, nodes.homes)}")
    cores = C.cpu_count()
    if cores < NODE_COUNT:
        note = (f"this machine has {cores} CPUs for {NODE_COUNT} one-CPU nodes, so {BURN_ITEMS} x {BURN_S:g} s of CPU "
                f"takes at least {BURN_ITEMS * BURN_S / cores:.1f} s here, whatever schedules it")
        print(f"  note: {note}")
        R.notes.append(f"CPU-bound map: {note}")
    r = R.rows["burn"]
    r.ours, r.ray, r.ideal = min(ours), min(theirs), BURN_ITEMS * BURN_S / NODE_COUNT
    r.met = r.ours <= 1.2 * r.ideal
    R.report("burn")


def bench_ping(rh, ray, c, M, nodes, cfg: dict[str, int], R: Results) -> None:
    import _common as C
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    target_ip = nodes.ips[1]
    remote_cls = rh.module(M.Pinger).to(c, env=rh.env(name="bench_side", node=1))
    p = remote_cls(name="bench_pinger")
    print(f"  runhouse instance lives in {p.where()}")
    ours = C.latencies(lambda: p.ping(), cfg["calls"], cfg["warmup"])
    print(f"  runhouse p.ping():                   {C.lat_summary(ours)}")
    quiet = C.latencies(lambda: p.ping(stream_logs=False), cfg["calls"], cfg["warmup"])
    print(f"  runhouse p.ping(stream_logs=False):  {C.lat_summary(quiet)}")

    node_id = next(n["NodeID"] for n in ray.nodes() if n["NodeManagerAddress"] == target_ip and n["Alive"])
    actor_cls = ray.remote(num_cpus=0)(M.Pinger)
    a = actor_cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
    print(f"  Ray actor lives in {ray.get(a.where.remote())}")
    theirs = C.latencies(lambda: ray.get(a.ping.remote()), cfg["calls"], cfg["warmup"])
    print(f"  Ray ray.get(a.ping.remote()):        {C.lat_summary(theirs)}")
    ray.kill(a)
    r = R.rows["ping"]
    r.ours, r.ray = C.median(ours) * 1e3, C.median(theirs) * 1e3
    r.met = r.ours <= r.ray
    R.report("ping")


# --- main ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging
    import shutil
    import sys
    import tempfile
    import traceback
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one round of each, fewer calls")
    args = parser.parse_args(argv)
    cfg = _config(args.quick)

    bench_dir = Path(__file__).resolve().parent
    for folder in (bench_dir, bench_dir.parent):  # _common, and the repo root for tests.support and bench.*
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    import _common as C

    state = C.new_state("rh-bench-multinode-")  # RH_CONFIG_DIR, before runhouse is imported
    from importlib.metadata import version

    import runhouse as rh
    from bench import multinode as M  # the deployed code by its import path, not as __main__
    from tests.support.sshd import SSHD, LoopbackNodes, free_port_on

    print(C.run_header(rh.__version__, args.quick) + f"; ray {version('ray')}")
    if not SSHD.exists():
        print(f"{SSHD} not found: install the OpenSSH server (`apt-get install openssh-server`)")
        return 1
    if os.geteuid() == 0:  # sshd refuses to start without its privilege separation folder
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    R = Results()
    began = time.perf_counter()
    nodes = LoopbackNodes(NODE_COUNT, Path(tempfile.mkdtemp(prefix="nodes-", dir=state)))
    c = again = None

    def handle():
        return rh.cluster(name="bench-trio", ips=nodes.ips, ssh_creds=nodes.ssh_creds(), server_port=port,
                          ray_port=RAY_PORT, node_resources=NODE_RESOURCES)

    try:
        nodes.start()
        port = free_port_on(nodes.ips[0])
        print(f"nodes {', '.join(nodes.ips)} (sshd port {nodes.port}); daemon port {port}; Ray port {RAY_PORT}; "
              f"state in {state}")

        print("\n== 4a. bring-up from nothing: c.up_if_not() installs runhouse[ray] on every node", flush=True)
        c = handle()
        t0 = time.perf_counter()
        try:
            c.up_if_not()
        except Exception:  # noqa: BLE001 - reported; nothing else can run without the cluster
            traceback.print_exc(file=sys.stdout)
            R.failures.append("4a")
            return C.finish(began, R)
        R.rows["cold"].ours = time.perf_counter() - t0
        R.rows["cold"].met = R.rows["cold"].ours < 60
        R.rows["cold"].ray_name = "Ray (no equivalent)"
        R.report("cold")

        print("\n== 4b. bring-up when already up: a new handle's up_if_not(); Ray: ray.init joining it", flush=True)
        again = handle()
        t0 = time.perf_counter()
        again.up_if_not()
        R.rows["warm"].ours = time.perf_counter() - t0
        # The plain-Ray driver: this process joins the same Ray cluster with the head's token (this machine is
        # the head, so it is on the head's node address, as the daemon is). Ray reads RAY_AUTH_MODE when it is
        # imported, so it is imported only now. The nodes' venvs are made with the nodes' own python3, which may
        # differ from this one in the patch version only: Ray refuses that unless told to match the minor only.
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(nodes.homes[0] / ".rh" / "ray" / "auth_token")
        os.environ.setdefault("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL", "minor")
        import ray

        t0 = time.perf_counter()
        try:
            ray.init(address=c.ray_address, _node_ip_address=nodes.ips[0], logging_level=logging.ERROR)
        except Exception:  # noqa: BLE001 - reported; the baselines need the driver
            traceback.print_exc(file=sys.stdout)
            R.failures.append("4b (ray.init)")
            R.report("warm")
            return C.finish(began, R)
        r = R.rows["warm"]
        r.ray, r.ray_name = time.perf_counter() - t0, "ray.init"
        r.met = r.ours < 2
        R.report("warm")
        alive = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
        print(f"  Ray nodes alive: {', '.join(alive)}; cluster resources: {ray.cluster_resources().get('CPU')} CPU")

        C.section(R.failures, f"1. map of {MAP_ITEMS:,} trivial items: fn.map vs Ray tasks "
                  f"(best of {cfg['rounds']}, alternating)", lambda: bench_map(rh, ray, c, M, cfg, R))
        C.section(R.failures, f"2. map of {BURN_ITEMS} CPU-bound {BURN_S:g} s items: fn.map vs Ray tasks "
                  f"(best of {cfg['rounds']})", lambda: bench_burn(rh, ray, c, M, nodes, cfg, R))
        C.section(R.failures, f"3. call to an instance on node {nodes.ips[1]}: p50 of {cfg['calls']} calls after "
                  f"{cfg['warmup']} warm-up, vs a Ray actor pinned there", lambda: bench_ping(rh, ray, c, M, nodes,
                                                                                             cfg, R))
        return C.finish(began, R)
    finally:
        t0 = time.perf_counter()
        if "ray" in sys.modules:  # also after a ray.init that failed half-way
            sys.modules["ray"].shutdown()
        for cluster, stop in ((again, False), (c, True)):
            if cluster is None:
                continue
            try:
                cluster.teardown() if stop else cluster.close()
            except Exception as exc:  # noqa: BLE001
                print(f"could not {'tear down' if stop else 'close'} {cluster!r}: {exc}")
        nodes.stop()
        shutil.rmtree(state, ignore_errors=True)
        print(f"\ncleaned up in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    import sys

    sys.exit(main())
