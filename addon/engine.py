"""The "Neural Rerender" render engine (``bl_idname = "RERENDER"``, docs/design.md §6).

Per frame: rasterize the point cloud from the shot camera with EEVEE in the hidden helper scene (the teammate's
``render_deep_buffer``, the same code that made the training buffers), send that deep buffer and the frame's
appearance latent to the backend, and write the returned image as ``Combined`` plus the deep buffer's own passes
(``Depth``, ``Albedo``, ``Label``, ``Mask``). Because it is an ordinary engine, F12, Ctrl+F12, ``blender -b -a``,
the compositor, File Output nodes and render farms work unchanged.

Why ``bl_use_gpu_context = False``: the nested EEVEE render of the helper scene deadlocks when the engine holds the
GPU context (docs/addon.md). Why the errors are reported with ``self.report({'ERROR'})``: that stops
an animation render at the failing frame and makes ``bpy.ops.render.render`` raise with the message, instead of
writing a hundred black frames each after a timeout.
"""

from __future__ import annotations

import time

import bpy
import numpy as np

from . import batch, connection, properties, viewport
from ._bridge import DeepBuffer, bridge
from .deep_buffer import DeepBufferError, render_deep_buffer
from .pixels import PassWriter, PixelsError
from .preferences import backend_settings

ENGINE_ID = "RERENDER"

# name -> (channels, channel ids, pass type) of the passes besides Combined
EXTRA_PASSES: dict[str, tuple[int, str, str]] = {
    "Depth": (1, "Z", "VALUE"),
    "Albedo": (3, "RGB", "COLOR"),
    "Label": (1, "X", "VALUE"),
    "Mask": (1, "X", "VALUE"),
}


BREAK_POLL_S = 0.1  # while waiting for the backend, Esc is checked this often

# Seconds spent in each step of the last frame rendered by this process (the stats line and benchmarks read it).
last_frame_timings: dict[str, float] = {}
# frame -> the latent sent to the backend for it, in this process (tests check it against the F-curves).
last_latents: dict[int, np.ndarray] = {}


class FrameError(RuntimeError):
    """A frame cannot be rendered; the message tells the artist what to change."""


def pass_pixels(buffer: DeepBuffer, image: np.ndarray, *, transparent: bool) -> dict[str, np.ndarray]:
    """Every pass of one frame as float32 arrays H x W x C, rows bottom-up (Blender's pass order), from the
    backend's sRGB image (uint8 or float). With a transparent film the Combined alpha is the point mask, otherwise
    1 (the network paints every pixel, sky included). Lookup tables and reused arrays: see addon/pixels.py."""
    try:
        return _PASSES.passes(buffer, image, transparent=transparent)
    except PixelsError as exc:
        raise FrameError(str(exc)) from None


_PASSES = PassWriter()


def frame_latent(scene_eval: bpy.types.Scene, expected: int) -> tuple[np.ndarray, str | None]:
    """(latent, warning) for the frame, read from the evaluated scene so F-curves apply."""
    latent = properties.read_latent(scene_eval)
    if expected == 0:  # a bundle trained without appearance (the paper's baselines)
        return np.zeros(0, np.float32), None
    if latent.size == 0:
        return np.zeros(expected, np.float32), ("the scene has no appearance yet: rendered with an all-zero "
                                                "latent; pick a look in the Rerender panel")
    if latent.size != expected:
        raise FrameError(f"the scene's appearance has {latent.size} values but the backend's model expects "
                         f"{expected}: click 'Match Model' in the Rerender panel (Render properties), then key "
                         "the look again")
    if not np.all(np.isfinite(latent)):
        raise FrameError("the scene's appearance latent contains NaN or infinite values: re-key the look")
    return latent, None


