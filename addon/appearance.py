"""The artist's looks: the bundle's appearance gallery, looks encoded from photos, mixes, and keying them on the
timeline (issue 6, items 1-2).

A *look* is a named appearance latent stored on the scene (``scene.rerender.looks``, see ``properties.py``), so
looks travel with the .blend: the gallery fetched from the backend, photos the artist encoded, and mixes. Applying
a look at a frame writes its latent into ``scene.rerender.appearance`` and keys every component there with the
chosen interpolation; F-curves then blend from key to key, and the engine sends each frame the latent the F-curves
give (``depsgraph.scene_eval``).

Why the network calls run in threads: Blender's UI must never wait on a socket (a backend across the network may
take seconds, or never answer). Operators start a :class:`BackgroundJobs` job, which talks to the backend with a
client of its own (ZeroMQ sockets are not thread-safe) and hands its result to the main thread through a
``bpy.app.timers`` callback, the only place that may edit scene data. Scripts and tests call
``jobs.wait()`` and ``jobs.deliver()`` themselves (timers do not run in the ``bpy`` module). The EEVEE deep buffer
of an encode is rendered on the main thread before its job starts: bpy is single-threaded.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import bpy
import numpy as np

from . import connection, properties
from ._bridge import DeepBuffer, bridge
from .preferences import backend_settings

THUMBNAIL_PREFIX = ".rerender look "  # a leading dot hides the images from most image pickers
THUMBNAIL_SIDE = 96
ENCODE_MAX_SIDE = 256  # photos are encoded at most this large: the encoder pools to one vector anyway
ENCODE_MULTIPLE = 16
POLL_S = 0.25


class LookError(ValueError):
    """A look cannot be stored, found or applied; the message says what to do."""


# --- looks on the scene ------------------------------------------------------------------------------------------

def look_latent(look: Any) -> np.ndarray:
    """A stored look's latent as float32."""
    out = np.empty(len(look.latent), np.float32)
    look.latent.foreach_get("value", out)
    return out


def look_names(scene: bpy.types.Scene) -> list[str]:
    return [look.name for look in scene.rerender.looks]


def find_look(scene: bpy.types.Scene, name: str) -> Any:
    """The look called ``name``; LookError listing the scene's looks when there is none."""
    look = scene.rerender.looks.get(name)
    if look is None:
        known = ", ".join(repr(n) for n in look_names(scene)) or "none yet: fetch the gallery or encode a photo"
        raise LookError(f"no look named {name!r} in scene {scene.name!r} (looks: {known})")
    return look


def thumbnail_image(name: str, pixels: np.ndarray) -> bpy.types.Image:
    """A packed image (saved inside the .blend) from uint8 sRGB H x W x 3 pixels, row 0 = top."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise LookError(f"a thumbnail must be uint8 H x W x 3, got {pixels.dtype}{pixels.shape}")
    h, w = pixels.shape[:2]
    image_name = THUMBNAIL_PREFIX + name
    old = bpy.data.images.get(image_name)
    if old is not None:
        bpy.data.images.remove(old)
    image = bpy.data.images.new(image_name, w, h, alpha=False)
    rgba = np.ones((h, w, 4), np.float32)
    rgba[..., :3] = pixels[::-1] / 255.0  # Blender stores rows bottom-up
    image.pixels.foreach_set(rgba.ravel())
    image.pack()
    image.use_fake_user = True  # no material uses it: without a fake user it would not be saved
    return image


def image_pixels(image: bpy.types.Image) -> np.ndarray:
    """uint8 sRGB H x W x 3, row 0 = top, of a byte image (thumbnails, photos: their stored 8-bit values)."""
    w, h = image.size
    rgba = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(rgba)
    rgb = rgba.reshape(h, w, 4)[::-1, :, :3]
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def store_look(scene: bpy.types.Scene, name: str, latent: np.ndarray | Sequence[float], *, source: str = "GALLERY",
               thumbnail: np.ndarray | None = None, photo_path: str = "") -> Any:
    """Add (or replace) the look ``name`` on the scene; returns it."""
    name = str(name).strip()
    if not name:
        raise LookError("a look needs a name")
    vec = np.asarray(latent, np.float32).ravel()
    if vec.size == 0 or not np.all(np.isfinite(vec)):
        raise LookError(f"look {name!r}: the latent must be a non-empty vector of finite numbers")
    looks = scene.rerender.looks
    look = looks.get(name)
    if look is None:
        look = looks.add()
        look.name = name
    look.latent.clear()
    for v in vec:
        look.latent.add().value = float(v)
    look.source = source
    look.photo_path = photo_path
    if thumbnail is not None and np.asarray(thumbnail).size:
        look.thumbnail = thumbnail_image(name, thumbnail).name
    return look


def store_gallery(scene: bpy.types.Scene, appearances: Sequence[Any]) -> int:
    """Store the backend's gallery (``bridge.Client.appearances()``) as looks; returns how many."""
    for entry in appearances:
        store_look(scene, entry.name, entry.latent, source="GALLERY", thumbnail=entry.thumbnail)
    return len(appearances)


