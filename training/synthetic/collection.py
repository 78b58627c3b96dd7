"""Generate a synthetic "in the wild" photo collection with ground truth, and re-render any view of it.

Layout of a collection ``OUT/`` (docs/synthetic.md):
    images/<stem>.jpg                         the tourist photos (JPEG, like real ones)
    ground_truth/segmentation/<stem>.png      uint8 class ids (bridge.classes)
    ground_truth/cameras.json                 per photo: PINHOLE intrinsics, R, t (COLMAP), Blender matrix_world
    ground_truth/appearances.json             per photo: the PhotoConditions parameters
    ground_truth/transients.json              per photo: the people and cars in it
    ground_truth/scene.json                   the scene description (seed, landmark, render settings)
    ground_truth/key_points.json              named world points on the landmark's surface

Why ground truth is decided before rendering: every photo's parameters come from a seeded stream of its own
(``sampling``), so an interrupted run resumes where it stopped (photos already on disk are kept) and the same seed
rebuilds the same collection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .geometry import blender_matrix_world
from .landmark import key_points
from .sampling import appearance_schedule, sample_appearance, sample_camera, sample_transients
from .spec import PhotoConditions, PhotoCamera, RenderSettings, SceneSpec, Transient, read_json, write_json

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str, float], None]
"""progress(done, total, photo name, seconds for that photo)."""


@dataclass
class CollectionInfo:
    """What ``generate_collection`` produced (all paths inside ``root``)."""

    root: Path
    scene: SceneSpec
    cameras: list[PhotoCamera]
    appearances: dict[str, PhotoConditions]
    transients: dict[str, list[Transient]]
    seconds_per_photo: list[float] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def image_path(self, name: str) -> Path:
        return self.root / "images" / f"{name}.jpg"

    def segmentation_path(self, name: str) -> Path:
        return self.root / "ground_truth" / "segmentation" / f"{name}.png"

    def camera(self, name: str) -> PhotoCamera:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"no photo named {name!r} in {self.root}; photos: {', '.join(self.names[:5])}...")


def _truth_dir(root: Path) -> Path:
    return root / "ground_truth"


def plan_collection(count: int, *, width: int, height: int, seed: int, quality: str = "final",
                    landmark: dict[str, float] | None = None) -> CollectionInfo:
    """All ground truth of a collection without rendering anything (no bpy needed)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if width < 16 or height < 16:
        raise ValueError(f"photo size {width}x{height} is too small; use at least 16x16 (e.g. --size 640x480)")
    scene = SceneSpec(seed=int(seed), landmark=dict(landmark or {}), render=RenderSettings.preset(quality))
    kinds = appearance_schedule(count, seed)
    cameras, appearances, transients = [], {}, {}
    for i in range(count):
        cam = sample_camera(seed, i, width, height, scene.landmark)
        cameras.append(cam)
        appearances[cam.name] = sample_appearance(seed, i, kinds[i])
        transients[cam.name] = sample_transients(seed, i, cam, scene.landmark)
    return CollectionInfo(Path("."), scene, cameras, appearances, transients)


def _write_ground_truth(info: CollectionInfo) -> None:
    truth = _truth_dir(info.root)
    write_json(truth / "scene.json", info.scene.to_json())
    write_json(truth / "cameras.json", {"convention": "COLMAP PINHOLE: x right, y down, z forward; R, t world->camera; "
                                                      "matrix_world = Blender camera object",
                                        "cameras": [dict(c.to_json(), matrix_world=blender_matrix_world(c).tolist())
                                                    for c in info.cameras]})
    write_json(truth / "appearances.json", {n: a.to_json() for n, a in info.appearances.items()})
    write_json(truth / "transients.json", {n: [t.to_json() for t in ts] for n, ts in info.transients.items()})
    write_json(truth / "key_points.json", {k: list(v) for k, v in key_points(info.scene.landmark).items()})


def load_collection(root: Path) -> CollectionInfo:
    """Read a collection's ground truth (no bpy needed)."""
    root = Path(root)
    truth = _truth_dir(root)
    scene = SceneSpec.from_json(read_json(truth / "scene.json", "scene description"))
    cameras = [PhotoCamera.from_json(c) for c in read_json(truth / "cameras.json", "cameras")["cameras"]]
    appearances = {n: PhotoConditions.from_json(a) for n, a in read_json(truth / "appearances.json", "appearances").items()}
    transients = {n: [Transient.from_json(t) for t in ts]
                  for n, ts in read_json(truth / "transients.json", "transients").items()}
    return CollectionInfo(root, scene, cameras, appearances, transients)


