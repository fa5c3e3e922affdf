"""Code deployed by the worker-hardening tests.

This module must not import numpy at its top level: the import-race test needs numpy's first import to
happen inside a worker's call threads.
"""

from __future__ import annotations


def numpy_sum(array):
    """Unpickling the argument is what imports numpy in the worker."""
    return int(array.sum())


def numpy_ones_sum(n):
    import numpy as np

    return int(np.ones(n).sum())

