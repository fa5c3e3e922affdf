"""Run README.md's code blocks the way a reader pastes them: the ```python blocks in one Python interpreter
(names carry over from block to block), the ```bash blocks through bash, all in one isolated environment.

A marker, an HTML comment on the line right before a block's opening fence, changes how that block runs:

- ``<!-- readme-test: skip "why" -->``: not run; the test is reported as skipped with the reason (required).
- ``<!-- readme-test: ssh 10.0.0.5 -->``: the block's machine at 10.0.0.5 is the loopback sshd the harness
  provides: the quoted ``"10.0.0.5"`` becomes the sshd's address, the ``"ssh_user"`` value its user, the
  ``ssh_creds={`` dict gets the sshd's ``"ssh_port"`` and the cluster a free ``server_port=`` (its daemon
  shares this machine's 127.0.0.1 with the others). The key the block names (``~/.ssh/id_ed25519``) is the
  sshd's client key, installed there in the isolated home with the sshd's host key in ``~/.ssh/known_hosts``.
- ``<!-- readme-test: background "runhouse den serve" 32400 -->``: the block's lines starting with that
  command run in the background (output in ``background.log``), and the block goes on once port 32400
  (rewritten like every port, below) accepts connections.

Besides what a marker declares, the one rewrite is of ports: the README's literal 32300 (the daemon) and
32400 (Den) become free ports (the daemon's also in ``RH_SERVER_PORT``), so that nothing collides with a
daemon or Den already running on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support.sshd import SSHD, SSHServer, free_port_on

README = Path(__file__).resolve().parents[2] / "README.md"
DAEMON_PORT, DEN_PORT = 32300, 32400
BLOCK_TIMEOUT_S = 110.0
STOP_TIMEOUT_S = 15.0
OUTPUT_TAIL_LINES = 40

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
_MARKER_KINDS = {"skip": 1, "ssh": 1, "background": 2}


# ------------------------------------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class Marker:
    """A ``<!-- readme-test: KIND ARGS -->`` comment; ARGS are shell words (quote a reason with spaces)."""

    kind: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, the README lines of its fences, its code and its marker."""

    lang: str
    start: int  # line of the opening fence (1-based)
    end: int  # line of the closing fence
    code: str
    marker: Marker | None

    @property
    def id(self) -> str:
        return f"README:L{self.start}-{self.end}-{self.lang}"

    @property
    def skip_reason(self) -> str | None:
        return self.marker.args[0] if self.marker is not None and self.marker.kind == "skip" else None


