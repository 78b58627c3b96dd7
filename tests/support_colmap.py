"""Tiny real COLMAP workspaces for tests, written by pycolmap with known cameras and points.

Reusable by every part that needs a reconstruction (import, dataset building, rendering): the cameras cover the
awkward cases on purpose — fx != fy, an off-center principal point, a portrait photo, roll — and one *marker*
point with a unique color sits in front of everything, so a test can find it in a rendered pass and compare with
pycolmap's own projection.

    ws = write_tiny_workspace(tmp_path / "ws")            # WS/images/*.jpg, WS/sparse/0/*.bin
    ws.project("b.jpg", ws.marker_xyz)                     # pixel (x, y) by pycolmap, COLMAP pixel centers at +0.5
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MARKER_RGB = (255, 0, 255)

# name, model, params, width, height, camera center, roll (degrees)
TINY_CAMERAS = (
    ("a.jpg", "PINHOLE", (90.0, 90.0, 48.0, 36.0), 96, 72, (0.0, -0.6, -6.0), 0.0),
    ("b.jpg", "PINHOLE", (110.0, 80.0, 41.5, 40.25), 96, 72, (2.5, -1.0, -5.5), 8.0),  # fx != fy, off-center
    ("c.jpg", "SIMPLE_PINHOLE", (100.0, 37.0, 50.0), 80, 96, (-2.0, -0.3, -6.5), -5.0),  # portrait
)


@dataclass
class TinyColmap:
    """A written workspace and the ground truth it was made from."""

    workspace: Path
    model_dir: Path
    xyz: np.ndarray  # N x 3, COLMAP world
    rgb8: np.ndarray  # N x 3 uint8
    point_ids: np.ndarray  # N int64, COLMAP point3D ids
    marker_id: int
    image_names: list[str]
    binary: bool
    labels: np.ndarray | None = None
    reconstruction: object = field(default=None, repr=False)

    @property
    def marker_xyz(self) -> np.ndarray:
        return self.xyz[list(self.point_ids).index(self.marker_id)]

    def image(self, name: str):
        return self.reconstruction.find_image_with_name(name)

    def project(self, name: str, xyz) -> np.ndarray:
        """pycolmap's projection of a world point into a photo: (x, y) pixels, pixel (0, 0)'s center at 0.5."""
        return np.asarray(self.image(name).project_point(np.asarray(xyz, np.float64)), np.float64)


def look_at(center, target=(0.0, 0.0, 0.0), roll_deg: float = 0.0, down=(0.0, 1.0, 0.0)):
    """COLMAP world->camera (R, t) for a camera at ``center`` looking at ``target`` (image y points along +down)."""
    center, target, down = (np.asarray(v, np.float64) for v in (center, target, down))
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(down, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    a = np.deg2rad(roll_deg)
    roll = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    R = roll @ R
    return R, -R @ center


def facade_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bumpy wall (x in [-2, 2], y in [-1.5, 1.5], z near 0) with random colors; +the marker point in front."""
    rng = np.random.default_rng(seed)
    xyz = np.stack([rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(-0.2, 0.2, n)], 1)
    rgb = rng.integers(0, 200, (n, 3), dtype=np.uint8)  # never the marker's magenta
    xyz = np.vstack([xyz, [[0.31, -0.17, -0.8]]])
    rgb = np.vstack([rgb, [MARKER_RGB]]).astype(np.uint8)
    return xyz, rgb


def write_tiny_workspace(root: str | Path, *, binary: bool = True, n_points: int = 300, seed: int = 0,
                         with_images: bool = True, labels: np.ndarray | None = None,
                         cameras=TINY_CAMERAS) -> TinyColmap:
    """Write ROOT/sparse/0 (binary or text), ROOT/images/*.jpg (uniform gray, right sizes) and, when ``labels``
    (one uint8 per point, marker last) is given, ROOT/rerender/point_labels.npz. Returns the ground truth."""
    import pycolmap

    root = Path(root)
    model_dir = root / "sparse" / "0"
    model_dir.mkdir(parents=True, exist_ok=True)
    rec = pycolmap.Reconstruction()
    names = []
    for i, (name, model, params, w, h, center, roll) in enumerate(cameras, start=1):
        cam = pycolmap.Camera(model=model, width=w, height=h, params=list(params), camera_id=i)
        rec.add_camera_with_trivial_rig(cam)
        R, t = look_at(center, roll_deg=roll)
        image = pycolmap.Image(name=name, camera_id=i, image_id=i)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
        names.append(name)
    xyz, rgb = facade_points(n_points, seed)
    ids = np.array([rec.add_point3D(p, pycolmap.Track(), c) for p, c in zip(xyz, rgb)], np.int64)
    (rec.write_binary if binary else rec.write_text)(str(model_dir))
    if with_images:
        from PIL import Image

        (root / "images").mkdir(exist_ok=True)
        for name, _, _, w, h, _, _ in cameras:
            Image.new("RGB", (w, h), (128, 128, 128)).save(root / "images" / name)
    if labels is not None:
        labels = np.asarray(labels, np.uint8)
        (root / "rerender").mkdir(exist_ok=True)
        np.savez(root / "rerender" / "point_labels.npz", point3D_id=ids, label=labels)
    return TinyColmap(root, model_dir, xyz, rgb, ids, int(ids[-1]), names, binary, labels, rec)


