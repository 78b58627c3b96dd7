"""benchmarks/gpu_check.py dry-runs on the CPU at tiny sizes, as it must run on a GPU machine: from the checkout
through its path shim (no install), without pyzmq, msgpack, safetensors, tqdm and pytest, writing one JSON with every
section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_check(out: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--cpu",
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert json.loads(proc.stdout) == result
    return result


def test_dry_run_without_pyzmq_through_the_path_shim(tmp_path):
    hidden = ["msgpack", "pytest", "safetensors", "tqdm", "zmq"]
    r = run_check(tmp_path, "--force-shim", "--pretend-missing", *hidden)
    assert r["env"]["import"].startswith("path shim") and r["env"]["missing"] == hidden
    assert "errors" not in r and not r.get("skipped")
    c = r["correctness"]
    assert c["device_encoding_max_abs_diff"] == 0.0
    for precision in ("fp32", "fp32_no_tf32", "bf16"):
        assert c[precision]["ok"] and c[precision]["rel_err"] < c[precision]["tolerance"]
    assert c["served"]["u8_equals_deep_buffer_path"]
    assert c["served"]["f16_minus_u8_over_255_max"] > 1e-3  # float16 output is not the 8-bit image / 255
    assert "socket_u8_equals_runtime" not in c["served"]  # no pyzmq: the socket round trip is skipped
    for size in ("60x60", "100x132"):
        row = r["server"][size]
        assert set(row["batch1_stages_ms"]) == {"decode", "encode", "forward", "output", "host"}
        assert row["batch1_ms"] > 0 and row["batch8_per_frame_ms"] > 0 and row["pipelined_per_frame_ms"] > 0
    t = r["training"]
    assert (t["batch"], t["crop"], t["load"]) == (8, 32, 64)
    assert all(t[f"{p}_steps_per_s"] > 0 for p in ("rerender", "finetune", "semantic"))


@pytest.mark.slow
def test_dry_run_with_pyzmq_also_serves_over_a_socket(tmp_path):
    r = run_check(tmp_path, "--budget-s", "200")
    served = r["correctness"]["served"]
    assert served["socket_u8_equals_runtime"] and served["socket_96p_16_frames_in_flight8_fps"] > 0
