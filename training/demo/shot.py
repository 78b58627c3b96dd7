"""The demo's Blender shot: the reconstruction imported by the add-on, a camera flying among the photo viewpoints,
two gallery looks keyed on the appearance latent, the Neural Rerender engine — saved as a .blend and rendered.

Everything here goes through the add-on's public functions (``import_reconstruction``, ``properties.set_latent`` /
``key_latent``, engine ``RERENDER``), so the .blend is what an artist would have built by hand and opens in a plain
Blender with the add-on installed. Runs inside the ``bpy`` module (background Blender).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

ADDON = "rerender.addon"
SCENE_NAME = "Rerender demo"
CAMERA_NAME = "Demo Camera"


@dataclass
class Look:
    """A gallery appearance keyed at a frame."""

    name: str
    latent: np.ndarray
    frame: int


def enable_addon(address: str | None = None, timeout: float = 60.0):
    """Enable the add-on as docs/addon.md says (preferences entry included) and point it at ``address``."""
    import addon_utils
    import bpy

    module = addon_utils.enable(ADDON, default_set=True)
    if module is None:
        raise RuntimeError(f"could not enable the Blender add-on {ADDON!r}; see the log above")
    prefs = bpy.context.preferences.addons[ADDON].preferences
    if address is not None:
        prefs.address = address
    prefs.timeout = timeout
    return prefs


def pick_looks(gallery: Sequence, frames: int, outputs: Sequence[np.ndarray] | None = None) -> list[Look]:
    """The two gallery appearances that differ most, keyed at the first and the last frame.

    With ``outputs`` (the same deep buffer rerendered under every gallery latent, uint8 H x W x 3) "differ most"
    is measured where the viewer sees it: the largest distance between the outputs' mean colours (luminance and
    hue together). Two latents far apart in latent space can render nearly alike, so the latent distance is only
    the fallback when no outputs are given.
    """
    if len(gallery) < 2:
        raise ValueError(f"the bundle's gallery has {len(gallery)} appearance(s); keying two looks needs two")
    z = np.stack([np.asarray(a.latent, np.float32) for a in gallery])
    if outputs is not None:
        if len(outputs) != len(gallery):
            raise ValueError(f"{len(outputs)} outputs for {len(gallery)} gallery appearances")
        points = np.stack([np.asarray(o, np.float64).reshape(-1, 3).mean(0) for o in outputs])
    else:
        points = z.astype(np.float64)
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    if outputs is not None and _luminance(points[j]) > _luminance(points[i]):
        i, j = j, i  # start on the brighter look: noon -> night reads as a day passing
    return [Look(gallery[i].name, z[i], 1), Look(gallery[j].name, z[j], frames)]


def _luminance(rgb: np.ndarray) -> float:
    return float(0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2])


def colour_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean colour (0-255 sRGB) of two images and their difference: luminance and the RGB distance of the means."""
    ma = np.asarray(a, np.float64).reshape(-1, 3).mean(0)
    mb = np.asarray(b, np.float64).reshape(-1, 3).mean(0)
    return {"mean_rgb_first": [round(float(v), 1) for v in ma], "mean_rgb_last": [round(float(v), 1) for v in mb],
            "luminance_first": round(_luminance(ma), 1), "luminance_last": round(_luminance(mb), 1),
            "luminance_difference": round(_luminance(ma) - _luminance(mb), 1),
            "mean_rgb_distance": round(float(np.linalg.norm(ma - mb)), 1)}


def _camera_as_photo_camera(name: str, matrix_world: np.ndarray, fx: float, width: int, height: int):
    """A Blender camera (world matrix, scale removed) as a synthetic.PhotoCamera in Blender's world frame."""
    from rerender.training.synthetic import PhotoCamera

    m = np.asarray(matrix_world, np.float64)
    rot = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0, keepdims=True)
    # Blender camera axes x right, y up, looking down -z; COLMAP rows: x right, y down, z forward
    R = np.stack([rot[:, 0], -rot[:, 1], -rot[:, 2]])
    u, _, vt = np.linalg.svd(R)  # re-orthonormalise (float32 matrices drift)
    R = u @ vt
    center = m[:3, 3]
    return PhotoCamera(name, int(width), int(height), float(fx), float(fx), width / 2.0, height / 2.0,
                       R.tolist(), (-R @ center).tolist())


