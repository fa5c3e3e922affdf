"""Functions the benchmark deploys to the daemon, by import path.

Kept free of module-level imports (numpy is imported inside the function that needs it) so that deploying
``add`` measures runhouse, not the import of a heavy library in the worker.
"""

MIB = 1024 * 1024


def add(a, b):
    return a + b


def nbytes(arr):
    """Size of an array argument: the work is receiving it."""
    return int(arr.nbytes)


_MADE_IN_S: list = []  # how long each ones() took to make its array, in this worker


def ones(n=100 * MIB):
    """An ``n``-byte uint8 array of ones: the work is making it and sending it back."""
    import time

    import numpy as np

    began = time.perf_counter()
    array = np.ones(n, dtype=np.uint8)
    _MADE_IN_S.append(time.perf_counter() - began)
    return array


def made_in_s():
    """Seconds each ones() call in this worker spent making its array (and forget them)."""
    times = list(_MADE_IN_S)
    _MADE_IN_S.clear()
    return times


_KEPT: dict = {}


def kept_ones(n=100 * MIB):
    """The same array on every call: the work is only sending it back (no fresh allocation in the worker)."""
    if n not in _KEPT:
        _KEPT[n] = ones(n)
    return _KEPT[n]
