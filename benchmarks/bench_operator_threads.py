"""Does Blender survive an operator that starts one of the add-on's jobs, called under ``temp_override``?

    .venv/bin/python benchmarks/bench_operator_threads.py [--seconds 20] [--python .venv-blender-5.3/bin/python]

Why it exists: on Blenders built with Python 3.11 (4.5 LTS, 5.0), an operator called from Python under a context
override runs its C part with the GIL released. While it does, Blender looks up context members in the override
dictionary, and it takes the GIL for that only when no other thread holds it: Python 3.11's "is the interpreter
active" check sees whichever thread holds the GIL. A job thread that alternates Python and a blocking call (a socket
wait) therefore races Blender's dictionary reads and crashes it (SIGSEGV in ``_PyErr_Fetch`` with no thread state,
under ``BPY_context_member_get``). The add-on's operators queue the jobs they start and start them after returning
(addon/jobs.py, ``runs_jobs_after``). This probe runs both ways, each in a Blender process of its own:

- ``immediate``: the operator starts the job's thread itself (the add-on before the fix);
- ``deferred``: the operator is wrapped in ``runs_jobs_after``.

Each mode runs ``--rounds`` Blender processes, each making calls for ``--seconds`` or until Blender dies (the race
is probabilistic: one 20 s round of the immediate mode may survive). The probe prints each round's call count and
exit status, and writes benchmarks/results/bench_operator_threads.json. One process is
benchmarks/operator_thread_probe.py (tests/test_jobs.py runs its deferred mode).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("immediate", "deferred")
PROBE = Path(__file__).with_name("operator_thread_probe.py")  # one Blender process, as few imports as possible


def run_mode(python: str, mode: str, seconds: float) -> dict:
    """One mode in a fresh Blender process (a crash ends only that process)."""
    started = time.monotonic()
    done = subprocess.run([python, str(PROBE), str(seconds), mode], capture_output=True, text=True,
                          timeout=seconds + 120)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("CALLS ")), None)
    return {"mode": mode, "returncode": done.returncode, "crashed": done.returncode < 0 or done.returncode == 139,
            "calls": int(line.split()[1]) if line else None, "seconds": round(time.monotonic() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="calls per mode for this long (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="Blender processes per mode (default 3)")
    parser.add_argument("--python", default=sys.executable, help="the Python whose bpy to probe (default this one)")
    args = parser.parse_args()
    version = subprocess.run([args.python, "-c", "import sys, bpy; print(sys.version.split()[0], "
                              "bpy.app.version_string)"], capture_output=True, text=True, timeout=120).stdout.split()
    results = {"python": version[0], "blender": " ".join(version[1:]), "seconds_per_mode": args.seconds,
               "rounds": [run_mode(args.python, mode, args.seconds) for _ in range(args.rounds) for mode in MODES]}
    for r in results["rounds"]:
        state = "CRASHED" if r["crashed"] else "survived" if r["returncode"] == 0 else "FAILED"  # e.g. no bpy
        print(f"{r['mode']:>9}: {state} (exit {r['returncode']}), {r['calls']} calls in {r['seconds']} s")
    for mode in MODES:
        rounds = [r for r in results["rounds"] if r["mode"] == mode]
        results[f"{mode}_crashed"] = sum(r["crashed"] for r in rounds)
        print(f"{mode}: {results[f'{mode}_crashed']} of {len(rounds)} Blender processes crashed")
    out = ROOT / "benchmarks" / "results" / "bench_operator_threads.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Blender {results['blender']} on Python {results['python']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
