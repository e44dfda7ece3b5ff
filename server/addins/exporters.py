"""The registry of add-in deployment files: ``relay manifests export DIR`` writes them all.

Each entry names a function ``export(config) -> {file name: bytes}`` (imported when used, so
this module stays cheap to import). Another add-in registers its deployment files by adding a
line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Exporter = Callable[[Mapping[str, Any]], dict[str, bytes]]

EXPORTERS: dict[str, str] = {
    "outlook": "server.addins.versions:export_files",
    "gmail": "server.addins.gmail.deployment:export_files",
}


def load(name: str) -> Exporter:
    """The exporter registered as ``name`` (KeyError for an unknown one)."""
    module, _, attr = EXPORTERS[name].partition(":")
    fn: Exporter = getattr(importlib.import_module(module), attr)
    return fn


def export_all(config: Mapping[str, Any], directory: Path,
               names: list[str] | None = None) -> list[Path]:
    """Write every registered exporter's files (or only ``names``) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in names or list(EXPORTERS):
        for filename, data in load(name)(config).items():
            path = directory / filename
            path.write_bytes(data)
            written.append(path)
    return written
