"""Match this photo: a look fitted to a photo by the backend, with progress and cancel, the UI never waiting.

Encoding a photo (``appearance.encode_photo_async``) is one encoder pass: a good start, not the latent the
rerenderer reproduces the photo best with. Matching starts from that answer and optimises the latent against the
photo for N steps (``bridge/latent_fitting.py``: a chain of short ``encode`` requests, each continuing from the
best latent so far). The chain runs in a worker thread of the add-on's job machinery (``jobs.py``); the worker
publishes a :class:`MatchState` that the main thread shows (the Looks panel, and the modal operator's progress
cursor and status bar), and cancelling (Esc, or the panel's Cancel button) only sets an event the chain asks
between and during its requests: it stops, and the best latent so far becomes the look.

The deep buffer is the photo's own imported COLMAP camera when the scene has one (``obj["rerender_image"]`` names
its photo, set by the COLMAP import), else the scene camera: a calibrated view is what makes the fit meaningful,
since the fitted latent reproduces the photo *through that buffer*. The buffer is rendered on the main thread
before the worker starts (bpy is single-threaded), as for an encode.

A backend that fails mid-fit changes nothing already in the scene: an existing look of that name keeps its latent,
and a new name gets the best latent fitted before the failure, with an error saying so.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import bpy
import numpy as np

from . import connection
from ._bridge import bridge
from .jobs import ONE_AT_A_TIME, JobRunner, runs_jobs_after
from .looks import ENCODE_MAX_SIDE, LookError, PhotoLookOperator, photo_and_buffer, store_look, thumbnail_of
from .preferences import backend_settings

latent_fitting = importlib.import_module(f"{bridge.__name__}.latent_fitting")

DEFAULT_STEPS = latent_fitting.DEFAULT_STEPS  # 200
DEFAULT_CHUNK = latent_fitting.DEFAULT_CHUNK  # 25 steps per request at most
LINK_SECONDS = 2.0  # requests are sized to about this: the progress moves every two seconds or so, the backend's
#                     device is free for viewport frames between requests
MODAL_TICK_S = 0.1


@dataclass
class MatchState:
    """One running match, shared by its worker (writes ``progress``) and the main thread (reads it, sets
    ``cancel``). Plain attribute assignments: atomic under the GIL, and the UI only ever shows a snapshot."""

    look: str
    photo: str
    steps: int
    camera: str
    progress: Any = None  # the last latent_fitting.FitProgress
    cancel: threading.Event = field(default_factory=threading.Event)

    def line(self) -> str:
        """'Matching 'dusk' (photo.jpg): 60/200 steps, loss 0.368 → 0.310' for the panel and the status bar."""
        head = f"Matching {self.look!r} ({self.photo})"
        if self.cancel.is_set():
            return f"{head}: cancelling …"
        if self.progress is None:
            return f"{head}: encoding …"
        return f"{head}: {self.progress.line()}"

    @property
    def fraction(self) -> float:
        return 0.0 if self.progress is None else float(self.progress.fraction)


def _explain(exc: BaseException) -> str:
    if isinstance(exc, (LookError, connection.BackendProblem, latent_fitting.FitInterrupted)):
        return str(exc)
    return connection.explain(exc, backend_settings())


jobs = JobRunner("match", ONE_AT_A_TIME, explain=_explain)  # one progress bar, one Cancel button
current: MatchState | None = None  # the match running (or last run): what the panel and the modal operator show


def photo_camera(scene: bpy.types.Scene, path: str) -> bpy.types.Object | None:
    """The imported COLMAP camera of the photo at ``path`` in ``scene``, or None.

    COLMAP names images by their path under the workspace's images folder (``sub/IMG_1.jpg``); a photo the
    artist opens is matched by the longest such name its path ends with."""
    wanted = os.path.normpath(bpy.path.abspath(path)).replace(os.sep, "/")
    best, best_len = None, 0
    for obj in scene.objects:
        image = obj.get("rerender_image") if obj.type == "CAMERA" else None
        if not isinstance(image, str) or not image:
            continue
        image = image.replace("\\", "/").removeprefix("./")
        if (wanted == image or wanted.endswith("/" + image)) and len(image) > best_len:
            best, best_len = obj, len(image)
    return best


def choose_camera(scene: bpy.types.Scene, path: str, camera: str = "") -> bpy.types.Object:
    """The camera the photo is matched through: ``camera`` by name, else the photo's COLMAP camera, else the
    scene camera; LookError saying what to do when there is none."""
    if camera:
        obj = bpy.data.objects.get(camera)
        if obj is None or obj.type != "CAMERA":
            raise LookError(f"{camera!r} is not a camera object: pick a camera, or leave Camera empty for the "
                            "photo's COLMAP camera or the scene camera")
        return obj
    obj = photo_camera(scene, path) or scene.camera
    if obj is None:
        raise LookError("the scene has no active camera and no imported COLMAP camera of this photo: set a camera "
                        "framed like the photo, then match again")
    return obj


def match_photo_async(scene: bpy.types.Scene, path: str, name: str, *, steps: int = DEFAULT_STEPS,
                      chunk: int = DEFAULT_CHUNK, max_side: int = ENCODE_MAX_SIDE, camera: str = "",
                      link_seconds: float | None = LINK_SECONDS) -> MatchState:
    """Render the deep buffer now (main thread), fit in a worker, store the look ``name`` when it ends.

    Returns the :class:`MatchState` the UI shows (also ``photo_match.current``); set its ``cancel`` (or call
    :func:`cancel`) to stop with the best latent so far. LookError when a match already runs, the photo cannot be
    read or the camera sees nothing. ``link_seconds=None`` sends exactly ``chunk`` steps per request."""
    global current
    if jobs.running:
        raise LookError(f"a photo match is running ({current.line() if current else '…'}): wait for it, or "
                        "cancel it first")
    cam = choose_camera(scene, path, camera)
    photo, buffer = photo_and_buffer(scene, path, camera=cam, max_side=max_side)
    settings = backend_settings()  # read bpy here: the worker thread must not
    scene_name, thumb, base = scene.name, thumbnail_of(photo), os.path.basename(path)
    state = MatchState(name, base, int(steps), cam.name)

    def work() -> Any:
        with connection.open_client(settings) as client:
            try:
                return latent_fitting.fit_photo(client, photo, buffer, steps=steps, chunk=chunk,
                                                progress=_publish(state), cancel=state.cancel.is_set,
                                                max_chunk_s=link_seconds)
            except latent_fitting.FitInterrupted as exc:
                return exc  # delivered to done(): what was fitted may still become a new look

    def done(result: Any) -> str:
        target = bpy.data.scenes.get(scene_name)
        if target is None:
            raise LookError(f"scene {scene_name!r} is gone")
        if isinstance(result, latent_fitting.FitInterrupted):
            raise LookError(_interrupted(target, name, path, thumb, result))
        store_look(target, name, result.latent, source="PHOTO", thumbnail=thumb, photo_path=path)
        return f"look {name!r} matched to {base} through {state.camera!r}: {result.line()}"

    if not jobs.start(f"match {base}", work, done):
        raise LookError("a photo match is running: wait for it, or cancel it first")
    current = state
    return state


def _publish(state: MatchState):
    def progress(p: Any) -> None:  # worker thread: one assignment; the pump's watcher redraws
        state.progress = p
    return progress


def _interrupted(scene: bpy.types.Scene, name: str, path: str, thumb: np.ndarray, exc: Any) -> str:
    """Store what an interrupted fit reached only where it overwrites nothing; the message says which."""
    partial = exc.partial
    if partial is None:
        return f"{exc}"
    if scene.rerender.looks.get(name) is not None:
        return f"{exc}. Look {name!r} keeps its earlier latent; match again when the backend is back"
    store_look(scene, name, partial.latent, source="PHOTO", thumbnail=thumb, photo_path=path)
    return (f"{exc}. The best latent so far is stored as look {name!r} "
            f"(loss {partial.initial_loss:.3f} → {partial.final_loss:.3f}); match again to go on")


def cancel() -> bool:
    """Ask the running match to stop (its best latent so far becomes the look); False when none runs."""
    if current is None or not jobs.running:
        return False
    current.cancel.set()
    return True


def running_state() -> MatchState | None:
    """The running match's state, None when none runs (for the panel)."""
    return current if current is not None and jobs.busy else None


