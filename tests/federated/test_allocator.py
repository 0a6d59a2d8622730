"""The glibc allocator tuning is applied once, and can be switched off."""

import os
import subprocess
import sys

CHECK = "from recbole_lumos.federated.allocator import keep_freed_memory; print(keep_freed_memory())"


def _run(**env):
    completed = subprocess.run(
        [sys.executable, "-c", CHECK], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return completed.stdout.strip()


def test_thresholds_are_raised_on_glibc_and_left_alone_on_request():
    assert _run() == "True"  # the CI machine is Linux with glibc
    assert _run(RECBOLE_LUMOS_MALLOC="default") == "False"
