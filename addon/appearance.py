"""The artist's looks, with the backend: fetching the bundle's gallery and encoding photos off the UI thread, and the
operators the panels show (apply at a frame, mix, encode, remove). Matching a photo (a look fitted to it over many
steps, with progress and cancel) is ``photo_match.py``, registered from here.

The scene-data side (storing, applying, keying and mixing looks, thumbnails, photo loading) is ``looks.py``; its names
are re-exported here, where scripts have always found them.

Why the network calls run in threads: Blender's UI must never wait on a socket (a backend across the network may
take seconds, or never answer). Operators start a job on :data:`jobs` (``jobs.py``: a worker thread per job and the
add-on's one main-thread timer pump, the only place that may apply results to scene data); each job talks to the
backend with a client of its own (ZeroMQ sockets are not thread-safe). Scripts and tests call ``jobs.wait()`` and
``jobs.deliver()`` themselves (timers do not run in the ``bpy`` module). The EEVEE deep buffer of an encode is
rendered on the main thread before its job starts: bpy is single-threaded.
"""

from __future__ import annotations

import os
from typing import Any

import bpy
import numpy as np

from . import connection, photo_match, properties
from .jobs import PARALLEL, JobRunner, runs_jobs_after
from .looks import (  # noqa: F401  (re-exported: scripts and tests use these names from here)
    ENCODE_MAX_SIDE, ENCODE_MULTIPLE, THUMBNAIL_PREFIX, THUMBNAIL_SIDE, LookError, PhotoLookOperator, apply_look,
    encode_size, find_look, image_pixels, key_interpolation, load_photo, look_latent, look_names, mix_latents,
    mix_looks, photo_and_buffer, store_gallery, store_look, thumbnail_image, thumbnail_of,
)
from .photo_match import match_photo_async  # noqa: F401  (re-exported: "match this photo", photo_match.py)
from .preferences import backend_settings


# --- the backend, off the UI thread -------------------------------------------------------------------------------

def _explain(exc: BaseException) -> str:
    if isinstance(exc, (LookError, connection.BackendProblem)):
        return str(exc)
    return connection.explain(exc, backend_settings())


jobs = JobRunner("looks", PARALLEL, explain=_explain)  # a gallery fetch and photo encodes may overlap


def _client() -> Any:
    return connection.open_client(backend_settings())


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


# --- operators ---------------------------------------------------------------------------------------------------

class RERENDER_OT_fetch_gallery(bpy.types.Operator):
    """Fetch the model bundle's appearance gallery (one look per training photo) into the scene's looks"""

    bl_idname = "rerender.fetch_gallery"
    bl_label = "Fetch Gallery"

    @runs_jobs_after
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


class RERENDER_OT_encode_photo(PhotoLookOperator, bpy.types.Operator):
    """Encode the appearance of a photo (seen through the current camera's deep buffer) into a named look"""

    bl_idname = "rerender.encode_photo"
    bl_label = "Encode Photo"

    @runs_jobs_after
    def execute(self, context: bpy.types.Context) -> set[str]:
        name = self.look_name()
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


CLASSES = (RERENDER_OT_fetch_gallery, RERENDER_OT_apply_look, RERENDER_OT_mix_looks, RERENDER_OT_encode_photo,
           RERENDER_OT_remove_look)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()
    photo_match.register()


def unregister() -> None:
    photo_match.unregister()
    _unregister_classes()
