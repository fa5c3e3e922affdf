"""``ssh <cluster name>`` in a plain terminal: Host entries for runhouse's clusters in an ssh_config include file.

Runhouse owns one file, ``~/.ssh/runhouse/config`` (0600, in a 0700 folder), and adds one line to the user's
``~/.ssh/config`` (created 0600 when missing) so ssh reads it: ``Include ~/.ssh/runhouse/config``, at the top
(an Include below a ``Host`` line would apply to that host only). Nothing else of the user's file changes: it is
rewritten only to add that line, byte for byte otherwise (where it really lives, when it is a symlink). An
alias the user's own ``~/.ssh/config`` already names is left to the user.

A cluster's entry carries what runhouse's own connection uses (HostName, User, Port, IdentityFile,
ProxyCommand, the known_hosts file its host keys are checked against, StrictHostKeyChecking yes), so ``ssh
NAME`` reaches the same machine as the same user and trusts the same host key. The other nodes of a
multi-node cluster are ``NAME-1``, ``NAME-2``, ... (their index in ``ips``), unless another cluster is named so.

Aliases are letters, digits, ``-`` and ``_``, starting with a letter, digit or ``_`` (no dots: an alias like
``github.com`` would redirect ssh for that host). Values are written so ssh reads them back exactly: quoted when
they hold spaces or quote-like characters, ``%`` doubled where ssh expands %-tokens; a value that cannot be
written safely (a newline, ``"``, a backslash, ``${``) is refused, never written.

Every change is a read-modify-write under an exclusive lock (``~/.ssh/runhouse/config.lock``) with atomic
replaces, so bring-ups in several processes at once lose no entry and add one Include line. The home folder is
read at each call (``os.path.expanduser("~")``). ``RH_SSH_CONFIG=0`` turns all of this off.

Example::

    write_host("gpu", SSHCredentials("10.0.0.5", user="ubuntu", private_key="~/.ssh/id_ed25519"))
    # $ ssh gpu
    remove_host("gpu")
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import re
import shlex
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from runhouse.errors import ConfigError, InvalidNameError, RunhouseError
from runhouse.paths import write_atomic
from runhouse.transport.ssh.connection import SSHConnection, SSHCredentials

ENABLE_VARIABLE = "RH_SSH_CONFIG"
MAX_ALIAS_LENGTH = 63
_ALIAS = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_-]{{0,{MAX_ALIAS_LENGTH - 1}}}")
_RESERVED_ALIASES = frozenset({"localhost"})
# Written as they are; anything else is double-quoted (ssh splits on spaces, '=' and quotes, comments at '#').
_PLAIN = re.compile(r"[A-Za-z0-9_./:@+,%-]+")
_OWNER = "# runhouse cluster: "
_HEADER = (
    "# Written by runhouse: one entry per cluster brought up on this machine, so `ssh <cluster name>` works.\n"
    "# Entries are rewritten at each bring-up and removed at teardown: edits here are lost.\n"
)
_HOST_LINE = re.compile(r"Host\s+(\S+)\s*")
_KEYWORD_LINE = re.compile(rb"\s*(host|include)(?:\s*=\s*|\s+)(.*)", re.IGNORECASE)

_log = logging.getLogger(__name__)
_noticed: set[str] = set()


def enabled() -> bool:
    """Whether runhouse writes ssh host entries (``RH_SSH_CONFIG=0``, ``false``, ``no`` or ``off``: it does not)."""
    return os.environ.get(ENABLE_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def ssh_dir() -> Path:
    """The ``.ssh`` folder of the home folder (``$HOME``, read at each call)."""
    return Path(os.path.expanduser("~")) / ".ssh"


def include_path() -> Path:
    """The file runhouse owns: ``~/.ssh/runhouse/config``."""
    return ssh_dir() / "runhouse" / "config"


def user_config_path() -> Path:
    """The user's ssh config, ``~/.ssh/config``, which gets the one Include line."""
    return ssh_dir() / "config"


def check_alias(alias: str) -> str:
    """Return ``alias`` when it can be an ssh host alias.

    Raises:
        InvalidNameError: it has characters ssh would read as patterns, quotes or separators, a dot, or is too long.
    """
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or alias.lower() in _RESERVED_ALIASES:
        raise InvalidNameError(
            f"{alias!r} cannot be an ssh host alias: use letters, digits, '_' and '-' (not first), at most "
            f"{MAX_ALIAS_LENGTH} characters, no dots (they could shadow a real host name). Name the cluster so to "
            "reach it with `ssh NAME`; `runhouse ssh NAME` works for any name."
        )
    return alias


