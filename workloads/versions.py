"""The software a recording ran on, for its header: without importing any of it (a watch has no engine)."""

from __future__ import annotations

import contextlib
import platform
import sys
from importlib.metadata import PackageNotFoundError, version


def software_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("tickscope", "torch", "numpy", "msgpack"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return versions
