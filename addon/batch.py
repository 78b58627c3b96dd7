"""Batch (animation) renders: pipelining, progress with remaining time, resume (docs/addon.md, "Animation renders").

Pipelining, and why this shape: Blender calls ``RenderEngine.render()`` once per frame, and each call must write
its own frame. The slow parts of a frame are the EEVEE deep buffer (CPU/GPU of the Blender machine) and the network
(the backend's GPU). So in frame N's ``render()`` the engine submits N's buffer without waiting, then rasterizes
the next ``lookahead`` frames (``render_deep_buffer(frame=N+k)`` evaluates the camera at that frame) and submits
them too, and only then collects N's image: EEVEE time for N+1 overlaps backend time for N. Frame N+1's call finds
its request already at (or back from) the backend and only rasterizes N+2.

A prefetched frame is used only if it is still what the frame would send: the camera's world matrix and lens and
the appearance latent read at render time must equal what was read when it was prefetched (drivers, NLA or an edit
between frames make it a miss, and the frame is rasterized again). The latent of a frame ahead is what the scene's
F-curves give at that frame (``latent_at``); frames whose output file exists and will be skipped (Overwrite off)
are never prefetched.

Resume uses Blender's own mechanism, checked with bpy 5.0.1 (tests/test_batch_render.py): with
``render.use_overwrite = False`` an animation render (``-a`` or ``render.render(animation=True)``) skips every frame
whose file exists without calling the engine, so a stopped render restarted the same way continues at the first
missing frame. ``use_placeholder`` additionally lets several farm workers share a sequence.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import bpy
import numpy as np

from .properties import latent_fcurves

DEFAULT_LOOKAHEAD = 1  # one frame ahead already overlaps EEVEE with the backend; more only buffers jitter


class RerenderBatchSettings(bpy.types.PropertyGroup):
    """``scene.rerender_batch``: how animation renders use the backend."""

    pipelining: bpy.props.BoolProperty(
        name="Pipeline Frames", default=True,
        description="While the backend rerenders a frame, rasterize the next frames' deep buffers with EEVEE "
        "(animation renders only); off = one frame at a time",
    )
    lookahead: bpy.props.IntProperty(
        name="Frames Ahead", default=DEFAULT_LOOKAHEAD, min=1, max=8,
        description="How many frames ahead are rasterized and sent while the current one is at the backend",
    )


def lookahead(scene: bpy.types.Scene) -> int:
    """Frames to prefetch in an animation render of ``scene`` (0 when pipelining is off)."""
    settings = getattr(scene, "rerender_batch", None)
    if settings is None:
        return DEFAULT_LOOKAHEAD
    return int(settings.lookahead) if settings.pipelining else 0


# --- what a frame would send -------------------------------------------------------------------------------------

def latent_at(scene: bpy.types.Scene, frame: float, current: np.ndarray) -> np.ndarray:
    """The appearance latent the F-curves give at ``frame``; components without a curve keep ``current``."""
    latent = np.array(current, dtype=np.float32, copy=True)
    for index, fc in latent_fcurves(scene).items():
        if 0 <= index < latent.size:
            latent[index] = fc.evaluate(frame)
    return latent


def camera_signature(camera: bpy.types.Object) -> np.ndarray:
    """World matrix and lens/shift of a camera as one vector: equal signatures draw the same deep buffer."""
    data = camera.data
    lens = [data.lens, data.shift_x, data.shift_y, data.sensor_width, data.sensor_height, data.clip_start,
            data.clip_end]
    return np.concatenate([np.array(camera.matrix_world, np.float64).ravel(), np.array(lens, np.float64)])


def frame_will_be_skipped(scene: bpy.types.Scene, frame: int) -> bool:
    """True when Blender will skip ``frame`` because its file exists and Overwrite is off (resume)."""
    render = scene.render
    return not render.use_overwrite and os.path.exists(render.frame_path(frame=frame))


def frames_ahead(scene: bpy.types.Scene, frame: int, count: int) -> list[int]:
    """The next ``count`` frames of the animation after ``frame`` that will really be rendered."""
    out, step = [], max(1, scene.frame_step)
    nxt = frame + step
    while len(out) < count and nxt <= scene.frame_end:
        if not frame_will_be_skipped(scene, nxt):
            out.append(nxt)
        nxt += step
    return out


# --- frames at the backend ---------------------------------------------------------------------------------------

@dataclass
class Prefetched:
    """One frame rasterized ahead and submitted: what it was made from and its request id."""

    frame: int
    request_id: int
    buffer: object          # DeepBuffer (its passes are written with the image)
    latent: np.ndarray
    camera: np.ndarray      # camera_signature at that frame
    key: tuple              # scene, camera name, size, splat


@dataclass
class FramePipeline:
    """Frames submitted ahead for the animation render in progress (one render job at a time per Blender)."""

    client: object = None
    frames: dict[int, Prefetched] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def bind(self, client: object) -> None:
        """A different client (reconnected) means the old requests are gone with its socket."""
        if client is not self.client:
            self.frames.clear()
            self.client = client

    def take(self, frame: int, key: tuple, camera: np.ndarray, latent: np.ndarray) -> Prefetched | None:
        """The prefetched frame if it still matches what this frame would send, else None (and it is dropped)."""
        entry = self.frames.pop(frame, None)
        if entry is None:
            return None
        if (entry.key == key and entry.latent.shape == latent.shape and np.array_equal(entry.latent, latent)
                and np.allclose(entry.camera, camera, rtol=0, atol=1e-6)):
            self.hits += 1
            return entry
        self.misses += 1
        self._cancel(entry)
        return None

    def put(self, entry: Prefetched) -> None:
        old = self.frames.pop(entry.frame, None)
        if old is not None:
            self._cancel(old)
        self.frames[entry.frame] = entry

    def clear(self) -> None:
        """Forget every prefetched frame (job start/end, error, Esc); their replies will be dropped."""
        for entry in self.frames.values():
            self._cancel(entry)
        self.frames.clear()

    def _cancel(self, entry: Prefetched) -> None:
        if self.client is not None:
            try:
                self.client.cancel(entry.request_id)
            except Exception:  # noqa: BLE001 - a closed client has nothing left to cancel
                pass


pipeline = FramePipeline()


# --- progress and remaining time ---------------------------------------------------------------------------------

@dataclass
class FrameClock:
    """Measured wall time per frame of the running animation render, for the ETA in the stats line."""

    started: float = 0.0
    last: float = 0.0
    frame_times: list[float] = field(default_factory=list)

    def start_job(self) -> None:
        self.started = self.last = time.perf_counter()
        self.frame_times.clear()

    def frame_done(self) -> None:
        now = time.perf_counter()
        if self.last:
            self.frame_times.append(now - self.last)
        self.last = now

    def seconds_per_frame(self) -> float | None:
        """Median of the last few frames (robust to the first frame's warm-up)."""
        recent = self.frame_times[-8:]
        return float(np.median(recent)) if recent else None

    def remaining_s(self, frames_left: int) -> float | None:
        spf = self.seconds_per_frame()
        return None if spf is None else spf * max(0, frames_left)


clock = FrameClock()


def frames_left_after(scene: bpy.types.Scene, frame: int) -> int:
    """Frames of the animation still to render after ``frame`` (existing files skipped on resume not counted)."""
    step = max(1, scene.frame_step)
    return sum(1 for f in range(frame + step, scene.frame_end + 1, step) if not frame_will_be_skipped(scene, f))


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(scene: bpy.types.Scene, frame: int) -> str:
    """'frame 5 of 1–30 · 1.20 s/frame · 0:30 left' for the stats line (no ETA before one frame is measured)."""
    parts = [f"frame {frame} of {scene.frame_start}–{scene.frame_end}"]
    spf = clock.seconds_per_frame()
    if spf is not None:
        left = clock.remaining_s(frames_left_after(scene, frame))
        parts += [f"{spf:.2f} s/frame", f"{format_duration(left)} left"]
    return " · ".join(parts)


# --- render job boundaries ---------------------------------------------------------------------------------------

def _is_nested(scene) -> bool:
    """The deep-buffer helper scene's own (nested) renders fire the same handlers: they are not job boundaries."""
    from .deep_buffer import HELPER_SCENE

    return scene is not None and getattr(scene, "name", "") == HELPER_SCENE


@bpy.app.handlers.persistent
def _on_job_start(scene, _depsgraph=None) -> None:
    if _is_nested(scene):
        return
    pipeline.clear()
    clock.start_job()


@bpy.app.handlers.persistent
def _on_job_end(scene, _depsgraph=None) -> None:
    if _is_nested(scene):
        return
    pipeline.clear()


_HANDLERS = ((bpy.app.handlers.render_init, _on_job_start), (bpy.app.handlers.render_complete, _on_job_end),
             (bpy.app.handlers.render_cancel, _on_job_end))


def register() -> None:
    bpy.utils.register_class(RerenderBatchSettings)
    bpy.types.Scene.rerender_batch = bpy.props.PointerProperty(type=RerenderBatchSettings)
    for handlers, fn in _HANDLERS:
        if fn not in handlers:
            handlers.append(fn)


def unregister() -> None:
    for handlers, fn in _HANDLERS:
        if fn in handlers:
            handlers.remove(fn)
    pipeline.clear()
    del bpy.types.Scene.rerender_batch
    bpy.utils.unregister_class(RerenderBatchSettings)
