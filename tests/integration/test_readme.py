"""Every ```python and ```bash block of README.md, run in order as a reader pastes them, against real servers:
so the README cannot drift from what runhouse does.

The Python blocks run in one interpreter (later blocks use names from earlier ones, like ``remote_add``), the
bash blocks through ``bash`` with ``set -euo pipefail``, all with the reader's machine made up in a temporary
folder: ``HOME`` and ``RH_CONFIG_DIR`` of their own, a fresh git repository (with a small ``data/`` folder) as
the current folder, the venv's ``bin`` first on ``PATH`` so ``runhouse`` is this build. The servers are real:
the blocks start this machine's daemon (``rh.here``) and Den themselves, and the loopback sshd of
tests/support/sshd.py stands for the machine of the SSH blocks. Each test runs its block after every earlier
one (each once), so one block can be run alone (``-k L123``).

Rewriting, all of it: the README's ports 32300 (daemon) and 32400 (Den) become free ports (the daemon's also
in ``RH_SERVER_PORT``); the rest is declared by a marker before the block (``<!-- readme-test: ... -->``:
``skip "reason"``, ``ssh IP``, ``background "COMMAND" PORT``; see tests/support/readme.py). ``AWS_*`` env
vars hold made-up values for the secrets block. Skipped blocks are pytest skips with the marker's reason
(``pytest -rs`` lists them). A failure names the README lines and shows the end of the block's output.
At the end every server is stopped: the daemons (``runhouse stop --port``), Den (its process), the sshd.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import readme

BLOCKS = readme.parse(readme.README.read_text())

# A block runs after every earlier one that has not run yet, so the first test run may run several blocks.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[readme.ReadmeSession]:
    session = readme.ReadmeSession(tmp_path_factory.mktemp("readme"), BLOCKS)
    try:
        yield session
    finally:
        session.close()


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[block.id for block in BLOCKS])
def test_readme_block_runs_as_written(reader: readme.ReadmeSession, index: int) -> None:
    reason = BLOCKS[index].skip_reason
    if reason is not None:
        pytest.skip(f"{BLOCKS[index].id}: {reason}")
    reader.run(index)


def test_markers_are_parsed_and_checked(tmp_path: Path) -> None:
    text = "\n".join([
        "<!-- readme-test: skip \"needs a cloud account\" -->",
        "```python",
        "x = 1",
        "```",
        "```text",
        "not run",
        "```",
        "<!-- readme-test: ssh 10.0.0.5 -->",
        "```bash",
        "echo hi",
        "```",
    ])
    first, second = readme.parse(text)
    assert (first.id, first.skip_reason, first.code) == ("README:L2-4-python", "needs a cloud account", "x = 1\n")
    assert (second.id, second.marker) == ("README:L9-11-bash", readme.Marker("ssh", ("10.0.0.5",)))
    for bad in ("<!-- readme-test: skip -->\n```python\n```", "<!-- readme-test: teleport -->\n```bash\n```",
                "<!-- readme-test: skip \"x\" -->\ntext\n```bash\n```"):
        with pytest.raises(ValueError, match="README line 1"):
            readme.parse(bad)


def test_a_failing_block_names_its_lines_and_shows_its_output(tmp_path: Path) -> None:
    text = "# title\n\n```bash\necho before\nfalse\necho after\n```\n\n```python\nx = 1\nprint('hello')\n1 / 0\n```\n"
    session = readme.ReadmeSession(tmp_path, readme.parse(text))
    try:
        with pytest.raises(readme.BlockFailed) as bash_failure:
            session.run(0)
        with pytest.raises(readme.BlockFailed) as python_failure:
            session.run(1)
    finally:
        session.close()
    bash_message = str(bash_failure.value)
    assert "README:L3-7-bash (README.md lines 4-6) failed: bash exited with code 1" in bash_message
    bash_output = bash_message.split("--- its output")[1]
    assert "before" in bash_output and "README.md line 5 failed" in bash_output and "after" not in bash_output
    python_message = str(python_failure.value)
    assert "README:L9-13-python (README.md lines 10-12) failed: ZeroDivisionError" in python_message
    assert "hello" in python_message and 'File "README.md", line 12' in python_message
    assert "earlier blocks failed too: README:L3-7-bash" in python_message


def test_a_marker_that_does_not_fit_its_block_fails_it(tmp_path: Path) -> None:
    text = '<!-- readme-test: ssh 10.0.0.9 -->\n```python\ngpu = rh.cluster(ips=["10.0.0.5"])\n```\n'
    session = readme.ReadmeSession(tmp_path, readme.parse(text))
    try:
        with pytest.raises(readme.BlockFailed, match='the ssh marker\'s block has no "10.0.0.9"'):
            session.run(0)
    finally:
        session.close()