def _deep_buffer(scene: bpy.types.Scene, camera: bpy.types.Object, size: tuple[int, int]) -> DeepBuffer:
    """THE rasterizer (deep_buffer.py), at the frame (and subframe) being rendered.

    The context scene is set to the shot scene because Blender evaluates the animation of the linked camera for
    the nested helper render through the context scene: rendering a scene that is not the window's (``render.render
    (scene=...)``, ``blender -b -S``) otherwise draws every frame from the camera's un-animated position.
    """
    with bpy.context.temp_override(scene=scene):
        return render_deep_buffer(scene, camera, resolution=size, splat_px=properties.splat_px(scene))


def _fills_labels(scene: bpy.types.Scene) -> bool:
    """The scene's "Fill Labels with S" toggle (semantics.py): the backend labels pixels no point covers."""
    return bool(scene.rerender.fill_labels)


def _evaluate_at(scene: bpy.types.Scene, frame: int) -> None:
    """Re-evaluate the helper scene at ``frame`` after prefetching later frames, so the linked camera (whose
    original data the nested render updated to a later frame) is back where this frame has it."""
    from .deep_buffer import HELPER_SCENE

    helper = bpy.data.scenes.get(HELPER_SCENE)
    if helper is not None:
        with bpy.context.temp_override(scene=scene):
            helper.frame_set(frame, subframe=scene.frame_subframe)