def write_host(alias: str, creds: SSHCredentials, workers: Sequence[SSHCredentials] = ()) -> list[str]:
    """Make ``ssh ALIAS`` reach ``creds`` (and ``ssh ALIAS-i`` the i-th of ``workers``), replacing what this alias
    had before; add the Include line to ``~/.ssh/config`` when it is not there. Returns the aliases written
    (a worker's alias held by another cluster is skipped).

    Raises:
        InvalidNameError: ``alias`` cannot be an ssh host alias (see :func:`check_alias`).
        ConfigError: a value cannot be written safely, or the user's own ``~/.ssh/config`` names ``alias``.
        OSError: a file could not be read or written.
    """
    check_alias(alias)
    # Every entry is made before any file is touched: a value that cannot be written changes nothing.
    head = _Block(alias, alias, _entry_lines(alias, alias, creds))
    others = [_Block(f"{alias}-{i}", alias, _entry_lines(f"{alias}-{i}", alias, w)) for i, w in enumerate(workers, 1)]
    with _locked(create=True):
        blocks = _read_blocks()
        mine = alias.lower()
        position = next((i for i, b in enumerate(blocks) if mine in (b.owner_key, b.alias.lower())), len(blocks))
        kept = [b for b in blocks if mine not in (b.owner_key, b.alias.lower())]
        user_aliases = _user_aliases()
        if mine in user_aliases:
            _write_blocks(blocks, kept)  # an entry of ours written before the user's own would still win
            raise ConfigError(
                f"your {user_config_path()} has its own `Host {alias}` entry, so runhouse leaves `ssh {alias}` to it"
            )
        taken = {b.alias.lower() for b in kept} | user_aliases
        new = [head, *(b for b in others if b.alias.lower() not in taken)]
        _write_blocks(blocks, [*kept[:position], *new, *kept[position:]])
        _ensure_include()
    return [b.alias for b in new]


def remove_host(alias: str) -> bool:
    """Remove the entries written for ``alias`` (its own and its workers'); whether there were any.

    The Include line stays (the file it names may end up holding no entry).
    """
    if not include_path().exists():
        return False
    with _locked(create=False):
        blocks = _read_blocks()
        kept = [b for b in blocks if b.owner_key != alias.lower()]
        _write_blocks(blocks, kept)
    return len(kept) != len(blocks)


def register_cluster(name: str | None, head: SSHCredentials, workers: Sequence[SSHCredentials] = ()) -> list[str]:
    """:func:`write_host` for a cluster being brought up, which never fails the bring-up: unnamed clusters get no
    entry, and an entry that cannot be written is a logged notice (once per process and reason)."""
    if not name or not enabled():
        return []
    try:
        return write_host(name, head, workers)
    except (RunhouseError, OSError) as exc:
        _notice(f"`ssh {name!r}` will not work in a terminal: {exc}")
        return []


def unregister_cluster(name: str | None) -> bool:
    """:func:`remove_host` for a cluster torn down, which never fails the teardown (a failure is a logged notice)."""
    if not name or not enabled():
        return False
    try:
        return remove_host(name)
    except OSError as exc:
        _notice(f"the ssh entry of cluster {name!r} could not be removed from {include_path()}: {exc}")
        return False


# -- entries -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Block:
    """One ``Host`` entry of the include file, with the cluster it was written for (None: not runhouse's)."""

    alias: str
    owner: str | None
    lines: tuple[str, ...]

    @property
    def owner_key(self) -> str | None:
        return self.owner.lower() if self.owner is not None else None


def _entry_lines(alias: str, owner: str, creds: SSHCredentials) -> tuple[str, ...]:
    """The lines of the entry making ``ssh alias`` connect as runhouse's own connection with ``creds`` does."""
    options = [
        f"{_OWNER}{owner}",
        f"HostName {_argument('host', creds.host)}",
        f"Port {creds.port}",
    ]
    if creds.user:
        options.append(f"User {_argument('user', creds.user, tokens=False)}")
    if creds.private_key:
        key = os.path.abspath(os.path.expanduser(creds.private_key))
        options += [f"IdentityFile {_argument('private key path', key)}", "IdentitiesOnly yes"]
    if creds.proxy_command:
        options.append(f"ProxyCommand {_proxy_command(creds.proxy_command)}")
    known_hosts = str(SSHConnection(creds).known_hosts_path.absolute())
    options += [f"UserKnownHostsFile {_argument('known_hosts path', known_hosts)}", "StrictHostKeyChecking yes"]
    return (f"Host {alias}", *(f"    {option}" for option in options))


def _argument(what: str, value: str, tokens: bool = True) -> str:
    """``value`` as one ssh_config argument that ssh reads back exactly.

    ``tokens``: ssh expands %-tokens in this option, so ``%`` is doubled; otherwise a ``%`` is refused (ssh
    versions differ on expanding it there).

    Raises:
        ConfigError: the value holds what no quoting makes safe in every OpenSSH version.
    """
    if (not value or "${" in value or any(c in value for c in '"\\') or any(ord(c) < 32 or ord(c) == 127 for c in value)
            or (not tokens and "%" in value)):
        raise ConfigError(
            f"the {what} {value!r} cannot be written in an ssh config (control characters, quotes, backslashes, "
            f"'${{'{'' if tokens else ' and %'} are refused); use a {what} without them"
        )
    if tokens:
        value = value.replace("%", "%%")
    return value if _PLAIN.fullmatch(value) else f'"{value}"'


