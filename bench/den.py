"""How fast Den saves and loads resource configs, on SQLite and on PostgreSQL, seen from another process.

Run from the repository root::

    .venv/bin/python bench/den.py           # about two minutes on 2 cores
    .venv/bin/python bench/den.py --quick   # smoke run, fewer resources and shorter windows

For each backend, Den runs as ``runhouse den serve --port P --db URL`` in a process of its own (exactly what
an administrator starts: uvicorn as ``den serve`` sets it up, no access log, to a log file here), its users
are written straight into the database (below), and the client is runhouse's own
:class:`~runhouse.rns.den_client.DenClient` (httpx), one per thread. PostgreSQL is a throwaway cluster in a
temporary folder on a free loopback port, started as the integration tests start it (``initdb`` + ``pg_ctl``
as the ``postgres`` user when root, ``fsync=off``); it is skipped, with a note, when its binaries are missing.

Before anything is measured, each database gets the scale of a busy team's Den, written straight into its
tables in bulk (SQLAlchemy Core ``executemany``, seconds, not 100,000 HTTP requests): 1,000 users (each with
a token) and 100,000 resources with one version each, 100 under each other user's ``/<user>/fns``, each of
those folders shared (read) with the bench user.

What is measured, per backend:

1. save latency p50/p99: 1,000 distinct resources, each a small function-like config (~400 bytes), saved
   one after the other (each save creates the resource: version 1);
2. load latency p50/p99: the same 1,000 loaded back in a shuffled order (and checked equal to what was saved);
   then loads of resources others shared with the bench user (the ACL check: a share on a folder above);
3. a folder listing of 1,000 entries (``GET /v1/folders/bench/fns``, the JSON API), p50/p99; and the web
   UI's folder page through ``bench/_den_pages.py`` when that file is there;
4. throughput of 32 client threads for 5 s doing loads, then 90% loads / 10% saves (a save is a new version
   of a random one of the 1,000), with the count of failed requests and the latency under load;
5. for scale: ``GET /health`` on Den (no token; one small SELECT), and the same client against a bare
   uvicorn app answering ``/health`` (the floor of client + HTTP on loopback).

``RH_CONFIG_DIR`` points to a new temporary folder, and every process started here (Den servers, the bare
uvicorn, PostgreSQL) is stopped in ``finally`` blocks. Figures are printed, never asserted; the final table
shows each one beside its target (load p50 < 3 ms, folder of 1,000 < 20 ms, 32 clients with zero errors)
and beside the figures before the Speed II work (issue 20: this script run against the Den of 24c1e26).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import _common as C  # noqa: E402

if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))
from tests.support.postgres import PostgresServer, postgres_bin, postgres_unavailable  # noqa: E402

USER = "bench"
LOAD_P50_TARGET_MS = 3.0
FOLDER_P50_TARGET_MS = 20.0
# The figures before the Speed II work (issue 20): this script, at this scale, run against the Den of 24c1e26
# on the 2-core machine (2026-12-02, a loaded machine: the httpx floor was 1.16 ms), as (sqlite, postgres).
BEFORE: dict[str, tuple[float, float]] = {
    "save_p50": (4.92, 7.21), "save_p99": (20.0, 22.4), "load_p50": (2.63, 3.23), "load_p99": (7.55, 12.2),
    "shared_p50": (3.63, 6.43), "folder_p50": (22.9, 42.6), "folder_p99": (59.2, 79.1), "load_cpu": (1.53, 1.90),
    "tput_load": (437, 336), "err_load": (0, 0), "tput_load_p50": (65.5, 75.8), "tput_mixed": (286, 325),
    "err_mixed": (0, 0), "tput_mixed_p99": (281, 245), "health_p50": (3.14, 3.51),
}
MAX_ERRORS_PER_THREAD = 1000  # a thread that fails this often stops (the server is likely gone)


@dataclass(frozen=True)
class Config:
    resources: int = 1000  # saved, loaded and listed by the bench user (one folder)
    warmup: int = 50
    threads: int = 32
    seconds: float = 5.0
    save_share: float = 0.10  # of the mixed run
    health_calls: int = 1000
    users: int = 1000  # in the database, the bench user included
    scale_resources: int = 100_000  # in the database in all, the bench user's included
    folder_lists: int = 100

    @classmethod
    def quick(cls) -> Config:
        return cls(resources=100, warmup=10, threads=32, seconds=1.0, health_calls=200, users=20,
                   scale_resources=2000, folder_lists=20)

    @property
    def per_user(self) -> int:
        """Resources under each other user's folder, so the database holds ``scale_resources`` or a few more."""
        return -(-(self.scale_resources - self.resources) // max(1, self.users - 1))


# --- results ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    unit: str  # "ms", "calls/s" or "errors"
    target: str = "-"
    check: Callable[[float], bool] | None = None
    values: dict[str, float] = field(default_factory=dict)


class Results:
    BACKENDS = ("sqlite", "postgres")

    def __init__(self, cfg: Config) -> None:
        n, t = cfg.resources, cfg.threads
        self.rows: dict[str, Row] = {
            "save_p50": Row(f"save p50 ({n:,} new resources)", "ms"),
            "save_p99": Row("save p99", "ms"),
            "load_p50": Row(f"load p50 ({n:,} resources)", "ms", f"< {LOAD_P50_TARGET_MS:g} ms",
                            lambda v: v < LOAD_P50_TARGET_MS),
            "load_p99": Row("load p99", "ms"),
            "shared_p50": Row(f"load p50, shared with the caller ({n:,})", "ms", f"< {LOAD_P50_TARGET_MS:g} ms",
                              lambda v: v < LOAD_P50_TARGET_MS),
            "folder_p50": Row(f"folder listing p50 ({n:,} entries, JSON API)", "ms",
                              f"< {FOLDER_P50_TARGET_MS:g} ms", lambda v: v < FOLDER_P50_TARGET_MS),
            "folder_p99": Row("folder listing p99", "ms"),
            "load_cpu": Row("Den server CPU per load (user + system)", "ms"),
            "tput_load": Row(f"loads/s, {t} client threads", "calls/s"),
            "err_load": Row(f"failed requests, {t} threads, loads", "errors", "0", lambda v: v == 0),
            "tput_load_p50": Row(f"latency p50 under load, {t} threads", "ms"),
            "tput_mixed": Row(f"requests/s, {t} threads, 90% load / 10% save", "calls/s"),
            "err_mixed": Row(f"failed requests, {t} threads, mixed", "errors", "0", lambda v: v == 0),
            "tput_mixed_p99": Row(f"latency p99 under mixed load, {t} threads", "ms"),
            "health_p50": Row("GET /health p50 (no token, one SELECT)", "ms"),
        }
        self.floor: list[tuple[str, str]] = []
        self.failures: list[str] = []
        self.notes: list[str] = []

    def put(self, backend: str, key: str, value: float) -> None:
        row = self.rows[key]
        row.values[backend] = value
        verdict = "" if row.check is None else f"   target {row.target}: {'ok' if row.check(value) else 'MISS'}"
        if row.check is not None and row.unit == "ms":
            verdict += f" ({value / float(row.target.split()[1]):.2f}x the target)"
        before = BEFORE.get(key)
        if before is not None:
            old = before[self.BACKENDS.index(backend)]
            verdict += f"   before: {fmt(old, row.unit)}" + (f" ({value / old:.2f}x)" if old else "")
        print(f"  {row.label:<48} {fmt(value, row.unit):>14}{verdict}", flush=True)

    def table(self) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=None if sys.stdout.isatty() else 132)
        table = Table(title="Den: figures vs targets and before (client: DenClient in another process)",
                      show_lines=False)
        table.add_column("metric")
        for backend in self.BACKENDS:
            table.add_column(backend, justify="right")
            table.add_column("before", justify="right")
        table.add_column("target", justify="right")
        table.add_column("met", justify="center")
        for key, row in self.rows.items():
            before = BEFORE.get(key)
            cells = [cell for i, b in enumerate(self.BACKENDS) for cell in
                     (fmt(row.values.get(b), row.unit), fmt(before[i], row.unit) if before else "-")]
            if row.check is None:
                met = "-"
            else:
                verdicts = [("[green]yes[/green]" if row.check(row.values[b]) else "[red]no[/red]")
                            for b in self.BACKENDS if b in row.values]
                met = " / ".join(verdicts) or "n/a"
            table.add_row(row.label, *cells, row.target, met)
        console.print(table)
        console.print("before: this script against the Den of 24c1e26 (before issue 20), same scale")
        for label, value in self.floor:
            console.print(f"floor: {label}: {value}")
        for note in self.notes:
            console.print(f"note: {note}")
        if self.failures:
            console.print(f"[red]sections that failed: {', '.join(self.failures)}[/red]")


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        digits = 3 if value < 1 else 2 if value < 10 else 1 if value < 100 else 0
        return f"{value:.{digits}f} ms"
    if unit == "errors":
        return f"{value:,.0f}"
    return f"{value:,.0f} {unit}"




