"""A real Jupyter kernel running this checkout's Python, driven by nbclient, for notebook tests.

The kernel runs ``.venv``'s interpreter (a kernelspec of our own in a temporary folder, never the machine's
``python3`` kernel, which may point at another Python), in a project folder of its own, with the test
session's ``RH_CONFIG_DIR`` (so it reads the daemon's token like the tests do).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

KERNEL_NAME = "rh-test-python"
CELL_TIMEOUT_S = 90  # one cell (a test's deploys and calls); below the per-test timeout


class _Client(NotebookClient):
    """nbclient's client, also handing every ``stream`` output to ``on_stream`` the moment it arrives."""

    on_stream: Callable[[str], None] | None = None

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        if msg["msg_type"] == "stream" and self.on_stream is not None:
            self.on_stream(msg["content"]["text"])
        return super().process_message(msg, cell, cell_index)


class Kernel:
    """One kernel; :meth:`run` executes a notebook of cells in it (state carries over, as in one notebook)."""

    def __init__(self, client: _Client, project: Path) -> None:
        self.client, self.project = client, project

    def run(self, *cells: str, on_stream: Callable[[str], None] | None = None) -> nbformat.NotebookNode:
        """Execute ``cells`` as a new ``.ipynb`` (written to the project folder, then run); returns the
        executed notebook. A failing cell raises nbclient's CellExecutionError with its traceback."""
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
        nbformat.write(notebook, self.project / "test.ipynb")
        self.client.nb = nbformat.read(self.project / "test.ipynb", as_version=4)
        self.client.reset_execution_trackers()
        self.client.on_stream = on_stream
        try:
            for index, cell in enumerate(self.client.nb.cells):
                self.client.execute_cell(cell, index)
        finally:
            self.client.on_stream = None
        return self.client.nb


    def interrupt(self) -> None:
        """What a notebook's stop button does: SIGINT to the kernel (ipykernel's interrupt mode)."""
        process = self.client.km.provisioner.process  # type: ignore[union-attr]
        process.send_signal(signal.SIGINT)

    def run_answering(self, code: str, answer: Callable[[str, bool], str]) -> list[tuple[str, bool]]:
        """Execute ``code`` as a page that takes input does (JupyterLab, Colab): every prompt (its text, and
        whether it is a password box) is answered with ``answer(prompt, password)``. Returns the prompts, in
        order; raises AssertionError with the traceback when the code failed."""
        return run_sync(self._run_answering)(code, answer)

    async def _run_answering(self, code: str, answer: Callable[[str, bool], str]) -> list[tuple[str, bool]]:
        kc = self.client.kc
        assert kc is not None
        msg_id = kc.execute(code, allow_stdin=True)
        prompts: list[tuple[str, bool]] = []
        reply = asyncio.ensure_future(kc.get_shell_msg(timeout=CELL_TIMEOUT_S))
        while True:
            request = asyncio.ensure_future(kc.get_stdin_msg(timeout=CELL_TIMEOUT_S))
            await asyncio.wait([reply, request], return_when=asyncio.FIRST_COMPLETED)
            if reply.done():
                request.cancel()
                break
            content = request.result()["content"]
            prompts.append((content["prompt"], content["password"]))
            kc.input(answer(content["prompt"], content["password"]))
        content = reply.result()
        assert content["parent_header"]["msg_id"] == msg_id
        assert content["content"]["status"] == "ok", "\n".join(content["content"].get("traceback", []))
        return prompts


def stream_text(cell: Any) -> str:
    """Everything a cell printed (its stream outputs, in order)."""
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


@contextlib.contextmanager
def running_kernel(folder: Path, project: Path) -> Iterator[Kernel]:
    """A kernel of ``.venv``'s Python (kernelspec under ``folder``) started in ``project``; shut down on exit."""
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "rh", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(folder / "kernels")])
    manager = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    client = _Client(nbformat.v4.new_notebook(), km=manager, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME)
    with client.setup_kernel(cleanup_kc=True, env=dict(os.environ), cwd=str(project)):
        yield Kernel(client, project)
