"""SSH to a host through the system OpenSSH client (``ssh``) and ``rsync``: commands, file sync, tunnels.

This package is the only place in runhouse that speaks SSH: ``connection`` (credentials, commands, rsync,
the shared master), ``tunnel`` (port forwards) and ``group`` (several hosts at once).

One :class:`SSHConnection` per host keeps one multiplexed OpenSSH connection (``ControlMaster``): the first
operation authenticates, later ones reuse it through a control socket and cost one local process spawn, not
a handshake. The master outlives a single operation (``ControlPersist``), so the next process reuses it, and
is ended with :meth:`SSHConnection.close`, or with every other one by :func:`close_masters`
(``runhouse stop --all``).

Every ssh invocation gets these options (see :meth:`SSHConnection.ssh_options`):

- ``BatchMode=yes``: never prompt (a prompt nobody answers is a hang); left out when a password is fed
  through ``sshpass``, which needs the prompt.
- ``ConnectTimeout``: bound on the TCP connect and the SSH handshake.
- ``ServerAliveInterval=5``, ``ServerAliveCountMax=3``: a host that stops answering (without closing the
  connection) is noticed within 15-20 s, and every command on the connection then fails instead of hanging.
- ``StrictHostKeyChecking=yes`` (or ``accept-new`` when asked) with ``UserKnownHostsFile``: unknown hosts
  are refused unless accepted, and a changed host key is always refused.
- ``ControlMaster=auto``, ``ControlPath``, ``ControlPersist=600``: the shared connection; a stale control
  socket (its master died) is replaced by ssh itself.
- ``ExitOnForwardFailure=yes``: a port forward that cannot be set up is an error, not a warning.
- ``-p``, ``-l``, ``IdentityFile`` with ``IdentitiesOnly=yes``, ``ProxyCommand``: where and as whom to connect.

ssh reports its own failures as exit code 255 plus a line on stderr; those become the typed errors of
:mod:`runhouse.errors` (:class:`HostKeyError`, :class:`SSHAuthenticationError`, :class:`SSHConnectionError`,
:class:`SSHTimeoutError`), each naming ``host:port`` and saying what to do.

Example::

    creds = SSHCredentials("10.0.0.5", user="ubuntu", private_key="~/.ssh/id_ed25519")
    with SSHConnection(creds) as conn:
        conn.run("nproc", check=True).stdout
        conn.rsync("src/", "~/project/", excludes=[".git"])
        with conn.forward(remote_port=32300) as tunnel:
            ...  # the daemon on the host is at 127.0.0.1:tunnel.local_port

A :class:`HostGroup` drives several hosts' connections at once (a thread per host, bounded): it returns a
result per host in the group's order, and when some hosts fail it raises one :class:`HostGroupError`
carrying every host's outcome (its result, or the exception where it failed)::

    with HostGroup([SSHCredentials(ip, user="ubuntu") for ip in ips]) as group:
        group.rsync("src/", "~/project/")
        for address, result in group.run("nproc", check=True).items():
            print(address, result.stdout)
"""

from __future__ import annotations

from runhouse.transport.ssh.connection import (
    DEFAULT_COMMAND_TIMEOUT_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    CommandResult,
    SSHConnection,
    SSHCredentials,
    close_masters,
)
from runhouse.transport.ssh.group import DEFAULT_GROUP_CONCURRENCY, HostGroup
from runhouse.transport.ssh.tunnel import Tunnel

__all__ = [
    "DEFAULT_COMMAND_TIMEOUT_S",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_GROUP_CONCURRENCY",
    "CommandResult",
    "HostGroup",
    "SSHConnection",
    "SSHCredentials",
    "Tunnel",
    "close_masters",
]