def parse(text: str, runnable: tuple[str, ...] = ("python", "bash")) -> list[Block]:
    """The fenced blocks of ``text`` in ``runnable`` languages, in order. A malformed marker (unknown kind,
    wrong number of arguments, a skip without a reason, no block after it) is a ``ValueError`` naming its line."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: tuple[int, Marker] | None = None
    i = 0
    while i < len(lines):
        marker = _MARKER.match(lines[i])
        if marker:
            pending = (i + 1, _parse_marker(marker.group(1), i + 1))
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if not fence:
            if pending is not None and lines[i].strip():
                raise ValueError(f"README line {pending[0]}: a readme-test marker must come right before a block")
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"README line {i + 1}: the block is never closed")
        if fence.group(1) in runnable:
            code = "\n".join(lines[i + 1:end]) + "\n"
            blocks.append(Block(fence.group(1), i + 1, end + 1, code, pending[1] if pending else None))
        elif pending is not None:
            raise ValueError(f"README line {pending[0]}: a readme-test marker before a {fence.group(1)!r} block")
        pending = None
        i = end + 1
    return blocks


def _parse_marker(text: str, line: int) -> Marker:
    words = shlex.split(text)
    if not words or words[0] not in _MARKER_KINDS:
        raise ValueError(f"README line {line}: unknown readme-test marker {text!r}; kinds: {', '.join(_MARKER_KINDS)}")
    kind, args = words[0], tuple(words[1:])
    if len(args) != _MARKER_KINDS[kind] or not all(arg.strip() for arg in args):
        raise ValueError(f"README line {line}: readme-test {kind} takes {_MARKER_KINDS[kind]} argument(s), got {args}")
    return Marker(kind, args)


# ------------------------------------------------------------------------------------------------ running


class BlockFailed(AssertionError):
    """A README block failed; the message names its lines and shows the end of its output."""


_DRIVER = r'''
import ast, json, linecache, os, sys, traceback, types

replies = os.fdopen(os.dup(1), "w", buffering=1)
requests = os.fdopen(os.dup(0), "r")
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # like a script without a terminal: input() gets EOF
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.dup2(log, 1)
os.dup2(log, 2)
sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)
main = types.ModuleType("__main__")
main.__dict__["__builtins__"] = __builtins__
sys.modules["__main__"] = main
for request in requests:
    block = json.loads(request)
    source = "\n" * block["first_line"] + block["code"]  # line numbers in tracebacks are README's own
    linecache.cache["README.md"] = (len(source), None, source.splitlines(True), "README.md")
    try:
        for statement in ast.parse(source, "README.md").body:  # like a REPL: expressions show their value
            exec(compile(ast.Interactive(body=[statement]), "README.md", "single"), main.__dict__)
        reply = {"ok": True}
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # from the README's line on
        reply = {"ok": False, "error": "".join(traceback.format_exception_only(type(exc), exc)).strip()}
    sys.stdout.flush()
    sys.stderr.flush()
    replies.write(json.dumps(reply) + "\n")
'''

_BASH_PRELUDE = r"""set -euo pipefail
trap 'echo "README.md line $LINENO failed (exit $?): $BASH_COMMAND" >&2' ERR
readme_background() {  # run "$@" in the background, then wait for port $README_WAIT_PORT
  "$@" >>"$README_ROOT/background.log" 2>&1 &
  local pid=$!
  echo "$pid" >>"$README_ROOT/background.pids"
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$README_WAIT_PORT") 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "background command exited:" >&2; cat "$README_ROOT/background.log" >&2; return 1
    fi
    sleep 0.1
  done
  echo "nothing listens on port $README_WAIT_PORT after 30 s" >&2; return 1
}
"""


class MarkerMismatch(ValueError):
    """A block's marker declares a rewrite the block gives no place for."""


@dataclass
class Outcome:
    ok: bool
    message: str = ""


