"""Looks as scene data: named appearance latents stored on the scene, applied, keyed, mixed; photos and thumbnails.

A *look* is a named appearance latent stored on the scene (``scene.rerender.looks``, see ``properties.py``), so
looks travel with the .blend: the gallery fetched from the backend, photos the artist encoded, and mixes. Applying
a look at a frame writes its latent into ``scene.rerender.appearance`` and keys every component there with the
chosen interpolation; F-curves then blend from key to key, and the engine sends each frame the latent the F-curves
give (``depsgraph.scene_eval``).

Everything here runs on the main thread and edits bpy data; nothing talks to the backend (``appearance.py`` does,
off the UI thread, and calls these functions with the results). The operators live in ``appearance.py`` too.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import bpy
import numpy as np

from . import connection, properties
from ._bridge import DeepBuffer

THUMBNAIL_PREFIX = ".rerender look "  # a leading dot hides the images from most image pickers
THUMBNAIL_SIDE = 96
ENCODE_MAX_SIDE = 256  # photos are encoded at most this large: the encoder pools to one vector anyway
ENCODE_MULTIPLE = 16


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


class PhotoLookOperator:
    """What the operators that make a look from a photo share (Encode Photo, Match Photo): the file browser
    filtered to images, the look's name (the photo's file name when left empty) and the size it is seen at.

    A mixin, not an operator: Blender registers the property annotations of an operator's plain base classes."""

    filepath: bpy.props.StringProperty(subtype="FILE_PATH")
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    name: bpy.props.StringProperty(name="Look Name", description="Empty = the photo's file name")
    max_side: bpy.props.IntProperty(name="Size", default=ENCODE_MAX_SIDE, min=32, max=2048,
                                    description="Longest side, in pixels, of the photo and deep buffer seen")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def look_name(self) -> str:
        return self.name or os.path.splitext(os.path.basename(self.filepath))[0]
