"""Framing shared by the client, the daemon and the workers.

Daemon <-> worker (a Unix socket pair, many requests in flight, matched by id)::

    !BIIQ  kind, request id, meta length, payload length; then meta (a pickled dict), then payload

HTTP response bodies from the daemon (one frame when nothing is streamed; logs first when streaming)::

    !BQ    kind, payload length; then payload

A RESULT payload is a serialized value (see :mod:`runhouse.serialization`), an ERROR payload a pickled
dict describing the exception, a LOG payload UTF-8 text made of whole lines.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from typing import Any

RESULT = 1
ERROR = 2
LOG = 3
REQUEST = 10
CANCEL = 11

WORKER_HEADER = struct.Struct("!BIIQ")
HTTP_FRAME = struct.Struct("!BQ")

# Content type our client sends and receives; anything else is treated as JSON.
CONTENT_TYPE = "application/x-runhouse"
# Request header carrying the JSON-encoded options of a request (call options, deploy spec, ...).
META_HEADER = "x-rh-meta"


def encode_meta(meta: dict[str, Any]) -> bytes:
    return pickle.dumps(meta, protocol=5)


def decode_meta(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    return pickle.loads(data)


def worker_frame_head(kind: int, rid: int, meta: bytes, payload_len: int) -> bytes:
    """Header plus meta of one daemon <-> worker frame; the payload follows separately."""
    return WORKER_HEADER.pack(kind, rid, len(meta), payload_len) + meta


def http_frame_head(kind: int, payload_len: int) -> bytes:
    return HTTP_FRAME.pack(kind, payload_len)


class FrameAssembler:
    """Cuts a byte stream, fed in chunks of any size, into frames of ``header`` plus a body.

    ``body_length(fields)`` gives a frame's body length from its unpacked header; each body is copied
    exactly once, into a buffer of its final size, and handed to ``on_frame(fields, body)``.
    """

    def __init__(
        self,
        header: struct.Struct,
        body_length: Callable[[tuple], int],
        on_frame: Callable[[tuple, bytearray], None],
    ) -> None:
        self.header, self.body_length, self.on_frame = header, body_length, on_frame
        self._head = bytearray()
        self._fields: tuple = ()
        self._body: bytearray | None = None
        self._filled = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        pos, end, size = 0, view.nbytes, self.header.size
        while pos < end:
            if self._body is None:
                take = min(size - len(self._head), end - pos)
                self._head += view[pos : pos + take]
                pos += take
                if len(self._head) < size:
                    return
                self._fields = self.header.unpack(self._head)
                self._head.clear()
                self._body, self._filled = bytearray(self.body_length(self._fields)), 0
            take = min(len(self._body) - self._filled, end - pos)
            self._body[self._filled : self._filled + take] = view[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == len(self._body):
                body, self._body = self._body, None
                self.on_frame(self._fields, body)