def _check_model_size(latent: np.ndarray) -> None:
    status = connection.monitor.status
    if status.connected and status.latent_size and status.latent_size != latent.size:
        raise LookError(f"this look has {latent.size} values but the connected model expects "
                        f"{status.latent_size}: it was made for another bundle; fetch the gallery again or "
                        "re-encode the photo")


def key_interpolation(scene: bpy.types.Scene, frame: float, interpolation: str) -> int:
    """Give every latent key at ``frame`` the interpolation towards the next key; returns how many were set."""
    if interpolation not in {item[0] for item in properties.INTERPOLATIONS}:
        raise LookError(f"interpolation must be one of {[i[0] for i in properties.INTERPOLATIONS]}, "
                        f"got {interpolation!r}")
    count = 0
    for fc in properties.latent_fcurves(scene).values():
        for point in fc.keyframe_points:
            if abs(point.co.x - frame) < 1e-4:
                point.interpolation = interpolation
                count += 1
        fc.update()
    return count


def apply_look(scene: bpy.types.Scene, name: str, frame: int | None = None, *,
               interpolation: str | None = None, key: bool = True) -> np.ndarray:
    """Make look ``name`` the scene's appearance and (``key=True``) key every component at ``frame``.

    ``interpolation`` (LINEAR, BEZIER, CONSTANT; default the scene's choice) is how the keys blend into the next
    keyed look. Returns the applied latent.
    """
    latent = look_latent(find_look(scene, name))
    _check_model_size(latent)
    properties.set_latent(scene, latent)
    scene.rerender.appearance_name = name
    if key:
        frame = scene.frame_current if frame is None else int(frame)
        properties.key_latent(scene, frame)
        key_interpolation(scene, frame, interpolation or scene.rerender.look_interpolation)
    return latent


def mix_latents(a: np.ndarray, b: np.ndarray, factor: float, scale: float = 1.0) -> np.ndarray:
    """``scale * ((1 - factor) * a + factor * b)``: a slider between two looks, and a nudge of its strength."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise LookError(f"cannot mix looks of {a.size} and {b.size} values: they come from different bundles")
    if not (np.isfinite(factor) and np.isfinite(scale)):
        raise LookError("mix factor and scale must be finite numbers")
    return (float(scale) * ((1.0 - float(factor)) * a + float(factor) * b)).astype(np.float32)


def mix_looks(scene: bpy.types.Scene, a: str, b: str, factor: float, scale: float = 1.0, *,
              store_as: str = "", frame: int | None = None, key: bool = False,
              interpolation: str | None = None) -> np.ndarray:
    """Set the scene's appearance to a mix of looks ``a`` and ``b`` (optionally stored as a look, and keyed)."""
    latent = mix_latents(look_latent(find_look(scene, a)), look_latent(find_look(scene, b)), factor, scale)
    _check_model_size(latent)
    properties.set_latent(scene, latent)
    scene.rerender.appearance_name = store_as or f"{a} × {1 - factor:.2f} + {b} × {factor:.2f}"
    if store_as:
        store_look(scene, store_as, latent, source="MIX")
    if key:
        frame = scene.frame_current if frame is None else int(frame)
        properties.key_latent(scene, frame)
        key_interpolation(scene, frame, interpolation or scene.rerender.look_interpolation)
    return latent


# --- photos ------------------------------------------------------------------------------------------------------

def encode_size(width: int, height: int, max_side: int = ENCODE_MAX_SIDE,
                multiple: int = ENCODE_MULTIPLE) -> tuple[int, int]:
    """(width, height) to encode a photo at: its aspect, at most ``max_side``, multiples of ``multiple``."""
    if width < 1 or height < 1:
        raise LookError(f"the photo has no pixels ({width} x {height})")
    scale = min(1.0, max_side / max(width, height))
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    return w, h


