"""The add-on's background-job primitive (addon/jobs.py), in plain Python: real threads, the pump called by hand as
Blender's timer would call it.

What must hold: results reach ``on_done`` only through ``deliver`` (the main thread), failures become the explained
message, "one at a time" refuses a second start, "latest wins" drops the older result, and the pump keeps itself
scheduled exactly while something is in flight and redraws only when something changed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rerender.addon import jobs


@pytest.fixture()
def gate():
    """An event the work waits on, so the test decides when a job finishes."""
    event = threading.Event()
    yield event
    event.set()


def _runner(policy: str) -> jobs.JobRunner:
    return jobs.JobRunner(f"test {policy}", policy, explain=lambda exc: f"explained {type(exc).__name__}")


def test_results_are_applied_only_on_deliver(gate):
    runner = _runner(jobs.PARALLEL)
    applied = []
    runner.start("sum", lambda: gate.wait(5) and 1 + 2, lambda result: applied.append(result) or "summed")
    assert runner.busy == ["sum"] and runner.deliver() == [] and applied == []
    gate.set()
    assert runner.wait(5)
    assert applied == []  # the worker finished, but nothing touched "scene data" yet
    assert runner.deliver() == [("INFO", "summed")] and applied == [3]
    assert runner.messages == [("INFO", "summed")] and runner.generation == 1 and runner.busy == []


def test_failures_and_failing_callbacks_become_messages():
    runner = _runner(jobs.PARALLEL)
    runner.start("broken work", lambda: 1 / 0, lambda result: "never")
    runner.start("broken callback", lambda: 1, lambda result: [][result])
    runner.start("no callback", lambda: 1)
    assert runner.wait(5)
    produced = dict((text.split(":")[0], (level, text)) for level, text in runner.deliver())
    assert produced["broken work"] == ("ERROR", "broken work: explained ZeroDivisionError")
    assert produced["broken callback"][0] == "ERROR" and "out of range" in produced["broken callback"][1]
    assert produced["no callback"] == ("INFO", "no callback: done")


def test_one_at_a_time_refuses_a_second_start(gate):
    runner = _runner(jobs.ONE_AT_A_TIME)
    assert runner.start("check", lambda: gate.wait(5) and "first", str)
    assert not runner.start("check", lambda: "second", str)
    gate.set()
    assert runner.wait(5) and runner.deliver() == [("INFO", "first")]
    assert runner.start("check", lambda: "third", str) and runner.wait(5)
    assert runner.deliver() == [("INFO", "third")]


def test_latest_wins_drops_the_older_result(gate):
    runner = _runner(jobs.LATEST_WINS)
    got = []
    runner.start("frame 1", lambda: gate.wait(5) and 1, got.append)
    runner.start("frame 2", lambda: 2, got.append)
    assert runner.busy in (["frame 2"], [])  # the superseded job no longer counts as work in flight
    gate.set()
    assert runner.wait(5)
    runner.deliver()
    assert got == [2]


def test_the_pump_runs_while_busy_and_redraws_on_change(gate, monkeypatch):
    redraws = []
    def count() -> None:
        redraws.append(1)

    monkeypatch.setattr(jobs, "_change_callbacks", [])  # only this test's callback (ui's is restored afterwards)
    # only this test's runner and watcher: jobs that earlier tests in this process left to deliver would redraw too
    monkeypatch.setattr(jobs, "_runners", [])
    monkeypatch.setattr(jobs, "_watchers", [])
    jobs.on_change(count)
    state = {"changed": False, "busy": False}
    watcher = lambda: (state["changed"], state["busy"])  # noqa: E731
    jobs.watch(watcher)
    try:
        runner = _runner(jobs.PARALLEL)
        runner.start("slow", lambda: gate.wait(5))
        assert jobs.pump() == jobs.POLL_S and redraws == []  # in flight, nothing new: keep polling, no redraw
        gate.set()
        assert runner.wait(5)
        assert jobs.pump() is None and len(redraws) == 1  # delivered: redraw once, then stop
        state.update(changed=True, busy=True)
        assert jobs.pump() == jobs.POLL_S and len(redraws) == 2  # a watcher (the backend status) keeps it alive
    finally:
        jobs.unwatch(watcher)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown job policy"):
        jobs.JobRunner("x", "sometimes")


def test_the_viewport_preview_redraws_through_the_pump(monkeypatch):
    from rerender.addon.viewport import ViewportSession

    class Engine:
        def __init__(self, alive: bool = True) -> None:
            self.redraws, self.alive = 0, alive

        def tag_redraw(self) -> None:
            if not self.alive:
                raise ReferenceError("the viewport closed")
            self.redraws += 1

    monkeypatch.setattr(jobs, "_runners", [])  # only the viewport's watcher matters here
    monkeypatch.setattr(jobs, "_watchers", [])
    session = ViewportSession()
    live, closed = Engine(), Engine(alive=False)
    session._engines = [live, closed]
    jobs.watch(session._redraw_watcher)
    jobs.watch(session._redraw_watcher)  # watching twice is watching once
    assert jobs.pump() == 0.05 and live.redraws == 0  # nothing landed yet: look again in 50 ms, no redraw
    session._landed.set()  # what the requester thread does when a frame arrives
    assert jobs.pump() == 0.05 and live.redraws == 1 and session._engines == [live]
    session.stop()
    assert jobs.pump() is None and jobs._watchers == []


def test_jobs_started_inside_an_operator_begin_after_it_returned(gate):
    """Blender (Python 3.11) must not see a job thread run while it finishes one of our operators (addon/jobs.py)."""
    runner = _runner(jobs.ONE_AT_A_TIME)
    seen = {}

    class Operator:
        @jobs.runs_jobs_after
        def execute(self, context):
            assert runner.start("encode", lambda: gate.wait(5) and "latent", lambda result: f"got {result}")
            job = runner._jobs[-1]
            seen["pending"], seen["busy"], seen["running"] = job.pending, runner.busy, runner.running
            seen["second"] = runner.start("encode again", lambda: None)  # one at a time counts a queued job
            return {"FINISHED"}

    assert Operator().execute(None) == {"FINISHED"}
    assert seen == {"pending": True, "busy": ["encode"], "running": True, "second": False}
    assert runner._jobs[-1].pending, "nothing started it yet: the operator only queued it"
    assert runner.deliver() == [] and not runner._jobs[-1].pending  # the pump's (or a script's) deliver starts it
    gate.set()
    assert runner.wait(5) and runner.deliver() == [("INFO", "got latent")]


def test_an_operator_wrapper_keeps_the_parameters_blender_counts():
    class Operator:
        @jobs.runs_jobs_after
        def execute(self, context):
            return {"FINISHED"}

        @jobs.runs_jobs_after
        def invoke(self, context, event):
            return {"RUNNING_MODAL"}

    assert Operator.execute.__code__.co_argcount == 2 and Operator.invoke.__code__.co_argcount == 3
    assert Operator().invoke(None, None) == {"RUNNING_MODAL"} and jobs._operator_depth == 0


@pytest.mark.blender
def test_blender_survives_our_operators_starting_jobs_under_a_context_override():
    """The real thing: a Blender process calls a job-starting operator under temp_override for 10 s. Without
    ``runs_jobs_after`` this crashed Blender 5.0 (Python 3.11) with SIGSEGV (benchmarks/bench_operator_threads.py)."""
    pytest.importorskip("bpy")
    probe = Path(__file__).resolve().parents[1] / "benchmarks" / "operator_thread_probe.py"
    done = subprocess.run([sys.executable, str(probe), "10", "deferred"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"Blender died (exit {done.returncode}):\n{done.stderr[-2000:]}"
    calls = int(next(ln for ln in done.stdout.splitlines() if ln.startswith("CALLS ")).split()[1])
    assert calls > 100, f"only {calls} operator calls in 10 s"