_seen: tuple = ()


def _watcher() -> tuple[bool, bool]:
    """The pump's view of the running match: (its progress changed: redraw, still running: keep polling)."""
    global _seen
    state = running_state()
    key = () if state is None else (id(state), state.progress, state.cancel.is_set())
    changed, _seen = key != _seen, key
    return changed, state is not None


# --- operators ----------------------------------------------------------------------------------------------------

class RERENDER_OT_match_photo(PhotoLookOperator, bpy.types.Operator):
    """Fit a look to a photo: start from the photo's encoding and optimise it against the photo, seen through its
    COLMAP camera (or the scene camera). Runs in the background; Esc or Cancel keeps the best look so far"""

    bl_idname = "rerender.match_photo"
    bl_label = "Match Photo"

    steps: bpy.props.IntProperty(name="Steps", default=DEFAULT_STEPS, min=1, max=5000,
                                 description="Optimisation steps (more: closer to the photo, slower)")
    chunk: bpy.props.IntProperty(name="Steps per Request", default=DEFAULT_CHUNK, min=1, max=500,
                                 description="At most this many steps per backend request (fewer when they are "
                                             "slow): progress and cancel act between requests")
    camera: bpy.props.StringProperty(name="Camera", description="Camera object to see the photo through; empty = "
                                     "the photo's imported COLMAP camera if the scene has it, else the scene camera")

    _timer = None
    _generation = 0

    @runs_jobs_after
    def execute(self, context: bpy.types.Context) -> set[str]:
        name = self.look_name()
        try:
            state = match_photo_async(context.scene, self.filepath, name, steps=self.steps, chunk=self.chunk,
                                      max_side=self.max_side, camera=self.camera)
        except (LookError, RuntimeError) as exc:  # RuntimeError: the deep buffer render failed
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Matching {os.path.basename(self.filepath)} as look {name!r} through "
                              f"{state.camera!r} (Esc to stop) …")
        if bpy.app.background or context.window is None:  # no events to wait for: scripts wait on `jobs`
            return {"FINISHED"}
        wm = context.window_manager
        self._generation = jobs.generation
        self._timer = wm.event_timer_add(MODAL_TICK_S, window=context.window)
        wm.progress_begin(0, max(1, state.steps))
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        state = current
        if event.type == "ESC" and event.value == "PRESS":
            cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}  # the UI stays fully usable while the backend fits
        wm = context.window_manager
        if state is not None and jobs.running:
            wm.progress_update(int(state.fraction * state.steps))
            if context.workspace is not None:
                context.workspace.status_text_set(f"{state.line()}   (Esc: stop and keep the best so far)")
            return {"PASS_THROUGH"}
        self._finish(context)
        jobs.deliver()  # unless the pump already did; either way the outcome is the runner's last message
        if jobs.generation != self._generation and jobs.messages:
            level, message = jobs.messages[-1]
            self.report({"ERROR" if level == "ERROR" else "INFO"}, message)
        return {"FINISHED"}

    def cancel(self, context: bpy.types.Context) -> None:  # Blender ends the modal (file closed, window gone)
        cancel()
        self._finish(context)

    def _finish(self, context: bpy.types.Context) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)


