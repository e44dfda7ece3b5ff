"""Shared by the Outlook add-in tests: the add-in's npm packages, installed once per run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
ADDIN = ROOT / "addin" / "outlook"
SCHEMAS = ROOT.parent / "shared" / "schemas" / "outlook-xml"
XSD = SCHEMAS / "OfficeAppManifestV1_1.xsd"
APP_MANIFEST_SCHEMAS = (ADDIN / "node_modules" / "@microsoft" / "app-manifest" / "build"
                        / "json-schemas" / "teams")


def node_modules() -> Path:
    """``addin/outlook/node_modules``, installed with ``npm ci`` when missing (skips without npm).

    ``.ci/run`` installs them before the tests; this covers a bare ``pytest`` run. ``npm ci``
    installs exactly package-lock.json from the npm registry.
    """
    modules = ADDIN / "node_modules"
    marker = modules / ".package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= (ADDIN / "package-lock.json").stat().st_mtime:
        return modules
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("the add-in's npm packages are not installed and npm is absent: "
                    "install Node.js 20 and run `npm ci --prefix addin/outlook`")
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(ADDIN)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"npm ci --prefix addin/outlook failed:\n{result.stderr[-2000:]}")
    return modules


def xsd_path() -> Path:
    """The shared Outlook manifest schema (../shared/schemas/outlook-xml), or skip."""
    if not XSD.exists():
        pytest.skip(f"the Outlook manifest schemas are not at {SCHEMAS} (the shared folder "
                    "beside the repository)")
    return XSD
