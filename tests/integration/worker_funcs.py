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


def add(a, b):
    return a + b


def close_channel_and_linger(marker, seconds):
    """Close this worker's channel to the daemon, then keep the process running for ``seconds``.

    The worker reads its channel (file descriptor ``sys.argv[1]``) only on threads not busy with a call, so
    in an env with ``RH_WORKER_THREADS=1`` nothing notices the close until this call returns.
    """
    import socket
    import sys
    import time
    from pathlib import Path

    channel = socket.socket(fileno=int(sys.argv[1]))
    channel.shutdown(socket.SHUT_RDWR)
    channel.detach()
    Path(marker).touch()
    time.sleep(seconds)


def start_process_then_exit(how, code):
    """Leave a process running (a program, or a fork of this worker) for 10 s, then exit the worker."""
    import os
    import subprocess
    import sys
    import time

    if how == "program":
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10)"], close_fds=False)
    elif os.fork() == 0:
        time.sleep(10)
        os._exit(0)
    os._exit(code)


def ones(nbytes):
    import numpy as np

    return np.ones(nbytes, dtype=np.uint8)
