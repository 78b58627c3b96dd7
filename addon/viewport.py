"""Viewport preview (docs/addon.md, "Viewport preview"): the rerendered frame in the 3D viewport's Rendered mode.

Why this shape: the viewport must never wait for the network. ``view_draw`` (main thread, GPU context) rasterizes
the point cloud at a reduced resolution with the ``gpu`` module (gpu_raster.py; EEVEE's nested render cannot run
inside a draw call) and *offers* the deep buffer to a :class:`LatestWinsRequester`. A daemon thread with its own
bridge client (ZeroMQ sockets are not thread-safe) sends only the newest offer: while one frame is at the backend,
newer offers replace each other and the stale ones are dropped, never queued, so the preview follows the camera
instead of replaying its past. When an image lands, the thread only sets a flag; the add-on's job pump
(``jobs.py``, its one main-thread timer) turns the flag into ``tag_redraw()`` (bpy must not be touched from other
threads), and the next ``view_draw`` draws the last image with a GPU texture.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._bridge import DeepBuffer, bridge

PREVIEW_SCALE = 0.5  # fraction of the viewport's size rasterized and rerendered
PREVIEW_MULTIPLE = 16  # preview sizes are rounded to this (U-Nets need multiples of 2**depth)


@dataclass(frozen=True)
class PreviewFrame:
    """An image the backend returned for an offered buffer; ``generation`` is the offer's number."""

    generation: int
    image: np.ndarray  # uint8 sRGB H x W x 3, row 0 = top
    seconds: float     # round trip of this frame


def preview_size(width: int, height: int, scale: float = PREVIEW_SCALE) -> tuple[int, int]:
    """The rasterized size for a viewport of ``width`` x ``height``: scaled, rounded to PREVIEW_MULTIPLE, >= 16."""
    def fit(v: int) -> int:
        return max(PREVIEW_MULTIPLE, int(round(v * scale / PREVIEW_MULTIPLE)) * PREVIEW_MULTIPLE)

    return fit(width), fit(height)


