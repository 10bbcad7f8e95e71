"""Worker processes survive a caller that has already used OpenCV's thread pool.

A forked child inherits the pool's locks without the threads that hold them and hangs in its first
``cv2`` call; this happened in one pytest session (a test resized images, a later one preprocessed
with two workers) and would in a notebook that trains and then preprocesses. The check runs in a
fresh interpreter with a deadline, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import cv2, numpy as np
    from mammolab.progress import parallel_map
    cv2.setNumThreads(4)
    big = np.random.default_rng(0).integers(0, 255, (2048, 2048), dtype=np.uint8)
    for _ in range(5):
        cv2.GaussianBlur(big, (31, 31), 0)      # the parent's cv2 pool now has threads
    results, errors = parallel_map(cv2.setNumThreads, [1] * 6, workers=2)   # what each worker does first
    print(results, errors)
""")


def test_workers_do_not_inherit_the_callers_opencv_threads() -> None:
    try:
        proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30,
                              env={"MAMMOLAB_QUIET": "1", "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired:
        pytest.fail("parallel_map hung after the caller used OpenCV's thread pool")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{[None] * 6} []"