class RerenderEngine(bpy.types.RenderEngine):
    """Neural Rerender: EEVEE deep buffer → backend network → Combined + Depth/Albedo/Label/Mask passes."""

    bl_idname = ENGINE_ID
    bl_label = "Neural Rerender"
    bl_use_postprocess = True  # compositor and sequencer run on our passes
    bl_use_gpu_context = False  # True deadlocks the nested EEVEE render (blender-facts.md)
    bl_use_preview = False  # no material previews: they would need a backend for every thumbnail
    bl_use_eevee_viewport = True  # Material Preview shows the cloud with EEVEE; Rendered mode calls view_draw

    def view_update(self, context: bpy.types.Context, depsgraph: bpy.types.Depsgraph) -> None:
        """The scene changed: the next draw rasterizes again (cheap; the network call is off the main thread)."""
        viewport.session.mark_dirty()

    def view_draw(self, context: bpy.types.Context, depsgraph: bpy.types.Depsgraph) -> None:
        """Rendered mode: gpu-rasterized preview buffer → backend (latest wins) → the newest image drawn."""
        try:
            viewport.session.draw(self, context, depsgraph)
        except Exception as exc:  # noqa: BLE001 - a draw callback must never raise into Blender's draw loop
            self.update_stats("Neural Rerender", f"preview failed: {type(exc).__name__}: {exc}")

    def update_render_passes(self, scene: bpy.types.Scene | None = None,
                             renderlayer: bpy.types.ViewLayer | None = None) -> None:
        self.register_pass(scene, renderlayer, "Combined", 4, "RGBA", "COLOR")
        for name, (channels, chan_id, kind) in EXTRA_PASSES.items():
            self.register_pass(scene, renderlayer, name, channels, chan_id, kind)

    def render(self, depsgraph: bpy.types.Depsgraph) -> None:
        scene = depsgraph.scene  # the original scene: the helper scene links its objects
        try:
            self._render_frame(depsgraph, scene)
        except (FrameError, connection.BackendProblem, DeepBufferError) as exc:
            self._fail(scene, str(exc))
        except Exception as exc:  # noqa: BLE001 - any other failure still stops the job with a message
            self._fail(scene, f"{type(exc).__name__}: {exc}")
            raise

    def _fail(self, scene: bpy.types.Scene, message: str) -> None:
        batch.pipeline.clear()
        message = f"Neural Rerender, frame {scene.frame_current}: {message}"
        if self.is_animation:
            message += (f" The frames before {scene.frame_current} are saved; to resume at the first missing frame, "
                        "turn off Output > Overwrite and render the animation again.")
        self.report({"ERROR"}, message)
        self.error_set(message)

    def _render_frame(self, depsgraph: bpy.types.Depsgraph, scene: bpy.types.Scene) -> None:
        started = time.perf_counter()
        camera = self.camera_override or scene.camera
        if camera is None:
            raise FrameError("the scene has no active camera: add one or import a reconstruction, then set it "
                             "active (Scene properties > Camera)")
        camera_eval = camera.evaluated_get(depsgraph) if depsgraph is not None else camera
        camera = camera.original
        size = (int(self.resolution_x), int(self.resolution_y))
        frame = scene.frame_current
        settings = backend_settings()
        ahead = batch.lookahead(scene) if self.is_animation else 0

        timings = {"deep_buffer": 0.0, "prefetch": 0.0}
        self._progress(0.0, "connecting to the backend", scene)
        client, info = connection.engine_client(settings)
        batch.pipeline.bind(client)
        timings["connect"] = time.perf_counter() - started
        expected = info.latent_size or 0
        latent, warning = frame_latent(depsgraph.scene_eval, expected)
        if warning:
            self.report({"WARNING"}, warning)
        if self.test_break():
            return self._cancelled()

        key = (scene.name, camera.name, size, properties.splat_px(scene), _fills_labels(scene),
               bool(scene.rerender.hide_transient))
        entry = batch.pipeline.take(frame, key, batch.camera_signature(camera_eval), latent)
        try:
            if entry is None:
                self._progress(0.1, f"rasterizing points {size[0]}×{size[1]}", scene)
                step = time.perf_counter()
                buffer = _deep_buffer(scene, camera, size)
                timings["deep_buffer"] = time.perf_counter() - step
                self._check_size(buffer, size)
                request_id = client.submit_rerender(buffer, latent, fill_labels=_fills_labels(scene))
            else:
                buffer, request_id = entry.buffer, entry.request_id
            if self.test_break():
                client.cancel(request_id)
                return self._cancelled()

            step = time.perf_counter()
            for ahead_frame in batch.frames_ahead(scene, frame, ahead):
                if ahead_frame in batch.pipeline.frames:
                    continue
                self._progress(0.3, f"rasterizing frame {ahead_frame} while the backend works on {frame}", scene)
                batch.pipeline.put(self._prefetch(client, scene, camera, ahead_frame, size, latent, key))
                if self.test_break():
                    client.cancel(request_id)
                    return self._cancelled()
            if batch.pipeline.frames:
                _evaluate_at(scene, frame)  # leave the linked camera as this frame has it
            timings["prefetch"] = time.perf_counter() - step

            self._progress(0.5, "rerendering on the backend", scene)
            step = time.perf_counter()
            result = None
            while result is None:  # short slices so Esc is honoured while the backend works
                result = client.collect_rerender(request_id, wait=BREAK_POLL_S)
                if result is None and self.test_break():
                    client.cancel(request_id)
                    return self._cancelled()
            image, used_labels = result
            if used_labels is not None:  # S filled the empty pixels: the Label pass shows what the network got
                buffer = DeepBuffer(buffer.color, buffer.depth, np.asarray(used_labels), buffer.mask)
            timings["backend"] = time.perf_counter() - step
        except bridge.errors.BridgeError as exc:  # the backend's failures (ZeroMQ's wrapped), told to the artist
            batch.pipeline.clear()
            connection.engine_link.invalidate()
            raise connection.BackendProblem(connection.explain(exc, settings)) from exc
        if self.test_break():
            return self._cancelled()

        self._progress(0.9, "writing passes", scene)
        step = time.perf_counter()
        pixels = pass_pixels(buffer, image, transparent=scene.render.film_transparent)
        self._write_result(pixels, size, depsgraph.view_layer.name)
        timings["write_passes"] = time.perf_counter() - step
        timings["total"] = time.perf_counter() - started
        timings["prefetched"] = float(entry is not None)
        last_frame_timings.clear()
        last_frame_timings.update(timings)
        last_latents[frame] = latent.copy()
        batch.clock.frame_done()
        self._progress(1.0, f"frame {frame} done in {timings['total']:.2f} s (points {timings['deep_buffer']:.2f} s"
                            f"{', prefetched' if entry is not None else ''}, network {timings['backend']:.2f} s)",
                       scene)

    def _prefetch(self, client, scene: bpy.types.Scene, camera: bpy.types.Object, frame: int,
                  size: tuple[int, int], latent_now: np.ndarray, key: tuple) -> batch.Prefetched:
        """Rasterize ``frame`` ahead of time and submit it (the pipelining of docs/addon.md, "Animation renders")."""
        with bpy.context.temp_override(scene=scene):
            buffer = render_deep_buffer(scene, camera, frame=frame, resolution=size,
                                        splat_px=properties.splat_px(scene))
        self._check_size(buffer, size)
        signature = batch.camera_signature(camera)  # the nested render evaluated the camera at ``frame``
        latent = batch.latent_at(scene, frame, latent_now) if latent_now.size else latent_now
        request_id = client.submit_rerender(buffer, latent, fill_labels=_fills_labels(scene))
        return batch.Prefetched(frame, request_id, buffer, latent, signature, key)

    @staticmethod
    def _check_size(buffer: DeepBuffer, size: tuple[int, int]) -> None:
        if buffer.shape != (size[1], size[0]):
            raise FrameError(f"the deep buffer is {buffer.shape[1]}×{buffer.shape[0]}, the render {size[0]}×"
                             f"{size[1]}: check the resolution percentage and the camera's pixel aspect")

    def _cancelled(self) -> None:
        """Esc: forget the frames at the backend (their replies are dropped) and write nothing."""
        batch.pipeline.clear()

    def _write_result(self, pixels: dict[str, np.ndarray], size: tuple[int, int], view_layer: str) -> None:
        for name, (channels, chan_id, _kind) in EXTRA_PASSES.items():
            self.add_pass(name, channels, chan_id, layer=view_layer)
        result = self.begin_result(0, 0, size[0], size[1], layer=view_layer)
        try:
            layer = result.layers[0]
            for name, data in pixels.items():
                render_pass = layer.passes.find_by_name(name, "")
                if render_pass is not None:
                    render_pass.rect.foreach_set(data.ravel())
        except BaseException:
            self.end_result(result, cancel=True)
            raise
        self.end_result(result)

    def _progress(self, fraction: float, what: str, scene: bpy.types.Scene | None = None) -> None:
        """Progress bar and stats line; in an animation the line leads with the frame count and remaining time."""
        self.update_progress(fraction)
        if scene is not None and self.is_animation:
            what = f"{batch.progress_line(scene, scene.frame_current)} | {what}"
        self.update_stats("Neural Rerender", what)


def _compatible_panels() -> list[type]:
    """Blender's own panels that every engine shows (output, format, color management, camera …).

    Blender marks them with 'BLENDER_RENDER' in ``COMPAT_ENGINES``; adding our id makes them appear for us.
    """
    panels = []
    for name in dir(bpy.types):
        cls = getattr(bpy.types, name, None)
        engines = getattr(cls, "COMPAT_ENGINES", None)
        if isinstance(cls, type) and isinstance(engines, set) and "BLENDER_RENDER" in engines:
            panels.append(cls)
    return panels


def register() -> None:
    batch.register()  # the batch settings and job handlers belong to the engine (addon/__init__ lists modules)
    bpy.utils.register_class(RerenderEngine)
    for panel in _compatible_panels():
        panel.COMPAT_ENGINES.add(ENGINE_ID)


def unregister() -> None:
    for panel in _compatible_panels():
        panel.COMPAT_ENGINES.discard(ENGINE_ID)
    connection.engine_link.invalidate()
    viewport.session.stop()
    bpy.utils.unregister_class(RerenderEngine)
    batch.unregister()
