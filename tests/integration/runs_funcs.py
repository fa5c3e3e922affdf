"""Code the run and status tests deploy (importable by path)."""

from __future__ import annotations

import logging
import os
import sys
import time


def chatty(tag):
    print(f"{tag} to stdout")
    print(f"{tag} to stderr", file=sys.stderr)
    logging.getLogger("runs_funcs").warning("%s via logging", tag)
    return tag


def fails(tag):
    print(f"{tag} before failing")
    raise ValueError(f"{tag} went wrong")


def last_words_then_crash(tag):
    print(f"{tag}: last words", flush=True)
    os._exit(3)


def ticks(count, every):
    for i in range(count):
        print(f"tick {i}", flush=True)
        time.sleep(every)
    return count


def square(x):
    print(f"squaring {x}")
    return x * x