class LatestWinsRequester:
    """Sends the newest offered (buffer, latent) to the backend from a daemon thread; stale offers are dropped.

    ``on_frame`` (optional) is called from the worker thread after each new frame; keep it thread-safe (set a flag).
    Errors are kept in ``error`` (artist-facing text from ``explain``) rather than raised into the draw loop.
    """

    def __init__(self, address: str, timeout: float = 10.0, *,
                 on_frame: Callable[[PreviewFrame], None] | None = None,
                 explain: Callable[[BaseException], str] | None = None, security: Any = None) -> None:
        self.address = address
        self.timeout = timeout
        self.security = security  # CURVE keys (bridge.security.ClientCurve) or None
        self.on_frame = on_frame
        self._explain = explain or (lambda exc: f"{type(exc).__name__}: {exc}")
        self._cond = threading.Condition()
        self._offer: tuple[int, DeepBuffer, np.ndarray] | None = None
        self._generation = 0
        self._stopped = False
        self.latest: PreviewFrame | None = None
        self.error: str = ""
        self.offered = self.sent = self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="rerender-viewport", daemon=True)
        self._thread.start()

    def offer(self, buffer: DeepBuffer, latent: np.ndarray) -> int:
        """Hand over the newest buffer; returns its generation. Never blocks on the network."""
        with self._cond:
            if self._offer is not None:
                self.dropped += 1  # never sent: a newer view replaced it
            self._generation += 1
            self._offer = (self._generation, buffer, np.asarray(latent, np.float32))
            self.offered += 1
            self._cond.notify()
            return self._generation

    def wait_for(self, generation: int, timeout: float) -> PreviewFrame | None:
        """Block until a frame of at least ``generation`` landed (tests and scripts; never the draw loop)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.latest is None or self.latest.generation < generation:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped:
                    return None
                self._cond.wait(left)
            return self.latest

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        client: Any = None
        try:
            while True:
                with self._cond:
                    while self._offer is None and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                    generation, buffer, latent = self._offer
                    self._offer = None
                if client is None:
                    client = bridge.Client(self.address, timeout=self.timeout, security=self.security)
                started = time.perf_counter()
                try:
                    image = client.rerender(buffer, latent)
                except Exception as exc:  # noqa: BLE001 - shown in the viewport, never raised into drawing
                    client.close()
                    client = None
                    self.error = self._explain(exc)
                    continue
                self.sent += 1
                frame = PreviewFrame(generation, np.asarray(image), time.perf_counter() - started)
                with self._cond:
                    self.latest = frame
                    self.error = ""
                    self._cond.notify_all()
                if self.on_frame is not None:
                    self.on_frame(frame)
        finally:
            if client is not None:
                client.close()


# --- drawing (main thread, inside view_draw) ---------------------------------------------------------------------

def draw_image(image: np.ndarray, width: int, height: int) -> None:
    """Draw an sRGB uint8 image (row 0 = top) stretched over the viewport region."""
    import gpu
    from gpu_extras.presets import draw_texture_2d

    h, w = image.shape[:2]
    rgba = np.concatenate([image[::-1].astype(np.float32) / 255.0, np.ones((h, w, 1), np.float32)], axis=2)
    pixels = gpu.types.Buffer("FLOAT", w * h * 4, rgba.ravel())
    texture = gpu.types.GPUTexture((w, h), format="RGBA16F", data=pixels)
    gpu.state.blend_set("ALPHA_PREMULT")
    draw_texture_2d(texture, (0, 0), width, height)
    gpu.state.blend_set("NONE")


# --- the engine's viewport session (main thread) -----------------------------------------------------------------

class ViewportSession:
    """What ``RerenderEngine.view_update/view_draw`` delegate to: one per Blender session, shared by viewports.

    Each draw rasterizes the current view with the gpu module only when the view, the frame or the scene changed,
    offers it (latest wins), and draws the newest image that came back. A timer turns "a frame landed" into
    ``tag_redraw`` on the main thread."""

    def __init__(self) -> None:
        self.requester: LatestWinsRequester | None = None
        self._address = ""
        self._last_key: tuple | None = None
        self._dirty = True
        self._engines: list = []
        self._landed = threading.Event()

    def mark_dirty(self) -> None:
        self._dirty = True

    def _ensure_requester(self, settings) -> LatestWinsRequester:
        from . import connection

        link = (settings.address, settings.server_key, settings.client_key_file)
        if self.requester is None or self._address != link:
            if self.requester is not None:
                self.requester.stop(0.5)
            try:
                security = settings.curve()
            except connection.BackendProblem:
                security = None  # the status check shows the key problem; nothing is offered until it connects
            self.requester = LatestWinsRequester(settings.address, settings.timeout,
                                                 on_frame=lambda _frame: self._landed.set(),
                                                 explain=lambda exc: connection.explain(exc, settings),
                                                 security=security)
            self._address = link
        return self.requester

    def _redraw_watcher(self) -> tuple[bool, float | bool]:
        """Polled by the add-on's job pump (``jobs.py``): a landed frame becomes ``tag_redraw`` of every viewport
        engine; asks to be polled again in 50 ms while any viewport shows the preview."""
        if self._landed.is_set():
            self._landed.clear()
            alive = []
            for engine in self._engines:
                try:
                    engine.tag_redraw()
                    alive.append(engine)
                except ReferenceError:  # the viewport closed: its engine is gone
                    pass
            self._engines = alive
        return False, (0.05 if self._engines else False)

    def draw(self, engine, context, depsgraph) -> None:
        from . import connection, jobs, properties
        from .preferences import backend_settings

        region, view = context.region, context.region_data
        if engine not in self._engines:
            self._engines.append(engine)
        jobs.watch(self._redraw_watcher)  # both cheap when already so; the pump may have been stopped (add-on
        jobs.ensure_pump()  # disabled and enabled again) while this viewport kept drawing
        settings = backend_settings()
        requester = self._ensure_requester(settings)
        size = preview_size(region.width, region.height)
        key = (tuple(round(v, 6) for row in view.perspective_matrix for v in row), size,
               depsgraph.scene_eval.frame_current)
        status = connection.monitor.status
        if key != self._last_key or self._dirty:
            scene = depsgraph.scene_eval
            latent = properties.read_latent(scene)
            expected = status.latent_size
            if not status.connected:
                connection.monitor.request(settings)  # returns at once; the panel timer redraws
            elif expected and latent.size != expected:
                engine.update_stats("Neural Rerender", f"the look has {latent.size} values, the model {expected}: "
                                                       "click 'Match Model'")
            else:
                from .gpu_raster import rasterize, scene_points

                xyz, colors, labels = scene_points(depsgraph.scene, max_points=1_000_000)
                splat = properties.splat_px(depsgraph.scene) or 1.5
                buffer = rasterize(xyz, colors, labels, np.array(view.view_matrix), np.array(view.window_matrix),
                                   size, splat * size[0] / max(1, region.width))
                requester.offer(buffer, latent if latent.size else np.zeros(expected, np.float32))
                self._last_key, self._dirty = key, False
        frame = requester.latest
        if requester.error:
            engine.update_stats("Neural Rerender", requester.error)
        elif frame is not None:
            engine.update_stats("Neural Rerender", f"preview {frame.image.shape[1]}×{frame.image.shape[0]}, "
                                                   f"{frame.seconds * 1000:.0f} ms")
        if frame is not None:
            draw_image(frame.image, region.width, region.height)

    def stop(self) -> None:
        from . import jobs

        jobs.unwatch(self._redraw_watcher)
        if self.requester is not None:
            self.requester.stop(0.5)
            self.requester = None
        self._engines.clear()


session = ViewportSession()
