"""Which runhouse this is: the release version plus a hash of the package's own files.

Client and daemon compare build ids on connect, so a daemon running different code (an edited checkout,
another release) is noticed even when the version string is the same.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"
PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def build_id() -> str:
    """``<version>+<12 hex digits>``, the digits hashing every source and data file of the package."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in (".py", ".json", ".typed") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
            digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"
