"""One Blender process of bench_operator_threads.py: an operator that starts a job, called under temp_override.

    .venv/bin/python benchmarks/operator_thread_probe.py SECONDS immediate|deferred

Kept to the fewest imports on purpose: the race it shows is one of timing, and importing more modules (argparse,
json, subprocess) made the immediate mode crash less often. Prints "CALLS N" when Blender survived.
"""

import sys
import time

import bpy

from rerender.addon import jobs

runner = jobs.JobRunner("probe", jobs.PARALLEL)


def work() -> None:
    """What a job thread does: Python, then a call that releases the GIL (as a socket wait does), for 20 ms."""
    end = time.monotonic() + 0.02
    while time.monotonic() < end:
        sum(range(50))
        time.sleep(0)


def execute(self, context):
    runner.start("probe", work)
    self.report({"INFO"}, "started")  # the report is what makes Blender look the context up afterwards
    return {"FINISHED"}


seconds, mode = float(sys.argv[1]), sys.argv[2]
bpy.utils.register_class(type("RERENDER_OT_thread_probe", (bpy.types.Operator,), {
    "bl_idname": "rerender.thread_probe", "bl_label": "Thread Probe",
    "execute": jobs.runs_jobs_after(execute) if mode == "deferred" else execute}))
scene, calls, started = bpy.context.scene, 0, time.monotonic()
while time.monotonic() - started < seconds:
    with bpy.context.temp_override(scene=scene):
        bpy.ops.rerender.thread_probe()
    runner.wait(5)
    runner.deliver()
    calls += 1
print(f"CALLS {calls}", flush=True)