# --- what is saved ---------------------------------------------------------------------------------------
def address(i: int, owner: str = USER) -> str:
    return f"/{owner}/fns/fn_{i:05d}"


def function_config(i: int, revision: int = 0, owner: str = USER) -> dict[str, Any]:
    """A small config shaped like a deployed function's (``Function.config()``): about 400 bytes as JSON."""
    return {
        "name": address(i, owner),
        "resource_type": "function",
        "resource_subtype": "Function",
        "remote_name": f"fn_{i:05d}",
        "env": {"name": "base", "reqs": ["numpy", "pandas"], "env_vars": {"BENCH": "1"}},
        "system": f"/{owner}/clusters/gpu-{i % 4}",
        "code": {"module": "bench_funcs", "qualname": f"fn_{i:05d}", "root": f"/home/{owner}/project",
                 "code_hash": f"{i:064x}"},
        "info": {"revision": revision},
    }


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) process ``pid`` has used so far, from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# --- Den server ------------------------------------------------------------------------------------------
def populate(url: str, cfg: Config) -> tuple[str, list[str]]:
    """The database at Den's scale, written straight into its tables in bulk: the bench user (as ``runhouse
    den user add`` makes it) and ``cfg.users - 1`` others with a token each, and ``cfg.per_user`` resources
    (version 1) under each other user's ``/<user>/fns``, that folder shared (read) with the bench user.

    Returns the bench user's token and the addresses of the others' resources.
    """
    from sqlalchemy import insert, select

    from runhouse.den import auth
    from runhouse.den.db import Database, Owner, Resource, ResourceVersion, Share, Token, User, owner_key, utcnow

    with Database(url) as database:
        database.migrate()
        token = database.run(lambda session: auth.add_user(session, USER))
        names = [f"user{i:04d}" for i in range(cfg.users - 1)]
        now = utcnow()
        with database.engine.begin() as conn:
            bench_id = conn.scalar(select(User.id).where(User.name == USER))
            if not names:
                return token, []
            conn.execute(insert(Owner), [{"key": owner_key(name), "name": name, "kind": "user"} for name in names])
            conn.execute(insert(User), [{"name": name, "email": None, "created_at": now} for name in names])
            ids = {name: id_ for name, id_ in conn.execute(select(User.name, User.id).where(User.name != USER))}
            conn.execute(insert(Token), [{"user_id": ids[name], "token_hash": auth.hash_token(auth.new_token()),
                                          "created_at": now} for name in names])
            owned = [(name, j) for name in names for j in range(cfg.per_user)]
            conn.execute(insert(Resource), [
                {"address": address(j, name), "owner": name, "resource_type": "function", "public": False,
                 "current_version": 1, "created_at": now, "updated_at": now} for name, j in owned])
            resource_ids = {where: id_ for where, id_ in conn.execute(select(Resource.address, Resource.id))}
            conn.execute(insert(ResourceVersion), [
                {"resource_id": resource_ids[address(j, name)], "version": 1, "author": name, "created_at": now,
                 "config": function_config(j, owner=name)} for name, j in owned])
            conn.execute(insert(Share), [{"address": f"/{name}/fns", "user_id": bench_id, "access_level": "read",
                                          "granted_by": name, "created_at": now} for name in names])
    return token, [address(j, name) for name, j in owned]


