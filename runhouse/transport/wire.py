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

