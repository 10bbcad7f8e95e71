"""retain_freed_memory: freed full-size buffers are reused, not faulted in anew for every image."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mammolab.io.memory import retain_freed_memory

PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from mammolab.io.memory import retain_freed_memory
    tuned = retain_freed_memory() if sys.argv[1] == "tuned" else False
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(40 << 20, np.uint8); del a  # the first one is always new memory
    before = faults()
    for _ in range(8):
        a = np.ones(40 << 20, np.uint8)  # a 40 MB temporary, like a full-size film's
        del a
    print(tuned, (faults() - before) // 8)
""")


def _faults_per_alloc(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True).stdout
    tuned, faults = out.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_buffers_are_reused_without_page_faults() -> None:
    tuned, with_tuning = _faults_per_alloc("tuned")
    if not tuned:
        pytest.skip("this libc has no mallopt (not glibc)")
    _, without = _faults_per_alloc("default")
    # 40 MB is >= 20 huge pages or 10,000 small ones when it is new memory; reused memory faults in nothing.
    assert with_tuning <= 2, with_tuning
    assert without > with_tuning


def test_is_idempotent() -> None:
    first = retain_freed_memory()
    assert retain_freed_memory() is first