def start_den(procs: C.Processes, url: str, name: str) -> tuple[subprocess.Popen, int]:
    """``runhouse den serve --port P --db URL`` in a process of its own; returns it once /health answers."""
    port = C.free_port()
    argv = [sys.executable, "-m", "runhouse.cli", "den", "serve", "--port", str(port), "--db", url]
    with open(procs.log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    procs.procs.append(proc)  # stopped by procs.stop / stop_all
    ready = C.wait_until(lambda: C.http_health(port), proc, f"Den ({name})", timeout=60)
    print(f"  Den pid {proc.pid} on 127.0.0.1:{port}, ready in {ready:.2f} s; log {procs.log_dir / f'{name}.log'}")
    return proc, port


# --- concurrent load -------------------------------------------------------------------------------------
@dataclass
class LoadRun:
    calls: int
    seconds: float
    errors: Counter
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def line(self, threads: int) -> str:
        errors = sum(self.errors.values())
        kinds = f" ({', '.join(f'{k}: {v}' for k, v in self.errors.most_common())})" if errors else ""
        return (f"  {threads} threads, {self.seconds:.1f} s: {self.rate:,.0f} requests/s, {errors} failed{kinds}\n"
                f"  latency under load: {C.lat_summary(self.latencies)}")


def concurrent(make_client: Callable[[], Any], op: Callable[[Any, random.Random], object], threads: int,
               seconds: float, close: Callable[[Any], None] = lambda c: None) -> LoadRun:
    """``threads`` threads, each with its own client, calling ``op(client, rng)`` as fast as they can.

    Unlike ``_common.throughput``, a failed request is counted (by error type) and the thread goes on, so
    the error count is the number of failed requests in the window. Each thread makes one untimed call to
    open its connection before all start together; each runs ``seconds`` from there (on a loaded machine
    the warm-up calls of 32 threads can take longer than a short window).
    """
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    lats: list[list[float]] = [[] for _ in range(threads)]
    errors: list[Counter] = [Counter() for _ in range(threads)]
    starts = [0.0] * threads
    ends = [0.0] * threads

    def run(index: int) -> None:
        rng = random.Random(index)
        client = None
        try:
            client = make_client()
            op(client, rng)
        except Exception as exc:  # noqa: BLE001 - counted, reported by the caller
            errors[index][f"warm-up {type(exc).__name__}"] += 1
        try:
            barrier.wait()
            clock = time.perf_counter
            starts[index] = clock()
            deadline = starts[index] + seconds
            done = failed = 0
            mine = lats[index]
            while clock() < deadline and failed < MAX_ERRORS_PER_THREAD:
                t0 = clock()
                try:
                    op(client, rng)
                    done += 1
                    mine.append(clock() - t0)
                except Exception as exc:  # noqa: BLE001
                    errors[index][type(exc).__name__] += 1
                    failed += 1
            counts[index] = done
            ends[index] = clock()
        finally:
            if client is not None:
                close(client)

    pool = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    for t in pool:
        t.join(seconds + 120)
    elapsed = max(ends) - min(starts) if any(ends) else seconds
    return LoadRun(sum(counts), elapsed, sum(errors, Counter()), [x for per in lats for x in per])


# --- one backend -----------------------------------------------------------------------------------------
def bench_backend(backend: str, url: str, cfg: Config, R: Results, procs: C.Processes) -> None:
    from runhouse.rns.den_client import DenClient

    t0 = time.perf_counter()
    token, shared = populate(url, cfg)
    print(f"  database {url}: {cfg.users:,} users and {len(shared):,} resources shared with {USER!r} written in "
          f"{time.perf_counter() - t0:.1f} s (bulk inserts); {cfg.resources:,} more are saved below")
    proc, port = start_den(procs, url, f"den-{backend}")
    den_url = f"http://{C.HOST}:{port}"
    client = DenClient(den_url, token)
    try:
        n = cfg.resources
        configs = [function_config(i) for i in range(n)]
        for i in range(cfg.warmup):  # untimed, at addresses outside the 1,000
            warm = f"/{USER}/warmup/w{i}"
            client.put(warm, function_config(i))
            client.get(warm)

        print(f"-- save: {n:,} distinct new resources, one after the other")
        clock = time.perf_counter
        saves = [0.0] * n
        for i in range(n):
            t = clock()
            client.put(address(i), configs[i])
            saves[i] = clock() - t
        print(f"  {C.lat_summary(saves)}")
        R.put(backend, "save_p50", C.median(saves) * 1e3)
        R.put(backend, "save_p99", C.percentile(saves, 99) * 1e3)

        print(f"-- load: the same {n:,}, shuffled")
        order = list(range(n))
        random.Random(7).shuffle(order)
        loads, wrong = [0.0] * n, 0
        cpu0 = cpu_seconds(proc.pid)
        for k, i in enumerate(order):
            t = clock()
            got = client.get(address(i))
            loads[k] = clock() - t
            wrong += got["config"] != configs[i]
        print(f"  {C.lat_summary(loads)}" + (f"; {wrong} configs differ from what was saved!" if wrong else
                                          "; every config came back as saved"))
        R.put(backend, "load_p50", C.median(loads) * 1e3)
        R.put(backend, "load_p99", C.percentile(loads, 99) * 1e3)
        cpu1 = cpu_seconds(proc.pid)
        if cpu0 is not None and cpu1 is not None:
            R.put(backend, "load_cpu", (cpu1 - cpu0) / n * 1e3)

        if shared:
            picked = random.Random(11).sample(shared, min(n, len(shared)))
            print(f"-- load: {len(picked):,} of the {len(shared):,} resources other users shared with {USER!r}")
            loads, wrong = [0.0] * len(picked), 0
            for k, where in enumerate(picked):
                t = clock()
                got = client.get(where)
                loads[k] = clock() - t
                wrong += got["config"]["name"] != where
            print(f"  {C.lat_summary(loads)}" + (f"; {wrong} configs are not the ones asked for!" if wrong else ""))
            R.put(backend, "shared_p50", C.median(loads) * 1e3)

        folder = f"/{USER}/fns"
        print(f"-- folder listing: {folder} ({n:,} entries), {cfg.folder_lists} times (JSON API)")
        listed = len(client.folder(folder)["entries"])
        lat = C.latencies(lambda: client.folder(folder), cfg.folder_lists, 3)
        print(f"  {C.lat_summary(lat)}" + ("" if listed == n else f"; {listed:,} entries listed, not {n:,}!"))
        R.put(backend, "folder_p50", C.median(lat) * 1e3)
        R.put(backend, "folder_p99", C.percentile(lat, 99) * 1e3)
        bench_pages(backend, den_url, token, folder, R)

        def make_client() -> DenClient:
            return DenClient(den_url, token)

        def load(c: DenClient, rng: random.Random) -> object:
            return c.get(address(rng.randrange(n)))

        def mixed(c: DenClient, rng: random.Random) -> object:
            i = rng.randrange(n)
            if rng.random() < cfg.save_share:
                return c.put(address(i), function_config(i, revision=rng.randrange(1 << 30)))
            return c.get(address(i))

        print(f"-- {cfg.threads} client threads (a DenClient each), {cfg.seconds:g} s of loads")
        run = concurrent(make_client, load, cfg.threads, cfg.seconds, DenClient.close)
        print(run.line(cfg.threads))
        R.put(backend, "tput_load", run.rate)
        R.put(backend, "err_load", sum(run.errors.values()))
        if run.latencies:
            R.put(backend, "tput_load_p50", C.median(run.latencies) * 1e3)

        share = round(cfg.save_share * 100)
        print(f"-- {cfg.threads} client threads, {cfg.seconds:g} s of {100 - share}% loads / {share}% saves "
              "(a save is a new version of a random one)")
        run = concurrent(make_client, mixed, cfg.threads, cfg.seconds, DenClient.close)
        print(run.line(cfg.threads))
        R.put(backend, "tput_mixed", run.rate)
        R.put(backend, "err_mixed", sum(run.errors.values()))
        if run.latencies:
            R.put(backend, "tput_mixed_p99", C.percentile(run.latencies, 99) * 1e3)

        print(f"-- for scale: GET /health, {cfg.health_calls} sequential (no token; FastAPI + one SELECT)")
        http = client._http
        lat = C.latencies(lambda: http.get("/health").raise_for_status(), cfg.health_calls, cfg.warmup)
        print(f"  {C.lat_summary(lat)}")
        R.put(backend, "health_p50", C.median(lat) * 1e3)
        if proc.poll() is not None:
            raise RuntimeError(f"Den exited with code {proc.returncode} during the bench")
    finally:
        client.close()
        procs.stop(proc)


def bench_pages(backend: str, den_url: str, token: str, folder: str, R: Results) -> None:
    """The web UI's pages, measured by ``bench/_den_pages.py`` (the UI's own bench) where that file exists."""
    if not (BENCH_DIR / "_den_pages.py").exists():
        R.notes.append("bench/_den_pages.py is not there: the web UI's folder page was not measured")
        return
    import _den_pages

    print(f"-- web UI pages (bench/_den_pages.py): {folder}")
    _den_pages.bench(backend, den_url, token, folder, R)


def bench_floor(cfg: Config, R: Results, procs: C.Processes) -> None:
    """httpx (the client DenClient uses) against a bare uvicorn app: client + HTTP on loopback, no Den."""
    import httpx

    port = C.free_port()
    proc = procs.spawn(f"serve_uvicorn({port})", "uvicorn")
    try:
        C.wait_until(lambda: C.http_health(port), proc, "the bare uvicorn server")
        base = f"http://{C.HOST}:{port}"
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {'x' * 46}"})
        try:
            lat = C.latencies(lambda: client.get("/health").raise_for_status(), cfg.health_calls, cfg.warmup)
        finally:
            client.close()
        print(f"  httpx GET /health, sequential: {C.lat_summary(lat)}")

        def make_client() -> httpx.Client:
            return httpx.Client(base_url=base)

        run = concurrent(make_client, lambda c, _rng: c.get("/health").raise_for_status(), cfg.threads,
                         min(cfg.seconds, 3.0), httpx.Client.close)
        print(run.line(cfg.threads))
        R.floor.append(("httpx -> bare uvicorn, sequential p50", f"{C.median(lat) * 1e3:.3f} ms"))
        R.floor.append((f"httpx -> bare uvicorn, {cfg.threads} threads",
                        f"{run.rate:,.0f} requests/s ({sum(run.errors.values())} failed)"))
    finally:
        procs.stop(proc)


# --- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer resources, shorter windows")
    parser.add_argument("--keep-state", action="store_true",
                        help="keep the temporary folder (databases, Den logs) instead of deleting it")
    parser.add_argument("--only", choices=Results.BACKENDS, help="run one backend only")
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()

    state = C.new_state("rh-bench-den-")  # before runhouse is imported
    import runhouse as rh

    print(C.run_header(rh.__version__, args.quick))
    print(f"state in {state}")
    R = Results(cfg)
    procs = C.Processes(state / "logs")
    postgres: PostgresServer | None = None
    began = time.perf_counter()
    try:
        if args.only in (None, "sqlite"):
            url = f"sqlite:///{state / 'den.sqlite'}"
            C.section(R.failures, "sqlite: Den on SQLite (WAL, synchronous=NORMAL)",
                    lambda: bench_backend("sqlite", url, cfg, R, procs))
        if args.only in (None, "postgres"):
            why = postgres_unavailable()
            if why is not None:
                print(f"\n== postgres: skipped: {why}")
                R.notes.append(f"PostgreSQL skipped: {why}")
            else:
                def run_postgres() -> None:
                    nonlocal postgres
                    t0 = time.perf_counter()
                    postgres = PostgresServer(postgres_bin())  # type: ignore[arg-type]
                    postgres.start()
                    pg_url = postgres.new_database("den_bench")
                    print(f"  PostgreSQL ({postgres.bin_dir}) on 127.0.0.1:{postgres.port}, started in "
                          f"{time.perf_counter() - t0:.1f} s (fsync and synchronous_commit off)")
                    R.notes.append("PostgreSQL runs with fsync=off, synchronous_commit=off (as in the tests): "
                                   "commits do not wait for the disk")
                    bench_backend("postgres", pg_url, cfg, R, procs)

                title = "postgres: Den on PostgreSQL (fsync=off, synchronous_commit=off, as in the tests)"
                C.section(R.failures, title, run_postgres)
        C.section(R.failures, "floor: DenClient's HTTP client (httpx) against a bare uvicorn app",
                lambda: bench_floor(cfg, R, procs))
    finally:
        procs.stop_all()
        if postgres is not None:
            postgres.stop()
        C.drop_state(state, args.keep_state)
    return C.finish(began, R)


if __name__ == "__main__":
    sys.exit(main())