@dataclass
class ReadmeSession:
    """The reader's machine: an isolated home and config folder, a fresh git repository as their project
    (with a small ``data/`` folder), free ports for the daemon and Den, and, when a block asks, a loopback sshd.

    :meth:`run` runs a block after every earlier one (each once); :meth:`close` stops everything started.
    """

    root: Path
    blocks: list[Block]
    daemon_port: int = field(default_factory=lambda: free_port_on())
    den_port: int = field(default_factory=lambda: free_port_on())
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    _python: subprocess.Popen[str] | None = None
    _sshd: SSHServer | None = None
    _ssh_daemon_port: int | None = None

    def __post_init__(self) -> None:
        self.home = self.root / "home"
        self.project = self.root / "project"
        self.config_dir = self.home / ".rh"
        for folder in (self.home, self.project / "data"):
            folder.mkdir(parents=True)
        (self.project / "data" / "notes.txt").write_text("a file to move around\n")
        subprocess.run(["git", "init", "-q", str(self.project)], check=True, timeout=30)
        self.env = self._environment()
        self._python_log = self.root / "python.log"

    def _environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("RH_", "AWS_"))}
        # Package caches stay where they are: installing an env's reqs need not download them again.
        caches = {"UV_CACHE_DIR": Path.home() / ".cache" / "uv", "PIP_CACHE_DIR": Path.home() / ".cache" / "pip"}
        env.update({key: str(path) for key, path in caches.items() if path.is_dir() and key not in env})
        env.update(
            HOME=str(self.home),
            RH_CONFIG_DIR=str(self.config_dir),
            RH_SERVER_PORT=str(self.daemon_port),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            README_ROOT=str(self.root),
            # What `Secrets.put("aws", from_env=True)` reads: made-up values, never a real account.
            AWS_ACCESS_KEY_ID="AKIAREADMEEXAMPLE",
            AWS_SECRET_ACCESS_KEY="readme-example-secret",
            PYTHONUNBUFFERED="1",
        )
        return env

    # --- blocks ----------------------------------------------------------------------------------------------

    def run(self, index: int) -> None:
        """Run block ``index`` (after any earlier block not run yet); raise :class:`BlockFailed` if it failed."""
        __tracebackhide__ = True
        for earlier in range(index + 1):
            if earlier not in self.outcomes:
                self.outcomes[earlier] = self._run_one(self.blocks[earlier])
        outcome = self.outcomes[index]
        if not outcome.ok:
            failed_before = [self.blocks[i].id for i in range(index) if not self.outcomes[i].ok]
            note = f"\n(earlier blocks failed too: {', '.join(failed_before)})" if failed_before else ""
            raise BlockFailed(outcome.message + note)

    def _run_one(self, block: Block) -> Outcome:
        if block.skip_reason is not None:
            return Outcome(True)
        try:
            code = self._rewrite(block)
        except MarkerMismatch as exc:
            return Outcome(False, f"{block.id}: {exc}")
        log = self.root / f"L{block.start}.log"
        try:
            ok, error = (self._run_python if block.lang == "python" else self._run_bash)(block, code, log)
        except subprocess.TimeoutExpired:
            ok, error = False, f"still running after {BLOCK_TIMEOUT_S:.0f} s"
        if ok:
            return Outcome(True)
        tail = log.read_text(errors="replace").splitlines()[-OUTPUT_TAIL_LINES:] if log.exists() else []
        output = "\n".join(tail) or "(no output)"
        return Outcome(False, f"{block.id} (README.md lines {block.start + 1}-{block.end - 1}) failed: {error}\n"
                              f"--- the block as run ---\n{code}--- its output (last {OUTPUT_TAIL_LINES} lines) "
                              f"---\n{output}")

    def _rewrite(self, block: Block) -> str:
        code = re.sub(rf"\b{DAEMON_PORT}\b", str(self.daemon_port), block.code)
        code = re.sub(rf"\b{DEN_PORT}\b", str(self.den_port), code)
        marker = block.marker
        if marker is not None and marker.kind == "ssh":
            code = self._point_at_sshd(code, marker.args[0])
        if marker is not None and marker.kind == "background":
            command, port = marker.args
            port = {str(DAEMON_PORT): str(self.daemon_port), str(DEN_PORT): str(self.den_port)}.get(port, port)
            if not any(line.startswith(command) for line in code.splitlines()):
                raise MarkerMismatch(f"the background marker's block has no line starting with {command!r}")
            code = "\n".join(
                f"README_WAIT_PORT={port} readme_background {line}" if line.startswith(command) else line
                for line in code.splitlines()
            ) + "\n"
        return code

    def _point_at_sshd(self, code: str, example_ip: str) -> str:
        for needed in (f'"{example_ip}"', '"ssh_user": "', "ssh_creds={"):
            if needed not in code:
                raise MarkerMismatch(f"the ssh marker's block has no {needed}: nothing to point at the sshd")
        sshd = self.sshd()
        if self._ssh_daemon_port is None:
            self._ssh_daemon_port = free_port_on()
        code = code.replace(f'"{example_ip}"', f'"{sshd.host}"')
        code = re.sub(r'"ssh_user": "[^"]*"', f'"ssh_user": "{sshd.user}"', code)
        creds = f'server_port={self._ssh_daemon_port}, ssh_creds={{"ssh_port": {sshd.port}, '
        return code.replace("ssh_creds={", creds)

    def _run_python(self, block: Block, code: str, log: Path) -> tuple[bool, str]:
        python = self._interpreter()
        assert python.stdin is not None and python.stdout is not None
        offset = self._python_log.stat().st_size
        try:
            python.stdin.write(json.dumps({"first_line": block.start, "code": code}) + "\n")
            python.stdin.flush()
            with selectors.DefaultSelector() as selector:
                selector.register(python.stdout, selectors.EVENT_READ)
                if not selector.select(timeout=BLOCK_TIMEOUT_S):
                    self._stop_python()
                    raise subprocess.TimeoutExpired("python", BLOCK_TIMEOUT_S)
            reply = python.stdout.readline()
        finally:
            with self._python_log.open("rb") as all_output:  # this block's share of the interpreter's output
                all_output.seek(offset)
                log.write_bytes(all_output.read())
        if not reply:
            self._python = None
            return False, f"the interpreter exited (code {python.wait(timeout=STOP_TIMEOUT_S)})"
        answer = json.loads(reply)
        return answer["ok"], answer.get("error", "")

    def _interpreter(self) -> subprocess.Popen[str]:
        if self._python is None:
            driver = self.root / "driver.py"
            driver.write_text(_DRIVER)
            self._python_log.touch()
            self._python = subprocess.Popen(
                [sys.executable, str(driver), str(self._python_log)], cwd=self.project, env=self.env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
            )
        return self._python

    def _run_bash(self, block: Block, code: str, log: Path) -> tuple[bool, str]:
        prelude = self.root / "prelude.sh"
        prelude.write_text(_BASH_PRELUDE)
        # One line of set-up, then blank lines, so that the code's first line is line start + 1, as in the README.
        script = f"source {shlex.quote(str(prelude))}" + "\n" * block.start + code
        with log.open("wb") as out:
            done = subprocess.run(["bash", "-c", script], cwd=self.project, env=self.env, stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=BLOCK_TIMEOUT_S, check=False)
        return done.returncode == 0, f"bash exited with code {done.returncode}"

    # --- servers ---------------------------------------------------------------------------------------------

    def sshd(self) -> SSHServer:
        """The loopback sshd standing for the README's machine, its key and host key in the reader's ~/.ssh."""
        if self._sshd is None:
            if not SSHD.exists():
                raise BlockFailed(f"{SSHD} not found: install the OpenSSH server (apt-get install openssh-server)")
            if os.geteuid() == 0:
                Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
            (self.root / "sshd").mkdir()
            server = SSHServer(self.root / "sshd")
            server.start()
            self._sshd = server
            ssh = self.home / ".ssh"
            ssh.mkdir(mode=0o700, exist_ok=True)
            shutil.copy(server.private_key, ssh / "id_ed25519")
            (ssh / "id_ed25519").chmod(0o600)
            (ssh / "known_hosts").write_text(server.known_hosts_line + "\n")
        return self._sshd

    def close(self) -> None:
        """Stop every server the README's blocks started: both daemons, Den, the sshd, the interpreter."""
        subprocess.run([sys.executable, "-m", "runhouse.cli", "stop", "--port", str(self.daemon_port)],
                       cwd=self.project, env=self.env, capture_output=True, timeout=STOP_TIMEOUT_S * 2, check=False)
        self._stop_python()
        pids = self.root / "background.pids"
        background = [int(pid) for pid in pids.read_text().split()] if pids.exists() else []
        _kill([*background, *_listening(self.den_port)])
        if self._sshd is not None:
            self._stop_ssh_daemon()
            home = str(self._sshd.home)  # whatever is left of the host's daemon and workers
            _kill([proc.pid for proc in _processes() if any(home in part for part in _cmdline(proc))])
            self._sshd.kill()

    def _stop_ssh_daemon(self) -> None:
        """``runhouse stop`` on the SSH host's daemon, as the host runs it (its venv, home and config folder)."""
        assert self._sshd is not None
        home = self._sshd.home
        env = {**self.env, "HOME": str(home), "RH_CONFIG_DIR": str(home / ".rh")}
        for python in (home / ".rh" / "venvs").glob("*/bin/python"):
            subprocess.run([str(python), "-m", "runhouse.cli", "stop", "--port", str(self._ssh_daemon_port)],
                           cwd=home, env=env, capture_output=True, timeout=STOP_TIMEOUT_S * 2, check=False)

    def _stop_python(self) -> None:
        if self._python is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._python.pid, signal.SIGKILL)
            self._python.wait(timeout=STOP_TIMEOUT_S)
            self._python = None


def _processes() -> list[psutil.Process]:
    return list(psutil.process_iter())


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _listening(port: int) -> list[int]:
    """The processes listening on ``port`` of this machine."""
    return [conn.pid for conn in psutil.net_connections("tcp")
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid]


def _kill(pids: list[int]) -> None:
    """Terminate ``pids`` and their children; kill what is left after a few seconds."""
    family: list[psutil.Process] = []
    for pid in set(pids):
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(pid)
            family += [*parent.children(recursive=True), parent]
    for proc in family:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(family, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(p.is_running() for p in alive):
        time.sleep(0.05)


