"""How fast folders and tables move, next to plain rsync and plain pyarrow.parquet in the same run.

Run from the repository root (``make bench`` does)::

    .venv/bin/python bench/data.py           # a few minutes on 2 cores
    .venv/bin/python bench/data.py --quick   # smoke run: 100 small files, a 64 MiB file, 2M rows

``RH_CONFIG_DIR`` points to a new temporary folder; a daemon of its own runs on a free port, and the loopback
sshd of the SSH tests (``tests/integration/ssh/conftest.py``) is started when ``/usr/sbin/sshd`` exists.
Everything started here is stopped at the end. Figures are printed, never asserted. MB = 10^6 bytes.

What is measured, for a folder of 1,000 small files (4 KiB) and for one 1 GiB file:

1. laptop -> cluster (``folder.to(cluster, path)``) and cluster -> laptop (``.to("here", path)``), MB/s, on
   a) a daemon on this machine (shares the disk: a local copy), b) the same daemon reached only through
   calls (``DaemonSystem(shared_disk=False)``: what a remote daemon without SSH gets), c) the sshd cluster
   (rsync over the cluster's SSH connection);
   baselines: ``rsync -a`` between two local folders (for a, b) and rsync over the same SSH connection (c).
2. table write and read, rows/s: ``rh.table(data=batches).write()`` / ``.fetch()`` / ``.stream()`` on this
   machine, beside ``pyarrow.parquet.ParquetWriter`` / ``read_table`` on the same batches.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))

import _common as C  # noqa: E402

GIB = 1 << 30


@dataclass(frozen=True)
class Config:
    small_files: int = 1000
    small_size: int = 4096
    big_size: int = GIB
    table_rows: int = 10_000_000

    @classmethod
    def quick(cls) -> Config:
        return cls(small_files=100, big_size=64 * C.MIB, table_rows=2_000_000)


@dataclass
class Results:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # what, ours, baseline, ratio
    failures: list[str] = field(default_factory=list)

    def add(self, what: str, ours: float, baseline: float, unit: str) -> None:
        ratio = f"{ours / baseline:.2f}x" if baseline else "-"
        self.rows.append((what, f"{ours:,.0f} {unit}", f"{baseline:,.0f} {unit}", ratio))
        print(f"  {what}: ours {ours:,.0f} {unit}, baseline {baseline:,.0f} {unit} ({ratio})", flush=True)

    def table(self) -> None:
        width = max([len(r[0]) for r in self.rows] + [10])
        print(f"{'what':<{width}}  {'ours':>16}  {'baseline':>16}  ratio")
        for what, ours, base, ratio in self.rows:
            print(f"{what:<{width}}  {ours:>16}  {base:>16}  {ratio}")
        if self.failures:
            print(f"\nfailed sections: {', '.join(self.failures)}")


def make_trees(root: Path, cfg: Config) -> dict[str, tuple[Path, int]]:
    """The two source folders: many small files, and one big file; name -> (path, bytes)."""
    small = root / "small"
    small.mkdir(parents=True)
    for i in range(cfg.small_files):
        (small / f"d{i % 10}").mkdir(exist_ok=True)
        (small / f"d{i % 10}" / f"f{i:05d}.bin").write_bytes(os.urandom(cfg.small_size))
    big = root / "big"
    big.mkdir()
    with open(big / "one.bin", "wb") as f:
        block = os.urandom(16 * C.MIB)
        for _ in range(cfg.big_size // len(block)):
            f.write(block)
    return {"small": (small, cfg.small_files * cfg.small_size), "big": (big, cfg.big_size)}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_moves(
    rh: Any, label: str, system: Any, remote_root: str, trees: dict[str, tuple[Path, int]], work: Path,
    baseline: Callable[[str, str, bool], None], R: Results,
) -> None:
    """Laptop -> system -> laptop for each tree, beside ``baseline(source, destination, upload)``."""
    for name, (source, nbytes) in trees.items():
        remote = f"{remote_root}/{label}-{name}"
        up = timed(lambda: rh.folder(path=str(source)).to(system, path=remote, progress=False))  # noqa: B023
        back_path = work / f"{label}-{name}-back"
        there = rh.folder(path=remote, system=system)
        down = timed(lambda: there.to("here", path=str(back_path), progress=False))  # noqa: B023
        base_up = timed(lambda: baseline(f"{source}/", f"{remote}-rsync/", True))  # noqa: B023
        base_down = timed(lambda: baseline(f"{remote}-rsync/", f"{back_path}-rsync/", False))  # noqa: B023
        R.add(f"{label} {name} laptop->cluster MB/s", C.mb_per_s(nbytes, up), C.mb_per_s(nbytes, base_up), "MB/s")
        R.add(f"{label} {name} cluster->laptop MB/s", C.mb_per_s(nbytes, down), C.mb_per_s(nbytes, base_down),
              "MB/s")
        there.rm()
        shutil.rmtree(back_path, ignore_errors=True)


def local_rsync(source: str, destination: str, upload: bool) -> None:
    subprocess.run(["rsync", "-a", source, destination], check=True, timeout=3600)


def generated_batches(rows: int, batch_rows: int = 100_000) -> Iterator[Any]:
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    for start in range(0, rows, batch_rows):
        n = min(batch_rows, rows - start)
        yield pa.record_batch({"id": np.arange(start, start + n), "x": rng.random(n), "y": rng.integers(0, 1000, n)})


def bench_table(rh: Any, cfg: Config, work: Path, R: Results) -> None:
    import pyarrow.parquet as pq

    batches = list(generated_batches(cfg.table_rows))
    ours_path, plain_path = work / "table-ours", work / "table-plain"
    table = rh.table(data=iter(batches), path=str(ours_path))
    write = timed(table.write)

    def plain_write() -> None:
        plain_path.mkdir()
        with pq.ParquetWriter(plain_path / "part-00000.parquet", batches[0].schema) as writer:
            for batch in batches:
                writer.write_batch(batch)

    base_write = timed(plain_write)
    read = timed(table.fetch)
    base_read = timed(lambda: pq.read_table(plain_path))
    stream = timed(lambda: sum(b.num_rows for b in table.stream(batch_size=100_000)))
    base_stream = timed(
        lambda: sum(b.num_rows for b in pq.ParquetFile(plain_path / "part-00000.parquet").iter_batches(100_000))
    )
    rows = cfg.table_rows
    R.add("table write rows/s", rows / write, rows / base_write, "rows/s")
    R.add("table fetch rows/s", rows / read, rows / base_read, "rows/s")
    R.add("table stream rows/s", rows / stream, rows / base_stream, "rows/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller trees and tables (smoke run)")
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick or os.environ.get("RH_BENCH_QUICK") else Config()
    state = C.new_state("rh-bench-data-")  # before runhouse is imported

    import runhouse as rh
    from runhouse.resources.clusters import local_daemon as daemon
    from runhouse.resources.data.daemon import DaemonSystem

    print(C.run_header(rh.__version__, cfg != Config()))
    R = Results()
    port = C.free_port()
    sshd = None
    began = time.perf_counter()
    try:
        trees = make_trees(state / "src", cfg)
        work = state / "work"
        work.mkdir()
        daemon.start(port)
        box = rh.cluster(name="bench", host="localhost", server_port=port)
        on_daemon = str(state / "cluster")
        C.section(R.failures, "1a. local daemon (shared disk) vs local rsync",
                  lambda: bench_moves(rh, "daemon-shared", box, on_daemon, trees, work, local_rsync, R))
        C.section(R.failures, "1b. daemon through calls vs local rsync",
                  lambda: bench_moves(rh, "daemon-calls", DaemonSystem(box, shared_disk=False), on_daemon, trees,
                                      work, local_rsync, R))
        sshd, ssh_box = start_ssh_cluster(rh, state)
        if ssh_box is not None:
            conn = ssh_box.ssh_connection

            def ssh_rsync(source: str, destination: str, upload: bool) -> None:
                conn.rsync(source, destination, upload=upload, timeout=3600)

            C.section(R.failures, "1c. SSH cluster (rsync over its connection) vs plain rsync over SSH",
                      lambda: bench_moves(rh, "ssh", ssh_box, "bench", trees, work, ssh_rsync, R))
        C.section(R.failures, f"2. table of {cfg.table_rows:,} rows vs pyarrow.parquet",
                  lambda: bench_table(rh, cfg, work, R))
    finally:
        daemon.stop(port)
        if sshd is not None:
            sshd.kill()
        C.drop_state(state, keep=False)
    return C.finish(began, R)


def start_ssh_cluster(rh: Any, state: Path) -> tuple[Any, Any]:
    """The loopback sshd of the SSH tests and a cluster on it, or (None, None) when sshd is not installed."""
    from tests.integration.ssh.conftest import SSHD, SSHServer

    if not SSHD.exists():
        print("\n(no /usr/sbin/sshd: the SSH cluster is skipped)")
        return None, None
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    root = state / "sshd"
    root.mkdir()
    server = SSHServer(root)
    server.start()
    creds = {
        "ssh_user": server.user,
        "ssh_private_key": str(server.private_key),
        "ssh_port": server.port,
        "known_hosts": str(server.known_hosts_with_key()),
    }
    return server, rh.cluster(name="bench_ssh", ips=[server.host], ssh_creds=creds)


if __name__ == "__main__":
    sys.exit(main())
