"""The head daemon's worker listener: only a connection presenting a worker's one-time secret gets through."""

from __future__ import annotations

import asyncio
import secrets
import socket

import pytest

from runhouse.server import ray_backend
from runhouse.server.ray_backend import SECRET_BYTES, WorkerListener


async def _open_listener() -> WorkerListener:
    listener = WorkerListener("127.0.0.1")
    await listener.open()
    return listener


async def _connect(listener: WorkerListener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*listener.address)


async def _closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except ConnectionResetError:
        return True


def test_the_connection_presenting_the_secret_is_handed_over():
    async def scenario() -> bytes:
        listener = await _open_listener()
        secret = secrets.token_bytes(SECRET_BYTES)
        arrived = listener.expect(secret)
        reader, writer = await _connect(listener)
        writer.write(secret)
        sock = await asyncio.wait_for(arrived, 5)
        sock.setblocking(True)
        sock.sendall(b"hello")
        got = await reader.readexactly(5)
        sock.close()
        writer.close()
        listener.close()
        return got

    assert asyncio.run(scenario()) == b"hello"


@pytest.mark.parametrize("sent", [b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\n\r\n", b"x" * SECRET_BYTES])
def test_anything_else_is_closed_and_the_worker_keeps_waiting(sent):
    async def scenario() -> tuple[bool, bool]:
        listener = await _open_listener()
        arrived = listener.expect(secrets.token_bytes(SECRET_BYTES))
        reader, writer = await _connect(listener)
        writer.write(sent)
        closed = await _closed_by_peer(reader)
        waiting = not arrived.done()
        listener.close()
        return closed, waiting

    assert asyncio.run(scenario()) == (True, True)


def test_a_silent_connection_is_closed_after_the_handshake_timeout(monkeypatch):
    monkeypatch.setattr(ray_backend, "HANDSHAKE_TIMEOUT_S", 0.3)

    async def scenario() -> bool:
        listener = await _open_listener()
        reader, writer = await _connect(listener)
        writer.write(b"short")
        closed = await _closed_by_peer(reader, timeout=5)
        listener.close()
        return closed

    assert asyncio.run(scenario())


def test_idle_connections_cannot_lock_a_worker_out():
    async def scenario() -> bool:
        listener = await _open_listener()
        idle = [await _connect(listener) for _ in range(ray_backend.MAX_HANDSHAKES * 2)]
        await asyncio.sleep(0.1)
        secret = secrets.token_bytes(SECRET_BYTES)
        arrived = listener.expect(secret)
        _, writer = await _connect(listener)
        writer.write(secret)
        sock = await asyncio.wait_for(arrived, 5)
        sock.close()
        for _, idle_writer in idle:
            idle_writer.close()
        listener.close()
        return isinstance(sock, socket.socket)

    assert asyncio.run(scenario())