def load_photo(path: str, size: tuple[int, int] | None = None,
               max_side: int = ENCODE_MAX_SIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 sRGB H x W x 3 resized to ``size`` (w, h) or to :func:`encode_size`, original (w, h)).

    Read with Blender's own image loader (no Pillow inside Blender); the image is removed again, so the photo
    itself does not end up in the .blend.
    """
    path = bpy.path.abspath(path)
    if not os.path.isfile(path):
        raise LookError(f"photo {path!r} does not exist: choose an image file (JPEG, PNG, ...)")
    try:
        image = bpy.data.images.load(path, check_existing=False)
    except RuntimeError as exc:
        raise LookError(f"Blender cannot read {path!r} as an image ({exc})") from None
    try:
        original = tuple(int(v) for v in image.size)
        if 0 in original:
            raise LookError(f"Blender cannot read {path!r} as an image (no pixels): choose a JPEG, PNG, ... file")
        target = size or encode_size(*original, max_side=max_side)
        if tuple(target) != original:
            image.scale(int(target[0]), int(target[1]))
        return image_pixels(image), original
    finally:
        bpy.data.images.remove(image)


def photo_and_buffer(scene: bpy.types.Scene, path: str, camera: bpy.types.Object | None = None,
                     max_side: int = ENCODE_MAX_SIDE) -> tuple[np.ndarray, DeepBuffer]:
    """The photo resized to the encode size, and the deep buffer of the camera's current view at that size.

    Why the current view: a photo the artist opens has no calibrated camera; the encoder needs a deep buffer next
    to the photo, and the view the artist is looking at (framed like the photo) is the best stand-in.
    """
    from .deep_buffer import render_deep_buffer

    camera = camera or scene.camera
    if camera is None:
        raise LookError("the scene has no active camera: set one (Scene properties > Camera) and frame the view "
                        "the photo shows, then encode again")
    photo = load_photo(path, max_side=max_side)[0]
    size = (photo.shape[1], photo.shape[0])
    with bpy.context.temp_override(scene=scene):
        buffer = render_deep_buffer(scene, camera, resolution=size, splat_px=properties.splat_px(scene))
    if buffer.coverage() == 0.0:
        raise LookError(f"camera {camera.name!r} sees no points: frame the reconstruction like the photo, then "
                        "encode again")
    return photo, buffer


def thumbnail_of(photo: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """A small copy of a photo (nearest neighbour: thumbnails need no better) for the look list."""
    h, w = photo.shape[:2]
    scale = min(1.0, side / max(h, w))
    th, tw = max(1, int(h * scale)), max(1, int(w * scale))
    rows = (np.arange(th) * h // th).astype(np.intp)
    cols = (np.arange(tw) * w // tw).astype(np.intp)
    return np.ascontiguousarray(photo[rows][:, cols])


# --- the backend, off the UI thread -------------------------------------------------------------------------------

@dataclass
class _Job:
    what: str
    on_done: Callable[[Any], Any]
    thread: threading.Thread | None = None
    result: Any = None
    error: BaseException | None = None
    started: float = field(default_factory=time.monotonic)


class BackgroundJobs:
    """Backend calls in daemon threads; their results are applied on the main thread by :meth:`deliver`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: list[_Job] = []
        self.messages: list[tuple[str, str]] = []  # (level INFO/ERROR, text), newest last, for the panel
        self.generation = 0

    @property
    def busy(self) -> list[str]:
        with self._lock:
            return [job.what for job in self._jobs]

    def start(self, what: str, work: Callable[[], Any], on_done: Callable[[Any], Any]) -> None:
        """Run ``work()`` in a thread; ``on_done(result)`` runs later on the main thread (in :meth:`deliver`)."""
        job = _Job(what, on_done)

        def run() -> None:
            try:
                job.result = work()
            except BaseException as exc:  # noqa: BLE001 - every failure is reported to the artist
                job.error = exc

        job.thread = threading.Thread(target=run, name=f"rerender-{what}", daemon=True)
        with self._lock:
            self._jobs.append(job)
        job.thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every job's thread ended (scripts and tests only); True if all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in list(self._jobs):
            job.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(job.thread.is_alive() for job in list(self._jobs))

    def deliver(self) -> list[tuple[str, str]]:
        """Apply finished jobs on the calling (main) thread; returns the (level, message) pairs they produced."""
        with self._lock:
            done = [job for job in self._jobs if not job.thread.is_alive()]
            self._jobs = [job for job in self._jobs if job.thread.is_alive()]
        produced = []
        for job in done:
            if job.error is None:
                try:
                    produced.append(("INFO", str(job.on_done(job.result) or f"{job.what}: done")))
                except Exception as exc:  # noqa: BLE001
                    produced.append(("ERROR", f"{job.what}: {exc}"))
            else:
                produced.append(("ERROR", f"{job.what}: {_explain(job.error)}"))
        if produced:
            self.messages = (self.messages + produced)[-5:]
            self.generation += 1
        return produced


