"""bridge/allocator.py: fixed glibc malloc thresholds stop frame-sized buffers from faulting their pages in anew."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHURN = """
import json, resource, sys
import numpy as np
from rerender.bridge.allocator import keep_frame_buffers
info = keep_frame_buffers()
def frame():  # what a server does per 1080p request: receive buffers, work arrays, free them all
    parts = [np.ones(n, np.uint8) for n in (6_220_800, 4_147_200, 2_073_600, 2_073_600)]
    return sum(int(p[::4096].sum()) for p in parts)
frame()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    frame()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print(json.dumps({"info": info, "faults_per_frame": faults}))
"""


def churn(keep: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["RERENDER_KEEP_FRAME_BUFFERS"] = keep
    out = subprocess.run([sys.executable, "-c", CHURN], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_fixed_thresholds_remove_the_page_faults_of_frame_buffers():
    default, kept = churn("0"), churn("1")
    assert default["info"] == {"applied": False, "reason": "RERENDER_KEEP_FRAME_BUFFERS=0"}
    assert kept["info"]["applied"] and kept["info"]["mmap_threshold"] == 32 * 1024 * 1024
    # glibc's default maps and unmaps each 2-6 MB buffer: ~3,500 faults a frame; kept, the heap reuses them
    assert default["faults_per_frame"] > 1000
    assert kept["faults_per_frame"] < default["faults_per_frame"] / 10
