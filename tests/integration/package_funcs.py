"""Code the package tests deploy: it imports a package installed with install_packages (never pytest, so it
imports on a cluster whose interpreter has only runhouse)."""

from __future__ import annotations

import importlib
import importlib.metadata


def value_of(module_name):
    """``module_name.value()`` and the file the module was imported from."""
    module = importlib.import_module(module_name)
    return module.value(), module.__file__


def installed_version(distribution):
    """The version of an installed distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
