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


def ones(n=100 * MIB):
    """An ``n``-byte uint8 array of ones: the work is sending it back."""
    import numpy as np

    return np.ones(n, dtype=np.uint8)