def animate_camera(scene, photo_cameras: dict, frames: int, width: int, height: int):
    """Key a new camera along ``synthetic.camera_path`` through the imported photo cameras (Blender world frame)."""
    import bpy
    from mathutils import Matrix

    from rerender.training.synthetic import blender_matrix_world, camera_path
    from rerender.training.synthetic.geometry import blender_camera_settings

    path = camera_path(list(photo_cameras.values()), frames, width=width, height=height)
    data = bpy.data.cameras.new(CAMERA_NAME)
    cam = bpy.data.objects.new(CAMERA_NAME, data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.rotation_mode = "XYZ"
    for k, pc in enumerate(path, start=1):
        settings = blender_camera_settings(pc)
        data.sensor_fit = settings["sensor_fit"]
        data.sensor_width = settings["sensor_width"]
        data.lens = settings["lens"]
        data.keyframe_insert("lens", frame=k)
        cam.matrix_world = Matrix(blender_matrix_world(pc).tolist())
        cam.keyframe_insert("location", frame=k)
        cam.keyframe_insert("rotation_euler", frame=k)
    return cam, path


def build_shot(workspace: Path, dataset_manifest: dict, looks: list[Look], *, frames: int,
               size: tuple[int, int], splat_px: float, blend_path: Path, bundle_path: Path) -> dict:
    """Build the shot in a fresh Blender file and save it to ``blend_path``; returns a description for demo.json."""
    import bpy

    from rerender.addon import properties
    from rerender.addon.colmap_import import import_reconstruction

    bpy.ops.wm.read_factory_settings(use_empty=True)
    enable_addon()
    scene = bpy.context.scene
    scene.name = SCENE_NAME
    imported = import_reconstruction(workspace, scene, load_images=False)
    bpy.context.view_layer.update()
    W, H = size
    cams = {}
    for view in dataset_manifest["views"]:
        obj = imported.cameras.get(view["name"])
        if obj is None:
            continue
        fx = float(view["camera"]["params"][0]) * W / float(view["width"])
        cams[view["name"]] = _camera_as_photo_camera(view["name"], np.array(obj.matrix_world), fx, W, H)
    if len(cams) < 2:
        raise RuntimeError(f"only {len(cams)} imported photo cameras match the dataset; a camera path needs 2")
    animate_camera(scene, cams, frames, W, H)
    scene.render.engine = "RERENDER"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = W, H, 100
    scene.render.use_compositing = False
    scene.view_settings.view_transform = "Standard"  # frames are the network's sRGB output, untouched
    scene.view_settings.look = "None"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.frame_start, scene.frame_end = 1, frames
    scene.rerender.point_size_auto = False  # the splat size the training buffers were drawn with
    scene.rerender.point_size = float(splat_px)
    edit = bpy.context.preferences.edit
    previous = edit.keyframe_new_interpolation_type
    edit.keyframe_new_interpolation_type = "LINEAR"  # the look crossfades evenly from the first key to the second
    try:
        for look in looks:
            properties.set_latent(scene, look.latent)
            properties.key_latent(scene, look.frame)
            scene.rerender.appearance_name = look.name
    finally:
        edit.keyframe_new_interpolation_type = previous
    scene["rerender_demo_bundle"] = str(Path(bundle_path).resolve())
    scene["rerender_demo_looks"] = json.dumps([{"name": lk.name, "frame": lk.frame} for lk in looks])
    blend_path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend_path.resolve()), compress=True)
    return {"scene": scene.name, "points": imported.num_points, "photo_cameras": len(cams), "frames": frames,
            "size": [W, H], "looks": [{"name": lk.name, "frame": lk.frame} for lk in looks],
            "blend": str(blend_path)}


def render_frames(blend_path: Path, frames_dir: Path, address: str, *, progress=None) -> list[Path]:
    """Open the saved shot and render its animation through the backend at ``address`` into PNG frames.

    Frames already on disk are kept (``use_overwrite = False``), so an interrupted render resumes.
    """
    import bpy

    bpy.ops.wm.open_mainfile(filepath=str(Path(blend_path).resolve()))
    enable_addon(address)
    scene = bpy.data.scenes[SCENE_NAME]
    frames_dir.mkdir(parents=True, exist_ok=True)
    scene.render.filepath = str(frames_dir.resolve() / "frame_")
    scene.render.use_overwrite = False
    scene.render.use_placeholder = False
    started = time.perf_counter()
    expected = [frames_dir / f"frame_{f:04d}.png" for f in range(scene.frame_start, scene.frame_end + 1)]
    for f, path in zip(range(scene.frame_start, scene.frame_end + 1), expected):
        if path.is_file():
            continue
        scene.frame_set(f)
        scene.render.filepath = str(path.resolve())
        bpy.ops.render.render(scene=scene.name, write_still=True)
        if not path.is_file():
            raise RuntimeError(f"frame {f} was not written to {path}: the render stopped (see the messages above)")
        if progress is not None:
            progress(f - scene.frame_start + 1, len(expected), time.perf_counter() - started)
    return expected