def write_fused_ply(path: str | Path, xyz: np.ndarray, rgb8: np.ndarray) -> None:
    """A binary PLY as COLMAP's stereo fusion writes it (x y z nx ny nz red green blue)."""
    n = len(xyz)
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4"),
                      ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    data = np.zeros(n, dtype)
    data["x"], data["y"], data["z"] = np.asarray(xyz, np.float32).T
    data["red"], data["green"], data["blue"] = np.asarray(rgb8, np.uint8).T
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {n}\n"
              + "".join(f"property float {a}\n" for a in ("x", "y", "z", "nx", "ny", "nz"))
              + "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        data.tofile(f)


# --- a photographed plane, for distortion tests -------------------------------------------------------------------

PLANE_HALF = (2.6, 1.9)  # the plane z = 0, x in [-2.6, 2.6], y in [-1.9, 1.9]
PLANE_BACKGROUND = (140, 158, 178)  # sRGB of everything around it
PLANE_COLORS = ((205, 70, 40), (60, 170, 70))  # a 0.35-unit checker on the plane
PLANE_VIEWS = (((0.4, -0.3, -6.2), 0.0), ((-1.6, 0.5, -6.0), 6.0), ((1.8, 0.9, -5.8), -4.0))  # center, roll


def _plane_color(xy: np.ndarray) -> np.ndarray:
    checker = (np.floor(xy[:, 0] / 0.35) + np.floor(xy[:, 1] / 0.35)).astype(int) % 2
    return np.asarray(PLANE_COLORS, np.uint8)[checker]


def write_plane_workspace(root: str | Path, model: str = "PINHOLE", *, size=(320, 240), focal: float = 300.0,
                          n_points: int = 12000, seed: int = 0) -> Path:
    """ROOT/images/*.png photos of a checkered plane and ROOT/sparse/0 with the true cameras and points on it.

    ``model`` PINHOLE, SIMPLE_RADIAL or OPENCV: the photos are made through that camera model exactly (every pixel's
    ray, undistorted by pycolmap, intersected with the plane), so a dataset built from a distorted model lines up
    with its photos only when the model is undistorted correctly.
    """
    import pycolmap
    from PIL import Image

    w, h = size
    params = {"PINHOLE": [focal, focal, w / 2, h / 2], "SIMPLE_RADIAL": [focal, w / 2, h / 2, -0.2],
              "OPENCV": [focal, focal * 1.01, w / 2 + 3, h / 2 - 2, -0.3, 0.08, 0.001, -0.001]}[model]
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    model_dir = root / "sparse" / "0"
    model_dir.mkdir(parents=True, exist_ok=True)
    rec = pycolmap.Reconstruction()
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    pixels = np.stack([u.ravel(), v.ravel()], 1)
    for i, (center, roll) in enumerate(PLANE_VIEWS, start=1):
        cam = pycolmap.Camera(model=model, width=w, height=h, params=params, camera_id=i)
        rec.add_camera_with_trivial_rig(cam)
        R, t = look_at(center, roll_deg=roll)
        name = f"view_{i}.png"
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=i, image_id=i),
                                         pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
        rays = np.c_[np.asarray(cam.cam_from_img(pixels), np.float64), np.ones(len(pixels))] @ R  # world
        origin = -R.T @ t
        depth = -origin[2] / rays[:, 2]
        hit = origin[:2] + depth[:, None] * rays[:, :2]
        inside = np.isfinite(hit).all(1) & (np.abs(hit[:, 0]) <= PLANE_HALF[0]) & (np.abs(hit[:, 1]) <= PLANE_HALF[1])
        photo = np.tile(np.asarray(PLANE_BACKGROUND, np.uint8), (len(pixels), 1))
        photo[inside] = _plane_color(hit[inside])
        Image.fromarray(photo.reshape(h, w, 3)).save(root / "images" / name)
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1, 1, (n_points, 2)) * PLANE_HALF
    for p, c in zip(np.c_[xy, np.zeros(n_points)], _plane_color(xy)):
        rec.add_point3D(p, pycolmap.Track(), c)
    rec.write_binary(str(model_dir))
    return root


def plane_mask(photo: np.ndarray) -> np.ndarray:
    """Pixels of a plane photo that show the plane (far from the background color)."""
    diff = np.abs(np.asarray(photo, np.int16)[..., :3] - np.asarray(PLANE_BACKGROUND, np.int16)).sum(-1)
    return diff > 60
