"""Code deployed by the integration tests (importable by path, as user code usually is)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

import runhouse as rh


def add(a, b):
    return a + b


def pid(_=None):
    return os.getpid()


def slow_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def shout(tag, times=1):
    for i in range(times):
        print(f"{tag} line {i}")
    logging.getLogger("funcs").warning("%s logged", tag)
    return tag


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x * 10


def raise_value_error():
    raise ValueError("remote says no")


class TwoArgError(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def raise_two_arg_error():
    raise TwoArgError("x", "y")


def make_lock():
    return threading.Lock()


def describe(obj):
    return type(obj).__name__


def length(seq):
    return len(seq)


def env_var(name):
    return os.environ.get(name)


def version_of(module_name):
    import importlib

    return importlib.import_module(module_name).__version__


async def async_double(x):
    await asyncio.sleep(0.01)
    return 2 * x


_LOG: list = []


def record(tag, seconds):
    _LOG.append(("start", tag))
    time.sleep(seconds)
    _LOG.append(("end", tag))
    return list(_LOG)


def sleep_loop(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return "finished"


def crash(code=1):
    os._exit(code)


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, by=1):
        self.value += by
        return self.value

    async def aincrement(self):
        await asyncio.sleep(0.01)
        self.value += 1
        return self.value

    @property
    def doubled(self):
        return 2 * self.value


class Model(rh.Module):
    def __init__(self, scale=1):
        self.scale = scale

    def predict(self, x):
        return x * self.scale


def tick(path, seconds):
    """Append a line to ``path`` every 50 ms for ``seconds`` (to observe whether a call still runs)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with open(path, "a") as f:
            f.write("tick\n")
        time.sleep(0.05)
    return "finished"


def kill_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(10)


def segfault():
    import ctypes

    ctypes.string_at(0)


def hog_memory(mb):
    chunks = []
    for _ in range(mb // 10):
        chunks.append(bytearray(10 * 2**20))
        time.sleep(0.01)
    time.sleep(5)
    return len(chunks)


def ones(nbytes):
    import numpy as np

    return np.ones(nbytes, dtype=np.uint8)


def filled(nbytes, value):
    import numpy as np

    return np.full(nbytes, value, dtype=np.uint8)


def checksum(array):
    return int(array.sum()), bool(array.flags.writeable)


def progress_bar(seconds):
    """A progress bar as tqdm draws one: partial lines flushed, each starting over with a carriage return."""
    import sys

    sys.stdout.write("\r 10%")
    sys.stdout.flush()
    time.sleep(seconds)
    sys.stdout.write("\r100%\n")
    return "finished"
