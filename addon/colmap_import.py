"""File > Import > COLMAP reconstruction: a COLMAP workspace or model folder becomes a Blender scene.

The Blender side of the import; reading and checking the model is ``colmap_reader.py`` (no bpy), so training reads
reconstructions with the same rules. What it makes (docs/addon-rasterizer.md):
- a collection named after the workspace holding an empty, the *reconstruction root*, which carries the up axis,
  centering and scale; under it
- the point cloud (sparse ``points3D`` or, when present, the dense ``dense/fused.ply``): linear colors and semantic
  labels (``rerender/point_labels.npz``) as point attributes, drawn as constant-size splats (see points.py);
- a hidden child collection with one camera per registered photo, exact PINHOLE intrinsics (principal point,
  non-square pixels) and the photo as its background image.

Why the root empty: COLMAP's world frame has an arbitrary up axis and scale. Putting the alignment on one parent
keeps every camera and point in raw COLMAP coordinates relative to it, so (R, t) from COLMAP or a dataset manifest
apply to imported cameras unchanged (cameras.set_camera_from_colmap).

Everything is read and validated before the first Blender datablock is created, and a failure while creating
removes what was made, so a bad folder never leaves half an import behind.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import compat
from . import points as pts
from ._bridge import srgb8_to_linear
from .cameras import set_camera_from_colmap
from .colmap_reader import (  # noqa: F401  (re-exported: the import's public names live on here too)
    AUTO_VIEW_DISTANCE, FUSED_PLY, LABELS_FILE, MODEL_FILES, PINHOLE_MODELS, ColmapImportError, PhotoCamera,
    Progress, ReconstructionData, alignment, find_model, read_ply_points, read_reconstruction,
)

log = logging.getLogger(__name__)


@dataclass
class ImportedScene:
    """What :func:`import_reconstruction` created."""

    points: object  # the point-cloud bpy object
    cameras: dict[str, object]  # image name -> camera object
    collection: object  # the collection holding everything
    resolution: tuple[int, int]  # (W, H), the most common photo size
    root: object = None  # the empty carrying up axis, centering and scale
    camera_collection: object = None
    source: str = "sparse"
    num_points: int = 0
    warnings: list[str] = field(default_factory=list)


def import_reconstruction(path: str | os.PathLike, scene=None, *, name: str | None = None,
                          progress: Progress | None = None, load_images: bool = True, dense: bool | None = None,
                          undistort: bool = False, scale: float | None = None) -> ImportedScene:
    """Import a COLMAP workspace or model folder (binary or text) into ``scene`` (default: the context's).

    dense       True: ``dense/fused.ply`` (error if missing); False: sparse points; None: dense when present.
    undistort   distorted camera models are undistorted through pycolmap first (else they are refused).
    scale       Blender units per COLMAP unit; None picks one so photos sit ~25 units from the scene.
    progress    called as progress(fraction, message).
    Raises ColmapImportError (nothing created) when the folder is not a valid reconstruction.
    """
    report = progress or (lambda f, s: None)
    data = read_reconstruction(path, dense=dense, undistort=undistort, progress=report)
    scene = scene or bpy.context.scene
    name = name or (data.workspace or data.model_dir).resolve().name or "COLMAP"
    created: list = []  # (collection of bpy.data, datablock), removed again on failure
    try:
        result = _build(scene, name, data, load_images, scale, report, created)
    except BaseException:
        for coll, block in reversed(created):
            try:
                coll.remove(block)
            except (ReferenceError, RuntimeError):
                pass
        raise
    for w in data.warnings:
        log.warning(w)
    report(1.0, f"imported {result.num_points:,} {data.source} points and {len(result.cameras)} cameras")
    return result


def _build(scene, name: str, data: ReconstructionData, load_images: bool, scale: float | None,
           report: Progress, created: list) -> ImportedScene:
    import mathutils

    world_from_colmap = alignment(data.cameras, data.xyz, scale)
    s = float(np.cbrt(abs(np.linalg.det(world_from_colmap[:3, :3]))))

    top = bpy.data.collections.new(name)
    created.append((bpy.data.collections, top))
    scene.collection.children.link(top)
    photos = bpy.data.collections.new(f"{name} photos")
    created.append((bpy.data.collections, photos))
    top.children.link(photos)
    photos.hide_render = True

    root = bpy.data.objects.new(f"{name} root", None)
    created.append((bpy.data.objects, root))
    root.empty_display_type = "ARROWS"
    root.matrix_world = mathutils.Matrix(world_from_colmap.tolist())
    root["rerender_colmap_model"] = str(data.model_dir)
    top.objects.link(root)

    report(0.45, f"creating {len(data.xyz):,} points")
    colors = srgb8_to_linear(data.rgb8)

    def point_progress(f: float, msg: str) -> None:
        report(0.45 + 0.3 * f, msg)

    cloud = pts.create_point_cloud(f"{name} points", data.xyz, colors, data.labels, top,
                                  point_ids=data.point_ids, progress=point_progress)
    created.append((bpy.data.meshes, cloud.data))
    created.append((bpy.data.objects, cloud))
    cloud.parent = root
    cloud["rerender_source"] = data.source

    center = np.median(data.xyz[:: max(1, len(data.xyz) // 100_000)], 0)
    far = max(np.linalg.norm(c.center - center) for c in data.cameras) + np.ptp(data.xyz, 0).max()
    cameras: dict[str, object] = {}
    folder = data.workspace / "images" if data.workspace is not None else None
    for i, pc in enumerate(data.cameras):
        cam_data = bpy.data.cameras.new(pc.name)
        created.append((bpy.data.cameras, cam_data))
        obj = bpy.data.objects.new(pc.name, cam_data)
        created.append((bpy.data.objects, obj))
        photos.objects.link(obj)
        obj.parent = root
        set_camera_from_colmap(obj, pc.R, pc.t, pc.fx, pc.fy, pc.cx, pc.cy, pc.width, pc.height)
        cam_data.clip_start = max(1e-4, 1e-3 * far * s)
        cam_data.clip_end = 4.0 * far * s
        cam_data.display_size = 0.05 * AUTO_VIEW_DISTANCE / s
        obj["rerender_image"] = pc.name
        if load_images and folder is not None and (folder / pc.name).is_file():
            img = bpy.data.images.load(str(folder / pc.name), check_existing=True)
            if img.users == 0:
                created.append((bpy.data.images, img))
            bg = cam_data.background_images.new()
            bg.image = img
            bg.alpha = 0.6
            cam_data.show_background_images = True
        cameras[pc.name] = obj
        if i % 50 == 0:
            report(0.75 + 0.2 * i / len(data.cameras), f"camera {i + 1}/{len(data.cameras)}")

    for layer in scene.view_layers:
        lc = _find_layer_collection(compat.layer_collection(layer), photos)
        if lc is not None:
            lc.hide_viewport = True
    (w, h), _ = Counter((c.width, c.height) for c in data.cameras).most_common(1)[0]
    first = next(c for c in data.cameras if (c.width, c.height) == (w, h))
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = w, h, 100
    ycor = first.fx / first.fy
    r.pixel_aspect_x, r.pixel_aspect_y = (1.0, ycor) if ycor >= 1 else (1.0 / ycor, 1.0)
    if scene.camera is None:
        scene.camera = cameras[first.name]
    return ImportedScene(points=cloud, cameras=cameras, collection=top, resolution=(w, h), root=root,
                         camera_collection=photos, source=data.source, num_points=len(data.xyz),
                         warnings=list(data.warnings))


def _find_layer_collection(layer_collection, collection):
    if layer_collection.collection == collection:
        return layer_collection
    for child in layer_collection.children:
        found = _find_layer_collection(child, collection)
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------------------------------------ operator + menu

class RERENDER_OT_import_colmap(bpy.types.Operator):
    """Import a COLMAP reconstruction: point cloud, one camera per photo, scene resolution"""

    bl_idname = "rerender.import_colmap"
    bl_label = "Import COLMAP Reconstruction"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Folder", subtype="DIR_PATH",
                              description="COLMAP workspace (with sparse/0) or model folder")
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})
    points: EnumProperty(name="Points", default="AUTO", items=(
        ("AUTO", "Auto", "dense/fused.ply when present, else the sparse points"),
        ("DENSE", "Dense", "dense/fused.ply"),
        ("SPARSE", "Sparse", "the sparse SfM points")))
    load_images: BoolProperty(name="Photos as Backgrounds", default=True,
                              description="show each photo behind its camera")
    undistort: BoolProperty(name="Undistort", default=False,
                            description="undistort distorted camera models through pycolmap first")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        wm = context.window_manager
        wm.progress_begin(0, 100)

        def progress(fraction: float, message: str) -> None:
            wm.progress_update(int(100 * fraction))
            log.info("COLMAP import: %s", message)

        dense = {"AUTO": None, "DENSE": True, "SPARSE": False}[self.points]
        try:
            result = import_reconstruction(self.directory, context.scene, progress=progress,
                                           load_images=self.load_images, dense=dense, undistort=self.undistort)
        except ColmapImportError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            wm.progress_end()
        for w in result.warnings:
            self.report({"WARNING"}, w)
        self.report({"INFO"}, f"imported {result.num_points:,} {result.source} points and "
                              f"{len(result.cameras)} cameras at {result.resolution[0]} x {result.resolution[1]}")
        return {"FINISHED"}


def menu_func_import(self, context) -> None:
    """File > Import menu entry."""
    self.layout.operator(RERENDER_OT_import_colmap.bl_idname, text="COLMAP Reconstruction (Rerender)")


CLASSES = (RERENDER_OT_import_colmap,)


def register() -> None:
    """Register the import operator and its File > Import entry (called by the add-on's register())."""
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(menu_func_import)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(menu_func_import)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
