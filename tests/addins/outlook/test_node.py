"""The task pane's logic and the send handler, tested in node with Microsoft's office-addin-mock."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.addins.outlook.support import ADDIN, node_modules


def test_node_unit_tests_of_the_pane_pass():
    """Do `node --test` tests of pane.js and events.js (office-addin-mock) all pass?"""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is absent: the pane's unit tests need Node.js 20 (`node --test`)")
    node_modules()
    result = subprocess.run([node, "--test", "test/"], cwd=ADDIN, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = int(re.search(r"^# pass (\d+)$", result.stdout, re.M).group(1))
    failed = int(re.search(r"^# fail (\d+)$", result.stdout, re.M).group(1))
    assert failed == 0 and passed >= 29, result.stdout[-2000:]