def _explain(exc: BaseException) -> str:
    if isinstance(exc, (LookError, connection.BackendProblem)):
        return str(exc)
    return connection.explain(exc, backend_settings())


jobs = BackgroundJobs()


def _client() -> Any:
    settings = backend_settings()
    return bridge.Client(settings.address, timeout=settings.timeout)


def fetch_gallery_async(scene_name: str) -> None:
    """Fetch the bundle's gallery in a thread; store it as looks of scene ``scene_name`` when it arrives."""
    def work() -> list:
        with _client() as client:
            return client.appearances()

    def done(appearances: list) -> str:
        scene = bpy.data.scenes.get(scene_name)
        if scene is None:
            raise LookError(f"scene {scene_name!r} is gone")
        count = store_gallery(scene, appearances)
        return f"{count} gallery looks fetched" if count else "the model's gallery is empty"

    jobs.start("fetch gallery", work, done)
    _start_timer()


def encode_photo_async(scene: bpy.types.Scene, path: str, name: str, max_side: int = ENCODE_MAX_SIDE) -> None:
    """Render the deep buffer now (main thread), encode in a thread, store the look ``name`` when it arrives."""
    photo, buffer = photo_and_buffer(scene, path, max_side=max_side)
    scene_name, thumb = scene.name, thumbnail_of(photo)

    def work() -> np.ndarray:
        with _client() as client:
            return client.encode(photo, buffer)

    def done(latent: np.ndarray) -> str:
        target = bpy.data.scenes.get(scene_name)
        if target is None:
            raise LookError(f"scene {scene_name!r} is gone")
        store_look(target, name, latent, source="PHOTO", thumbnail=thumb, photo_path=path)
        return f"look {name!r} encoded from {os.path.basename(path)}"

    jobs.start(f"encode {os.path.basename(path)}", work, done)
    _start_timer()


def _deliver_timer() -> float | None:
    if jobs.deliver():
        from .panels import _redraw

        _redraw()
    return POLL_S if jobs.busy else None


def _start_timer() -> None:
    if not bpy.app.background and not bpy.app.timers.is_registered(_deliver_timer):
        bpy.app.timers.register(_deliver_timer, first_interval=POLL_S)


# --- operators ---------------------------------------------------------------------------------------------------

class RERENDER_OT_fetch_gallery(bpy.types.Operator):
    """Fetch the model bundle's appearance gallery (one look per training photo) into the scene's looks"""

    bl_idname = "rerender.fetch_gallery"
    bl_label = "Fetch Gallery"

    def execute(self, context: bpy.types.Context) -> set[str]:
        fetch_gallery_async(context.scene.name)
        self.report({"INFO"}, "Fetching the gallery from the backend …")
        return {"FINISHED"}


