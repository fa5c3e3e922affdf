"""Cold start of an env with ``reqs=["numpy"]`` to its first result, beside Ray's ``runtime_env={"pip": ["numpy"]}``.

Run from the repository root::

    .venv/bin/python bench/coldstart.py            # about a minute on 2 cores
    .venv/bin/python bench/coldstart.py --runs 1   # smoke run

Both with warm package caches and no environment made before:

- runhouse: a daemon of its own (``RH_CONFIG_DIR`` in a new temporary folder); each run creates an env named
  for it with ``reqs=["numpy"]`` (its virtual environment deleted before the run), deploys a function that
  imports numpy into it and calls it: the clock runs from ``rh.env(...).to(cluster)`` to the result. uv's
  cache is warmed by one untimed run first.
- Ray: each run is a new ``ray.init`` (2 CPUs, no dashboard) in a subprocess with a temporary folder of its
  own (so no runtime env is cached), timing ``ray.get`` of a task with ``runtime_env={"pip": ["numpy"]}``
  from its submission; one untimed run first warms pip's cache. Ray's pip runtime env needs the
  ``virtualenv`` package: when the Ray driver cannot import it, that part is skipped with a note (pass
  ``--ray-path DIR`` to put a folder holding it, e.g. from ``uv pip install --target DIR virtualenv``, on the
  Ray driver's ``PYTHONPATH``).

Printed: each run, the medians, and runhouse / Ray (target: <= 0.5x).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import _common as C  # noqa: E402

TARGET_RATIO = 0.5
RAY_TIMEOUT_S = 600
RAY_START_ATTEMPTS = 3

_RAY_DRIVER = textwrap.dedent("""
    import json, sys, time
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=sys.argv[1], logging_level="ERROR",
             log_to_driver=False)

    @ray.remote(runtime_env={"pip": ["numpy"]})
    def total(n):
        import numpy as np
        return int(np.arange(n).sum())

    t0 = time.perf_counter()
    result = ray.get(total.remote(10))
    print(json.dumps({"seconds": time.perf_counter() - t0, "result": result}))
    ray.shutdown()
""")


def numpy_total(n: int) -> int:
    import numpy as np

    return int(np.arange(n).sum())


def ray_run(extra_path: str | None) -> float:
    """Seconds from submitting a pip-runtime-env task to its result, in a Ray of its own (started again when it
    does not come up: on a loaded machine Ray's node agent can miss the raylet's start deadline)."""
    for attempt in range(RAY_START_ATTEMPTS):
        try:
            return _ray_once(extra_path)
        except RayDidNotStart as exc:
            print(f"  (Ray did not start, attempt {attempt + 1} of {RAY_START_ATTEMPTS}: {exc})", flush=True)
    raise RuntimeError(f"Ray did not start in {RAY_START_ATTEMPTS} attempts")


class RayDidNotStart(Exception):
    pass


def _ray_once(extra_path: str | None) -> float:
    temp = tempfile.mkdtemp(prefix="rh-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    environ = dict(os.environ)
    if extra_path:
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, environ.get("PYTHONPATH")]))
    driver = subprocess.Popen([sys.executable, "-c", _RAY_DRIVER, temp], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=environ, start_new_session=True)
    try:
        stdout, stderr = driver.communicate(timeout=RAY_TIMEOUT_S)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if "timed out during startup" in stderr:
            raise RayDidNotStart(stderr.strip().splitlines()[-1])
        if driver.returncode != 0 or not lines:
            raise RuntimeError(f"the Ray driver failed ({driver.returncode}): {stderr[-2000:]}")
        answer = json.loads(lines[-1])
        assert answer["result"] == 45, answer
        return float(answer["seconds"])
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever of this Ray is left: only its own group
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        shutil.rmtree(temp, ignore_errors=True)


def ray_has_virtualenv(extra_path: str | None) -> bool:
    environ = dict(os.environ)
    if extra_path:
        environ["PYTHONPATH"] = extra_path
    return subprocess.run([sys.executable, "-c", "import virtualenv"], env=environ,
                          capture_output=True).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each (after one untimed warm-up)")
    parser.add_argument("--ray-path", default=None, help="a folder with virtualenv for the Ray driver's path")
    parser.add_argument("--keep-state", action="store_true", help="keep the temporary RH_CONFIG_DIR")
    args = parser.parse_args(argv)
    state = C.new_state("rh-bench-cold-")  # before runhouse is imported
    import runhouse as rh
    from runhouse.paths import envs_dir
    from runhouse.resources.clusters import local_daemon as daemon

    print(C.run_header(rh.__version__, args.runs < 3))
    began = time.perf_counter()
    port = C.free_port()
    ours: list[float] = []
    theirs: list[float] = []
    try:
        daemon.start(port)
        cluster = rh.cluster(name="bench-cold", host="localhost", server_port=port)
        print(f"\n== runhouse: env with reqs=['numpy'] to first result ({args.runs} runs after a warm-up)")
        for i in range(args.runs + 1):
            shutil.rmtree(envs_dir(), ignore_errors=True)
            t0 = time.perf_counter()
            env = rh.env(reqs=["numpy"], name=f"np_{i}").to(cluster)
            result = rh.function(numpy_total, name=f"numpy_total_{i}").to(cluster, env=env)(10)
            seconds = time.perf_counter() - t0
            assert result == 45, result
            print(f"  {'warm-up' if i == 0 else f'run {i}'}: {seconds:.3f} s", flush=True)
            if i:
                ours.append(seconds)
        daemon.stop(port)
        if ray_has_virtualenv(args.ray_path):
            print(f"\n== Ray: task with runtime_env={{'pip': ['numpy']}} to result, a new Ray each run "
                  f"({args.runs} runs after a warm-up)")
            for i in range(args.runs + 1):
                seconds = ray_run(args.ray_path)
                print(f"  {'warm-up' if i == 0 else f'run {i}'}: {seconds:.3f} s", flush=True)
                if i:
                    theirs.append(seconds)
        else:
            print("\n== Ray skipped: its pip runtime env needs virtualenv (uv pip install --target DIR "
                  "virtualenv, then --ray-path DIR)")
    finally:
        daemon.stop(port)
        C.drop_state(state, args.keep_state)
    print(f"\nbench took {time.perf_counter() - began:.1f} s\n")
    print("| figure | runhouse | Ray | ratio | target |\n|---|---|---|---|---|")
    mine = C.median(ours)
    if theirs:
        ray_median = C.median(theirs)
        print(f"| cold env with numpy to first result, median | {mine:.3f} s | {ray_median:.3f} s | "
              f"{mine / ray_median:.2f}x | <= {TARGET_RATIO}x |")
    else:
        print(f"| cold env with numpy to first result, median | {mine:.3f} s | skipped | | <= {TARGET_RATIO}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