class RERENDER_OT_cancel_match(bpy.types.Operator):
    """Stop the running photo match; its best latent so far becomes the look"""

    bl_idname = "rerender.cancel_match"
    bl_label = "Cancel Match"

    def execute(self, context: bpy.types.Context) -> set[str]:
        if not cancel():
            self.report({"INFO"}, "No photo match is running")
            return {"CANCELLED"}
        return {"FINISHED"}


def draw_match(layout: bpy.types.UILayout) -> None:
    """The running match (progress and Cancel) and the last match messages, in the Looks box."""
    state = running_state()
    if state is not None:
        row = layout.row(align=True)
        if hasattr(row, "progress"):  # UILayout.progress: Blender 4.0+
            row.progress(factor=state.fraction, type="BAR", text=state.line()[:90])
        else:
            row.label(text=state.line()[:90], icon="SORTTIME")
        row.operator(RERENDER_OT_cancel_match.bl_idname, text="", icon="CANCEL")
    for level, message in jobs.messages[-1:]:
        layout.label(text=message[:90], icon="ERROR" if level == "ERROR" else "INFO")


CLASSES = (RERENDER_OT_match_photo, RERENDER_OT_cancel_match)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    from . import jobs as job_pump

    job_pump.watch(_watcher)


def unregister() -> None:
    from . import jobs as job_pump

    job_pump.unwatch(_watcher)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