class RERENDER_OT_apply_look(bpy.types.Operator):
    """Make this look the scene's appearance and key it at the frame (F-curves blend between keyed looks)"""

    bl_idname = "rerender.apply_look"
    bl_label = "Apply at Frame"
    bl_options = {"REGISTER", "UNDO"}

    name: bpy.props.StringProperty(name="Look", description="Name of the look; empty = the active one")
    frame: bpy.props.IntProperty(name="Frame", description="Frame to key; -1 = the current frame", default=-1)
    interpolation: bpy.props.EnumProperty(name="Interpolation", items=(("SCENE", "Scene Setting", ""),)
                                          + properties.INTERPOLATIONS, default="SCENE")
    key: bpy.props.BoolProperty(name="Insert Keyframes", default=True)

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        name = self.name or _active_look_name(scene)
        try:
            apply_look(scene, name, None if self.frame < 0 else self.frame, key=self.key,
                       interpolation=None if self.interpolation == "SCENE" else self.interpolation)
        except LookError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class RERENDER_OT_mix_looks(bpy.types.Operator):
    """Set the appearance to a mix of two looks, scaled; optionally store the mix as a look and key it"""

    bl_idname = "rerender.mix_looks"
    bl_label = "Mix Looks"
    bl_options = {"REGISTER", "UNDO"}

    a: bpy.props.StringProperty(name="Look A", description="Empty = the scene's Look A")
    b: bpy.props.StringProperty(name="Look B", description="Empty = the scene's Look B")
    factor: bpy.props.FloatProperty(name="Mix", default=-1.0, soft_min=0.0, soft_max=1.0,
                                    description="0 = A, 1 = B; negative = the scene's slider")
    scale: bpy.props.FloatProperty(name="Scale", default=0.0, description="0 = the scene's scale")
    store_as: bpy.props.StringProperty(name="Store As", description="Also keep the mix as a look of this name")
    key: bpy.props.BoolProperty(name="Insert Keyframes", default=False)

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.rerender
        try:
            mix_looks(context.scene, self.a or settings.mix_a, self.b or settings.mix_b,
                      settings.mix_factor if self.factor < 0 else self.factor,
                      self.scale or settings.mix_scale, store_as=self.store_as, key=self.key)
        except LookError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class RERENDER_OT_encode_photo(bpy.types.Operator):
    """Encode the appearance of a photo (seen through the current camera's deep buffer) into a named look"""

    bl_idname = "rerender.encode_photo"
    bl_label = "Encode Photo"

    filepath: bpy.props.StringProperty(subtype="FILE_PATH")
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    name: bpy.props.StringProperty(name="Look Name", description="Empty = the photo's file name")
    max_side: bpy.props.IntProperty(name="Size", default=ENCODE_MAX_SIDE, min=32, max=2048,
                                    description="Longest side, in pixels, of the photo and deep buffer encoded")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        name = self.name or os.path.splitext(os.path.basename(self.filepath))[0]
        try:
            encode_photo_async(context.scene, self.filepath, name, self.max_side)
        except (LookError, RuntimeError) as exc:  # RuntimeError: the deep buffer render failed
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Encoding {os.path.basename(self.filepath)} as look {name!r} …")
        return {"FINISHED"}


class RERENDER_OT_remove_look(bpy.types.Operator):
    """Remove the active look (and its thumbnail) from the scene"""

    bl_idname = "rerender.remove_look"
    bl_label = "Remove Look"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.rerender
        if not 0 <= settings.looks_index < len(settings.looks):
            return {"CANCELLED"}
        look = settings.looks[settings.looks_index]
        image = bpy.data.images.get(look.thumbnail) if look.thumbnail else None
        if image is not None:
            bpy.data.images.remove(image)
        settings.looks.remove(settings.looks_index)
        settings.looks_index = max(0, min(settings.looks_index, len(settings.looks) - 1))
        return {"FINISHED"}


def _active_look_name(scene: bpy.types.Scene) -> str:
    looks = scene.rerender.looks
    index = scene.rerender.looks_index
    return looks[index].name if 0 <= index < len(looks) else ""


def look_icon(look: Any) -> int:
    """Icon id of a look's thumbnail (0 when it has none, or previews are unavailable, as in background mode)."""
    image = bpy.data.images.get(look.thumbnail) if look.thumbnail else None
    if image is None or bpy.app.background:
        return 0
    image.preview_ensure()
    return image.preview.icon_id


class RERENDER_UL_looks(bpy.types.UIList):
    """The look list: thumbnail, name, source; searchable with the list's filter field (by name)."""

    bl_idname = "RERENDER_UL_looks"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):  # noqa: D102
        icon_value = look_icon(item)
        row = layout.row(align=True)
        if icon_value:
            row.label(text="", icon_value=icon_value)
        row.prop(item, "name", text="", emboss=False)
        row.label(text=item.source.title())
        op = row.operator(RERENDER_OT_apply_look.bl_idname, text="", icon="KEY_HLT")
        op.name = item.name


CLASSES = (RERENDER_OT_fetch_gallery, RERENDER_OT_apply_look, RERENDER_OT_mix_looks, RERENDER_OT_encode_photo,
           RERENDER_OT_remove_look, RERENDER_UL_looks)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    if bpy.app.timers.is_registered(_deliver_timer):
        bpy.app.timers.unregister(_deliver_timer)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
