"""Code deployed by the daemon hardening tests (importable by path)."""

from __future__ import annotations


def non_finite():
    return {"nan": float("nan"), "inf": float("inf"), "list": [1.5, float("-inf")], "text": "NaN and Infinity"}


def echo(value):
    return value
