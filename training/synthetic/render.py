"""Render one view of the synthetic scene: the photo (EEVEE, photographic) and its exact segmentation and depth.

Two renders per view. The photo uses the lean settings measured to give SfM-friendly images (8 samples, shadows,
no raytracing). The ground truth render swaps every material for an emission of the object's class id
(view-layer material override), 1 sample, filter 0, transparent film: each pixel holds exactly one id, sky is
where nothing was hit. It also gives planar depth, used to add fog (Beer-Lambert) to the photo afterwards: cheaper
than EEVEE volumetrics and exactly reproducible. Files go through a RAM folder and are read back with the
OpenImageIO that ships inside the bpy wheel (blender-facts.md).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np

from ...bridge.colors import linear_to_srgb8, srgb8_to_linear
from .blender_scene import apply_appearance, place_transients, segmentation_material, set_camera
from .landmark import SKY
from .spec import PhotoConditions, PhotoCamera, RenderSettings, Transient


def _oiio():
    site = os.path.join(bpy.utils.resource_path("LOCAL"), "python", "lib", "python3.11", "site-packages")
    if site not in sys.path:
        sys.path.append(site)
    import OpenImageIO  # noqa: PLC0415  (ships with bpy; importable only after the path above)
    return OpenImageIO


def _scratch_dir() -> Path:
    """A per-process folder in RAM for the two render files of a view, removed when the process exits."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = Path(base) / f"rerender-synth-{os.getpid()}"
    if not path.is_dir():
        path.mkdir()
        atexit.register(shutil.rmtree, path, True)
    return path


@dataclass
class RenderedView:
    photo: np.ndarray  # H×W×3 uint8 sRGB (after fog)
    segmentation: np.ndarray  # H×W uint8 class ids
    depth: np.ndarray  # H×W float32 planar camera z, inf on sky
    seconds: float


def _render(scene, path: Path) -> None:
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True, scene=scene.name)
    if not path.is_file():
        raise RuntimeError(f"Blender did not write {path}; see the messages above")


def _read_photo(path: Path) -> np.ndarray:
    oiio = _oiio()
    buf = oiio.ImageBuf(str(path))
    pixels = buf.get_pixels(oiio.UINT8)
    if pixels is None or pixels.size == 0:
        raise RuntimeError(f"could not read the rendered photo {path}: {buf.geterror()}")
    return np.ascontiguousarray(pixels[:, :, :3])


def _read_exr_passes(path: Path) -> dict[str, np.ndarray]:
    """Channels of a (multilayer, one part per pass) EXR, as name -> H×W float32, rows top-down."""
    oiio = _oiio()
    inp = oiio.ImageInput.open(str(path))
    if inp is None:
        raise RuntimeError(f"could not open {path}: {oiio.geterror()}")
    channels: dict[str, np.ndarray] = {}
    try:
        sub = 0
        while inp.seek_subimage(sub, 0):
            spec = inp.spec()
            data = inp.read_image(0, 0, 0, spec.nchannels, "float")
            data = np.asarray(data).reshape(spec.height, spec.width, spec.nchannels)
            for c, name in enumerate(spec.channelnames):
                channels[name] = data[:, :, c]
            sub += 1
    finally:
        inp.close()
    return channels


def _pick(channels: dict[str, np.ndarray], suffix: str) -> np.ndarray:
    for name, value in channels.items():
        if name.endswith(suffix):
            return value
    raise RuntimeError(f"the ground-truth EXR lacks a channel ending in {suffix!r}; it has {sorted(channels)}")


def _render_photo(scene, settings: RenderSettings, scratch: Path) -> np.ndarray:
    r = scene.render
    r.film_transparent = False
    r.filter_size = settings.filter_px
    scene.eevee.taa_render_samples = settings.samples
    scene.eevee.use_shadows = settings.shadows
    scene.view_settings.view_transform = "AgX"
    scene.view_settings.look = "None"
    scene.view_layers[0].material_override = None
    scene.view_layers[0].use_pass_z = False
    r.image_settings.media_type = "IMAGE"
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGB"
    r.image_settings.color_depth = "8"
    path = scratch / "photo.png"
    _render(scene, path)
    return _read_photo(path)


def _render_ground_truth(scene, scratch: Path) -> tuple[np.ndarray, np.ndarray]:
    r = scene.render
    vs = scene.view_settings
    saved = (vs.exposure, vs.use_white_balance, vs.view_transform)
    r.film_transparent = True
    r.filter_size = 0.0
    scene.eevee.taa_render_samples = 1
    scene.eevee.use_shadows = False
    vs.view_transform, vs.exposure, vs.use_white_balance = "Standard", 0.0, False
    layer = scene.view_layers[0]
    layer.material_override = segmentation_material()
    layer.use_pass_z = True
    r.image_settings.media_type = "MULTI_LAYER_IMAGE"  # Blender 5.0: multilayer EXR is a media type
    r.image_settings.file_format = "OPEN_EXR_MULTILAYER"
    r.image_settings.color_depth = "32"
    path = scratch / "truth.exr"
    try:
        _render(scene, path)
    finally:
        vs.exposure, vs.use_white_balance, vs.view_transform = saved
        layer.material_override = None
        layer.use_pass_z = False
    channels = _read_exr_passes(path)
    alpha = _pick(channels, ".A")
    ids = np.rint(_pick(channels, ".R"))
    segmentation = np.where(alpha > 0.5, ids, SKY).astype(np.uint8)
    depth = np.where(alpha > 0.5, _pick(channels, "Depth.Z"), np.inf).astype(np.float32)
    return segmentation, depth


def add_fog(photo: np.ndarray, depth: np.ndarray, camera: PhotoCamera, density: float,
            color: list[float]) -> np.ndarray:
    """Beer-Lambert fog along each pixel's ray (distance from planar depth), blended in linear light."""
    if density <= 0:
        return photo
    H, W = depth.shape
    u = (np.arange(W) + 0.5 - camera.cx) / camera.fx
    v = (np.arange(H) + 0.5 - camera.cy) / camera.fy
    ray_scale = np.sqrt(1.0 + u[None, :] ** 2 + v[:, None] ** 2)
    with np.errstate(invalid="ignore"):
        transmittance = np.exp(-density * depth * ray_scale)
    transmittance = np.nan_to_num(transmittance, nan=0.0)[:, :, None].astype(np.float32)
    fog = srgb8_to_linear(np.rint(np.asarray(color, dtype=np.float32) * 255))
    linear = srgb8_to_linear(photo) * transmittance + fog[None, None, :] * (1.0 - transmittance)
    return linear_to_srgb8(linear)


def render_camera(scene, camera: PhotoCamera, appearance: PhotoConditions, transients: list[Transient],
                  settings: RenderSettings) -> RenderedView:
    """Set the scene up for this photo and render photo + ground truth."""
    start = time.perf_counter()
    scratch = _scratch_dir()
    set_camera(scene, camera)
    apply_appearance(scene, appearance)
    place_transients(scene, transients)
    photo = _render_photo(scene, settings, scratch)
    segmentation, depth = _render_ground_truth(scene, scratch)
    if photo.shape[:2] != segmentation.shape:
        raise RuntimeError(f"photo {photo.shape[:2]} and segmentation {segmentation.shape} sizes differ")
    photo = add_fog(photo, depth, camera, appearance.fog_density, appearance.fog_color)
    return RenderedView(photo, segmentation, depth, time.perf_counter() - start)
