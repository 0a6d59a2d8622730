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


def test_freed_memory_goes_back_to_the_os_when_the_thresholds_were_raised():
    """With raised thresholds a freed 200 MB block stays resident until release_freed_memory."""
    check = (
        "import torch\n"
        "from recbole_lumos.federated.allocator import keep_freed_memory, release_freed_memory\n"
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])\n"
        "print(release_freed_memory(), end=' ')\n"
        "keep_freed_memory()\n"
        "small = [torch.ones(1000) for _ in range(10)]\n"
        "big = torch.ones(50_000_000)\n"
        "tail = torch.ones(10)\n"  # above the block: the heap cannot shrink from the top
        "before = rss(); del big\n"
        "kept = rss()\n"
        "released = release_freed_memory()\n"
        "print(released, (before - kept) < 50_000, (kept - rss()) > 150_000)\n"
    )
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert completed.stdout.split() == ["False", "True", "True", "True"]
