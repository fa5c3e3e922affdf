"""The daemon's on-disk identity: where the daemon on a port keeps its token, TLS files, pid, log and registry.

The daemon writes these files and clients read them: on this machine directly, on a host over SSH. Both
derive every path from :class:`DaemonFiles`, so the layout is spelled once::

    <runhouse folder>/daemons/<port>/
        token            the bearer token, made at first start and kept across restarts
        pid              the running daemon's pid
        daemon.log       its output
        launch.json      how it was last started (bound address, TLS), for restarting it the same way
        registry.json    its envs (with their env var values) and named objects; registry.journal: the
                         changes since (runhouse.server.registry)
        runs/            its runs and their output, bounded (see runhouse.server.runs)
        den_auth.json    Den's URL, the cluster's Den address and its heartbeat key, when Den auth is on
        tls/cert.pem     the certificate it serves HTTPS with (``--tls``); clients pin it
        tls/key.pem      its private key

All of it is owner-only, folders 0700 and files 0600 (``daemons/`` too): files are created so, and the
daemon fixes what an older version or a shell redirect left more open at every start (:func:`make_private`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import BinaryIO

from runhouse.paths import daemon_dir

PRIVATE_FILE_MODE = 0o600
PRIVATE_FOLDER_MODE = 0o700

# The runhouse folder on a host as a word of a POSIX shell command (the daemon there honours RH_CONFIG_DIR).
REMOTE_CONFIG_DIR = '"${RH_CONFIG_DIR:-$HOME/.rh}"'


@dataclass(frozen=True)
class DaemonFiles:
    """The state files of the daemon on one port, here (:meth:`local`) or on a host (:meth:`remote`)."""

    folder: PurePath

    @classmethod
    def local(cls, port: int) -> DaemonFiles:
        """The files of the daemon on ``port`` of this machine (the folder is created, mode 0700)."""
        return cls(daemon_dir(port))

    @classmethod
    def remote(cls, config_dir: str, port: int) -> DaemonFiles:
        """The files of the daemon on ``port`` of a host whose runhouse folder is ``config_dir`` (absolute)."""
        return cls(PurePosixPath(config_dir) / "daemons" / str(port))

    @property
    def token(self) -> PurePath:
        return self.folder / "token"

    @property
    def pid(self) -> PurePath:
        return self.folder / "pid"

    @property
    def log(self) -> PurePath:
        return self.folder / "daemon.log"

    @property
    def launch(self) -> PurePath:
        return self.folder / "launch.json"

    @property
    def registry(self) -> PurePath:
        return self.folder / "registry.json"

    @property
    def runs(self) -> PurePath:
        """The runs of calls and commands with their output, in segment files (runhouse.server.runs)."""
        return self.folder / "runs"

    @property
    def autostop(self) -> PurePath:
        """The idle timer's settings (minutes, stop command), kept across restarts."""
        return self.folder / "autostop.json"

    @property
    def den_auth(self) -> PurePath:
        """Den auth's settings (Den's URL, the cluster's address, its heartbeat key), kept across restarts."""
        return self.folder / "den_auth.json"

    @property
    def tls_cert(self) -> PurePath:
        return self.folder / "tls" / "cert.pem"

    @property
    def tls_key(self) -> PurePath:
        return self.folder / "tls" / "key.pem"


def make_private(files: DaemonFiles) -> None:
    """Make the local daemon's folder and everything in it owner-only (0700 folders, 0600 files)."""
    folder = Path(files.folder)
    for path in [folder, *folder.rglob("*")]:
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile (a temporary file of an atomic write)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):  # chmod would change what it points to
                continue
            mode = PRIVATE_FOLDER_MODE if stat.S_ISDIR(info.st_mode) else PRIVATE_FILE_MODE
            if stat.S_IMODE(info.st_mode) != mode:
                path.chmod(mode)


def write_private(path: PurePath, data: str | bytes) -> None:
    """Replace the content of the file at ``path`` with ``data``, the file owner-only (also if it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        file.write(data.encode() if isinstance(data, str) else data)


def open_log(files: DaemonFiles) -> BinaryIO:
    """The local daemon's log, opened for appending (created owner-only; an older one is made so)."""
    fd = os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)
    return os.fdopen(fd, "ab")


def read_token(files: DaemonFiles) -> str | None:
    """The local daemon's token, or None before its first start."""
    try:
        return Path(files.token).read_text().strip()
    except FileNotFoundError:
        return None


def ensure_token(files: DaemonFiles) -> str:
    """The local daemon's token, created with mode 0600 if it does not exist yet."""
    token = read_token(files)
    if token is not None:
        return token
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(files.token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:  # another process made it first: use theirs
        return Path(files.token).read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def ensure_tls_cert(files: DaemonFiles, host: str) -> Path:
    """A self-signed certificate for the local daemon, made once (key mode 0600); clients pin it, no CA."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = Path(files.tls_cert), Path(files.tls_key)
    if cert_path.exists() and key_path.exists():
        return cert_path
    cert_path.parent.mkdir(mode=PRIVATE_FOLDER_MODE, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runhouse daemon")])
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(key, hashes.SHA256())
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(key_path, private)
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path
