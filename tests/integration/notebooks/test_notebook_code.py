"""Code written in notebook cells, run in a real Jupyter kernel (nbclient) against a daemon started here.

Functions and classes defined in cells go by value (cloudpickle) with the imports and globals of earlier
cells; redefining one and sending it again deploys the new code; a named one saved from the notebook loads by
name in another process, and code that cannot be rebuilt (another Python or cloudpickle, a missing module)
fails with a SerializationError saying why, on the client and in the worker; ``stream_logs`` output reaches
the cell while the call runs; ``rh.login`` with a token never prompts. One kernel and one daemon serve the
module (the cells of all tests share the kernel's state, as one notebook would).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
from nbclient.exceptions import CellExecutionError

import runhouse as rh
from runhouse import serialization
from runhouse.errors import SerializationError
from runhouse.protocol import DEFAULT_ENV, Op
from tests.conftest import running_daemon
from tests.integration.den.conftest import sqlite_den_in
from tests.integration.notebooks.kernel import Kernel, running_kernel, stream_text

SUBPROCESS_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def box(config_dir: Path) -> Iterator[rh.Cluster]:
    with running_daemon("nb") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory, box: rh.Cluster) -> Iterator[Kernel]:
    """The kernel, in a git project of its own, with ``rh``, ``pytest`` and ``box`` (the daemon) defined."""
    project = tmp_path_factory.mktemp("nbproject")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    with running_kernel(tmp_path_factory.mktemp("jupyter"), project) as started:
        started.run(f"import pytest\nimport runhouse as rh\nbox = rh.cluster(name='nb', host='localhost', "
                    f"server_port={box.server_port})")
        yield started


def test_a_function_from_a_cell_uses_the_imports_and_globals_of_earlier_cells(kernel: Kernel) -> None:
    kernel.run(
        "import math\nSCALE = 3\n\ndef offset(x):\n    return x + 1",
        textwrap.dedent("""\
            def area(r):
                return round(SCALE * math.pi * r * r + offset(0), 6)

            remote_area = rh.function(area, serialize_notebook_fn=True).to(box)
            assert remote_area.code_spec["pickled"]
            assert remote_area(2) == area(2) == round(12 * math.pi + 1, 6)
            assert remote_area.map([1, 2, 3]) == [area(1), area(2), area(3)]
            """),
    )


def test_values_of_classes_from_cells_and_async_functions_round_trip(kernel: Kernel) -> None:
    kernel.run(textwrap.dedent("""        import asyncio
        from dataclasses import dataclass

        @dataclass
        class Point:
            x: int
            y: int

        async def shift(p, dx):
            await asyncio.sleep(0)
            return Point(p.x + dx, p.y)

        moved = await rh.function(shift).to(box)(Point(1, 2), 3)  # top-level await, as in a notebook
        assert isinstance(moved, Point) and moved == Point(4, 2)
        """))


def test_a_class_from_a_cell_makes_stateful_instances(kernel: Kernel) -> None:
    kernel.run(textwrap.dedent("""\
        import collections

        class Tally:
            def __init__(self, start=0):
                self.count = start
                self.seen = collections.Counter()

            def add(self, word, by=1):
                self.count += by
                self.seen[word] += 1
                return self.count

        tally = rh.module(Tally).to(box)(start=5, name="nb-tally")
        assert tally.add("a") == 6
        assert tally.add("b", by=4) == 10
        assert tally.add("a") == 11
        assert tally.count == 11 and tally.seen == collections.Counter(a=2, b=1)
        assert rh.module(Tally).to(box).remote_name == "Tally"

        class Scaler(rh.Module):
            def __init__(self, k):
                self.k = k

            def scale(self, x):
                return self.k * x

        scaler = Scaler(3).to(box, name="nb-scaler")
        assert scaler.scale(5) == 15
        scaler.k = 4
        assert scaler.scale(5) == 20
        """))


def test_redefining_a_function_in_a_cell_deploys_the_new_code(kernel: Kernel) -> None:
    send = "g = rh.function(greet).to(box)\nassert g('a') == {0!r}\nassert g.map(['a', 'b']) == [{0!r}, {1!r}]"
    kernel.run(
        "GREETING = 'hi'\n\ndef greet(name):\n    return f'v1 {GREETING} {name}'",
        send.format("v1 hi a", "v1 hi b"),
        "def greet(name):\n    return f'v2 {GREETING} {name}'",
        send.format("v2 hi a", "v2 hi b"),
        # Only a global it uses changed: the function goes with the new value.
        "GREETING = 'yo'\ng = rh.function(greet).to(box)\nassert g.map(['a', 'b']) == ['v2 yo a', 'v2 yo b']",
    )


def test_stream_logs_reach_the_cell_while_the_call_runs(kernel: Kernel, tmp_path: Path) -> None:
    # The call waits for a file that the test creates only once the cell has shown the call's first line:
    # had the output arrived only at the end, the call would report that it was never released.
    release = tmp_path / "release"

    def on_stream(text: str) -> None:
        if "first line" in text:
            release.touch()

    notebook = kernel.run(
        textwrap.dedent(f"""\
            import os, time

            def slow(path):
                print("first line", flush=True)
                deadline = time.monotonic() + 30
                while not os.path.exists(path):
                    if time.monotonic() > deadline:
                        return "never released"
                    time.sleep(0.01)
                print("second line")
                return "released"

            print("result:", rh.function(slow).to(box)({str(release)!r}, stream_logs=True))
            """),
        on_stream=on_stream,
    )
    printed = stream_text(notebook.cells[0])
    assert "(slow) first line" in printed and "(slow) second line" in printed
    assert printed.index("first line") < printed.index("second line") < printed.index("result: released")


def test_interrupting_the_cell_cancels_the_remote_call(kernel: Kernel) -> None:
    # The notebook's stop button (SIGINT to the kernel), pressed once the call has started on the cluster.
    def on_stream(text: str) -> None:
        if "started" in text:
            kernel.interrupt()

    with pytest.raises(CellExecutionError, match="KeyboardInterrupt"):
        kernel.run(
            "import time\n\ndef sleeper():\n    print('started', flush=True)\n    for _ in range(6000):\n"
            "        time.sleep(0.01)\n\n"
            "rh.function(sleeper).to(box)()",
            on_stream=on_stream,
        )
    kernel.run(textwrap.dedent("""\
        deadline = time.monotonic() + 30  # the daemon sees the closed connection, then stops the call
        while box.runs(name="sleeper")[0]["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [run["status"] for run in box.runs(name="sleeper")] == ["cancelled"], box.runs(name="sleeper")
        """))


def test_a_saved_notebook_function_loads_by_name_in_another_process(kernel: Kernel, box: rh.Cluster) -> None:
    kernel.run(textwrap.dedent("""\
        FACTOR = 3

        def triple(x):
            return FACTOR * x

        rh.function(triple, name="~/nb_triple").to(box).save()
        """))
    script = textwrap.dedent("""\
        import runhouse as rh
        loaded = rh.function(name="~/nb_triple")
        print(loaded(4), loaded.fn(5), loaded.to(loaded.system)(6))
        """)
    assert _python(script, kernel.project).split() == ["12", "15", "18"]


def test_a_saved_function_from_another_python_fails_to_rebuild_saying_why(kernel: Kernel) -> None:
    kernel.run("def quadruple(x):\n    return 4 * x\n\nrh.function(quadruple, name='~/nb_quadruple').to(box).save()")
    saved = kernel.project / "rh" / "nb_quadruple" / "config.json"
    config = json.loads(saved.read_text())
    config["code"]["python"] = "3.9"  # as a notebook on Python 3.9 would have saved it
    saved.write_text(json.dumps(config))
    script = textwrap.dedent("""\
        import runhouse as rh
        loaded = rh.function(name="~/nb_quadruple")
        print(loaded(2))  # the deployed copy still answers: calling it needs no rebuilding
        try:
            loaded.fn
        except rh.errors.SerializationError as error:
            print(type(error).__name__, error)
        """)
    out = _python(script, kernel.project)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert out.startswith("8\nSerializationError cannot rebuild 'quadruple'")
    assert f"python 3.9 (here {here})" in out and "same versions" in out


def test_the_worker_refuses_code_from_another_python_or_cloudpickle(box: rh.Cluster) -> None:
    # What a client on another Python or cloudpickle sends: the worker checks before unpickling anything.
    payload = cloudpickle.dumps(lambda: 1)
    spec = {"module": "__main__", "qualname": "<lambda>", "pickled": True, **serialization.code_versions()}
    for key, other in (("python", "3.9"), ("cloudpickle", "2.2.1")):
        meta = {"name": "nb_old", "env": DEFAULT_ENV, "kind": "function", "spec": {**spec, key: other},
                "version": key}
        with pytest.raises(SerializationError, match=rf"cannot rebuild 'nb_old'.*{key} {other} \(here "):
            box._control(Op.DEPLOY, meta, [payload])
    meta = {"name": "nb_old", "env": DEFAULT_ENV, "kind": "function", "spec": spec, "version": "same"}
    box._control(Op.DEPLOY, meta, [payload])
    assert box.get("nb_old")() == 1


def test_code_needing_a_module_missing_on_the_cluster_fails_saying_which(
    box: rh.Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nb_helpers_only_here.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import nb_helpers_only_here  # type: ignore[import-not-found]

    def uses_helper() -> int:
        return nb_helpers_only_here.VALUE

    uses_helper.__module__ = "__main__"  # as if written in a notebook cell: sent by value
    with pytest.raises(SerializationError, match="module 'nb_helpers_only_here', which cannot be imported"):
        rh.function(uses_helper).to(box)
    sys.modules.pop("nb_helpers_only_here")


def test_login_with_a_token_in_a_notebook_never_prompts(kernel: Kernel, tmp_path: Path) -> None:
    # nbclient's kernel takes no input: any prompt would fail the cell instead of answering.
    with sqlite_den_in(tmp_path) as den:
        user = den.user("nb")
        try:
            kernel.run(
                f"assert rh.login(token={user.token!r}, den_url={den.url!r}) == {user.name!r}\n"
                f"assert rh.configs.get('username') == {user.name!r}",
                "rh.logout()\n"
                f"with pytest.raises(rh.errors.ConfigError, match='token=...'):\n    rh.login(den_url={den.url!r})",
            )
        finally:
            kernel.run("rh.logout()\nrh.configs.set('den_url', None)")


def test_login_without_a_token_asks_in_the_page_when_it_takes_input(kernel: Kernel, tmp_path: Path) -> None:
    # As in JupyterLab or Colab: the token in a password box, then the yes/no questions (all answered no).
    with sqlite_den_in(tmp_path) as den:
        user = den.user("nb")
        try:
            prompts = kernel.run_answering(
                f"assert rh.login(den_url={den.url!r}) == {user.name!r}",
                lambda prompt, password: user.token if password else "n",
            )
        finally:
            kernel.run("rh.logout()\nrh.configs.set('den_url', None)")
    assert prompts[0] == ("Den token: ", True)
    assert len(prompts) > 1 and not any(password for _, password in prompts[1:])


def test_a_failing_cell_shows_the_remote_error(kernel: Kernel) -> None:
    with pytest.raises(CellExecutionError, match="ZeroDivisionError"):
        kernel.run("def broken(x):\n    return x / 0\n\nrh.function(broken).to(box)(1)")


def _python(script: str, cwd: Path) -> str:
    """Run ``script`` in a plain Python process in ``cwd`` (the kernel's project); its stdout."""
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=dict(os.environ), capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return done.stdout