def _proxy_command(command: str) -> str:
    """A proxy command as ssh_config's rest-of-line value: as given (ssh reads ``-o ProxyCommand=...`` the same way).

    Raises:
        ConfigError: it holds a line break or other control character, or quotes ssh cannot split (it would
            refuse the whole file, for every host).
    """
    command = command.strip()
    if not command or any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in command) or not _quotes_balance(command):
        raise ConfigError(
            f"the proxy command {command!r} cannot be written in an ssh config (empty, a control character, or "
            "an unclosed quote); fix the ssh_proxy_command"
        )
    return command


def _quotes_balance(text: str) -> bool:
    """Whether OpenSSH's argument splitter (``argv_split``) finds every quote in ``text`` closed."""
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in ("'", '"', "\\") + ((" ",) if not quote else ()):
            i += 1
        elif not quote and c in "'\"":
            quote = c
        elif quote and c == quote:
            quote = ""
        i += 1
    return not quote


# -- files ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(create: bool) -> Iterator[None]:
    """Hold the exclusive lock of the include file (its folder made 0700 first when ``create``)."""
    folder = include_path().parent
    if create:
        ssh_dir().mkdir(mode=0o700, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        if stat.S_IMODE(folder.stat().st_mode) != 0o700:
            folder.chmod(0o700)
    fd = os.open(folder / "config.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read_blocks() -> list[_Block]:
    """The include file's entries (none when it does not exist); what precedes the first is runhouse's header."""
    try:
        text = include_path().read_text(errors="surrogateescape")
    except FileNotFoundError:
        return []
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = _HOST_LINE.fullmatch(line)
        if match:
            blocks.append((match.group(1), [line]))
        elif blocks:
            blocks[-1][1].append(line)
    parsed = []
    for alias, lines in blocks:
        while lines and not lines[-1].strip():
            lines.pop()
        owners = [line.strip()[len(_OWNER):] for line in lines if line.strip().startswith(_OWNER)]
        parsed.append(_Block(alias, owners[0] if owners else None, tuple(lines)))
    return parsed


def _write_blocks(old: list[_Block], new: list[_Block]) -> None:
    """Write the include file with ``new`` entries (0600), unless they are ``old`` ones already."""
    if new == old and include_path().exists():
        return
    text = _HEADER + "".join("\n" + "\n".join(block.lines) + "\n" for block in new)
    write_atomic(include_path(), text.encode(errors="surrogateescape"), mode=0o600)


def _include_reference() -> str:
    """How the Include line names the include file: ``~/...`` when ssh's ``~`` (the account's home folder, not
    ``$HOME``) is this home folder, so the line holds on another machine too; else its absolute path."""
    path = include_path()
    with contextlib.suppress(KeyError):
        if Path(pwd.getpwuid(os.getuid()).pw_dir) == ssh_dir().parent:
            return "~/" + str(path.relative_to(ssh_dir().parent))
    if any(c in str(path) for c in "*?["):
        raise ConfigError(f"the home folder {ssh_dir().parent} has glob characters (ssh's Include expands them)")
    return _argument("home folder path", str(path), tokens=False)


def _ensure_include() -> None:
    """Put ``Include <include file>`` at the top of the user's ssh config unless a line includes it already."""
    reference = _include_reference()
    wanted = {str(include_path()), os.path.expanduser(reference.strip('"')), reference.strip('"')}
    config = Path(os.path.realpath(user_config_path()))  # a symlinked config (dotfiles) is edited where it lives
    try:
        data = config.read_bytes()
        mode = stat.S_IMODE(config.stat().st_mode)
    except FileNotFoundError:
        data, mode = b"", 0o600
    if any(wanted & set(_arguments(rest)) for keyword, rest in _keyword_lines(data) if keyword == b"include"):
        return
    write_atomic(config, f"Include {reference}\n".encode() + data, mode=mode)
    os.chmod(config, mode)  # as it was (the umask may have narrowed it)


def _user_aliases() -> set[str]:
    """The host names the user's own ssh config gives an entry to literally (lowercase; patterns left out)."""
    try:
        data = Path(os.path.realpath(user_config_path())).read_bytes()
    except FileNotFoundError:
        return set()
    return {
        name.lower()
        for keyword, rest in _keyword_lines(data)
        if keyword == b"host"
        for name in _arguments(rest)
        if not any(c in name for c in "*?!")
    }


def _keyword_lines(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(keyword, rest)`` of each ``Host`` or ``Include`` line of an ssh config (keyword lowercase)."""
    for line in data.splitlines():
        match = _KEYWORD_LINE.fullmatch(line)
        if match:
            yield match.group(1).lower(), match.group(2)


def _arguments(rest: bytes) -> list[str]:
    """The arguments of a config line, unquoted (none when they cannot be split)."""
    try:
        return shlex.split(rest.decode(errors="surrogateescape"), comments=True)
    except ValueError:
        return []


def _notice(message: str) -> None:
    if message not in _noticed:
        _noticed.add(message)
        _log.warning(message)