def generate_collection(out: Path, *, count: int, width: int = 640, height: int = 480, seed: int = 0,
                        progress: Progress | None = None, quality: str = "final",
                        landmark: dict[str, float] | None = None, overwrite: bool = False) -> CollectionInfo:
    """Render ``count`` tourist photos of the landmark with their ground truth into ``out``.

    Photos already present (same ground truth, e.g. from an interrupted run) are kept unless ``overwrite``;
    a folder holding a different collection (other seed, size or count) is refused rather than mixed.
    ``quality`` is ``final`` (what SfM is known to register) or ``preview`` (fewer samples, for tests).
    """
    from .blender_scene import ensure_scene  # noqa: PLC0415  (bpy is imported only when rendering)
    from .render import render_camera  # noqa: PLC0415

    out = Path(out)
    info = plan_collection(count, width=width, height=height, seed=seed, quality=quality, landmark=landmark)
    info.root = out
    if (_truth_dir(out) / "cameras.json").is_file() and not overwrite:
        existing = load_collection(out)
        if existing.scene.to_json() != info.scene.to_json() or \
                [c.to_json() for c in existing.cameras] != [c.to_json() for c in info.cameras]:
            raise FileExistsError(f"{out} already holds a different synthetic collection; choose another --out "
                                  f"or pass overwrite=True (--overwrite) to replace it")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (_truth_dir(out) / "segmentation").mkdir(parents=True, exist_ok=True)
    _write_ground_truth(info)
    scene = ensure_scene(info.scene)
    for i, cam in enumerate(info.cameras):
        image, seg = info.image_path(cam.name), info.segmentation_path(cam.name)
        if image.is_file() and seg.is_file() and not overwrite:
            if progress is not None:  # kept from an earlier, interrupted run
                progress(i + 1, len(info.cameras), cam.name, 0.0)
            continue
        view = render_camera(scene, cam, info.appearances[cam.name], info.transients[cam.name], info.scene.render)
        _save_jpeg(view.photo, image, info.scene.render.jpeg_quality)
        _save_png(view.segmentation, seg)
        info.seconds_per_photo.append(view.seconds)
        log.info("%s: %s, %.1f s", cam.name, info.appearances[cam.name].kind, view.seconds)
        if progress is not None:
            progress(i + 1, len(info.cameras), cam.name, view.seconds)
    return info


def _save_jpeg(photo: np.ndarray, path: Path, quality: int) -> None:
    tmp = path.with_suffix(".tmp.jpg")
    Image.fromarray(photo).save(tmp, quality=quality)
    tmp.replace(path)


def _save_png(labels: np.ndarray, path: Path) -> None:
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(labels, mode="L").save(tmp)
    tmp.replace(path)


def _resolve(source: Path | str | SceneSpec | CollectionInfo) -> tuple[SceneSpec, CollectionInfo | None]:
    if isinstance(source, SceneSpec):
        return source, None
    if isinstance(source, CollectionInfo):
        return source.scene, source
    info = load_collection(Path(source))
    return info.scene, info


def render_view(source: Path | str | SceneSpec | CollectionInfo, camera: PhotoCamera | str,
                appearance: PhotoConditions | str, *, transients: bool | str | Sequence[Transient] = True,
                width: int | None = None, height: int | None = None,
                quality: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render any camera under any appearance from a collection's ground truth -> (photo H×W×3 uint8, labels H×W uint8).

    ``source``: a collection folder, its ``CollectionInfo``, or a bare ``SceneSpec``. ``camera`` and ``appearance``:
    objects, or photo names of the collection (render view A under B's appearance: ``render_view(out, "A", "B")``).
    ``transients``: ``True`` = the people and cars of the camera's photo (none if the camera is not a collection
    photo), ``False`` = none, a photo name = that photo's, or an explicit list. ``width``/``height`` rescale the
    intrinsics. The scene is rebuilt in this process only when it differs from the one already built.
    """
    from .blender_scene import ensure_scene  # noqa: PLC0415
    from .render import render_camera  # noqa: PLC0415

    spec, info = _resolve(source)
    if isinstance(camera, str) or isinstance(appearance, str) or isinstance(transients, str):
        if info is None:
            raise ValueError("photo names need a collection (folder or CollectionInfo) as source, not a bare SceneSpec")
    if isinstance(camera, str):
        camera = info.camera(camera)
    if isinstance(appearance, str):
        if appearance not in info.appearances:
            raise KeyError(f"no photo named {appearance!r} in {info.root}: cannot borrow its appearance")
        appearance = info.appearances[appearance]
    if transients is True:
        chosen = list(info.transients.get(camera.name, [])) if info is not None else []
    elif transients is False or transients is None:
        chosen = []
    elif isinstance(transients, str):
        if transients not in info.transients:
            raise KeyError(f"no photo named {transients!r} in {info.root}: cannot borrow its transients")
        chosen = list(info.transients[transients])
    else:
        chosen = list(transients)
    if (width is None) != (height is None):
        raise ValueError("give both width and height, or neither")
    if width is not None:
        camera = camera.scaled_to(int(width), int(height))
    settings = spec.render if quality is None else RenderSettings.preset(quality)
    scene = ensure_scene(spec)
    view = render_camera(scene, camera, appearance, chosen, settings)
    return view.photo, view.segmentation


def timed_progress(prefix: str = "") -> Progress:
    """A progress callback that prints per-photo time (for scripts without tqdm)."""
    start = time.perf_counter()

    def report(done: int, total: int, name: str, seconds: float) -> None:
        print(f"{prefix}{done}/{total} {name}: {seconds:.1f} s (elapsed {time.perf_counter() - start:.0f} s)",
              flush=True)

    return report
