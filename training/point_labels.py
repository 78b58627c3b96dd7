"""Semantic labels onto 3D points: each point gets the majority class of the photo pixels that observe it.

Why: the deep buffer's ``label`` pass is rasterized from per-point labels (docs/design.md §4a), so a novel view gets
semantics wherever it has points, and an artist can edit them like any attribute.

- Sparse points: COLMAP's tracks say exactly which keypoint of which photo observes each point; we vote with the
  segmentation label at those keypoints.
- Dense points (``fused.ply``) have no tracks: we project them into every photo and let only the visible ones vote,
  visibility judged against a z-buffer of the cloud itself taken on a coarse grid (4x4-pixel cells, so the gaps
  between dense points do not let hidden points through), with a relative depth tolerance.

``UNKNOWN`` (255) pixels do not vote; a point with no votes stays ``UNKNOWN``. Ties go to the lower class id.
File format (docs/architecture.md): ``WS/rerender/point_labels.npz`` with ``point3D_id`` int64 and ``label`` uint8
for sparse points and, when there is a dense cloud, ``fused_label`` uint8 in ``fused.ply`` vertex order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rerender.bridge.cameras import PinholeCamera
from rerender.bridge.classes import UNKNOWN

LABELS_FILE = Path("rerender") / "point_labels.npz"


@dataclass(frozen=True)
class LabelledView:
    """A photo's camera (COLMAP conventions, at the photo's full size) and its segmentation (any size)."""

    camera: PinholeCamera
    segmentation: np.ndarray  # uint8 h x w class ids


def _pixel_lookup(seg: np.ndarray, xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Labels at COLMAP pixel coordinates (centers at +0.5) of a full-size photo, read from a resized segmentation."""
    h, w = seg.shape
    col = np.floor(xy[:, 0] * (w / width)).astype(np.int64)
    row = np.floor(xy[:, 1] * (h / height)).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = np.full(len(xy), UNKNOWN, np.uint8)
    out[inside] = seg[row[inside], col[inside]]
    return out


def majority(votes: np.ndarray) -> np.ndarray:
    """uint8 majority class per row of an N x C vote table; UNKNOWN for rows without votes."""
    labels = votes.argmax(1).astype(np.uint8)
    labels[votes.max(1) == 0] = UNKNOWN
    return labels


def label_sparse_points(reconstruction, segmentation_of: Callable[[str], np.ndarray | None] | Mapping[str, np.ndarray],
                        num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(point3D ids int64, labels uint8) for every 3D point of a ``pycolmap.Reconstruction``.

    ``segmentation_of(image_name)`` returns the photo's segmentation (or None: that photo does not vote).
    """
    lookup = segmentation_of.get if isinstance(segmentation_of, Mapping) else segmentation_of
    point_ids = np.array(sorted(reconstruction.point3D_ids()), np.int64)
    index = {int(pid): i for i, pid in enumerate(point_ids)}
    votes = np.zeros((len(point_ids), num_classes), np.int32)
    for image_id in reconstruction.reg_image_ids():
        image = reconstruction.image(image_id)
        seg = lookup(image.name)
        if seg is None:
            continue
        xy, rows = [], []
        for p2d in image.points2D:
            if p2d.has_point3D():
                xy.append(p2d.xy)
                rows.append(index[int(p2d.point3D_id)])
        if not rows:
            continue
        cam = image.camera
        lab = _pixel_lookup(seg, np.asarray(xy, np.float64), cam.width, cam.height)
        valid = lab < num_classes
        np.add.at(votes, (np.asarray(rows)[valid], lab[valid].astype(np.int64)), 1)
    return point_ids, majority(votes)


def label_dense_points(xyz: np.ndarray, views: Iterable[LabelledView], num_classes: int, *,
                       cell_px: int = 4, depth_tolerance: float = 0.02) -> np.ndarray:
    """uint8 label per dense point (N x 3 world positions) by visibility-tested projection into the views."""
    xyz = np.asarray(xyz, np.float64)
    votes = np.zeros((len(xyz), num_classes), np.int32)
    for v in views:
        c = v.camera
        cam = xyz @ np.asarray(c.R, np.float64).T + np.asarray(c.t, np.float64)
        z = cam[:, 2]
        front = z > 1e-6
        u = np.full(len(xyz), -1.0)
        w = np.full(len(xyz), -1.0)
        u[front] = c.fx * cam[front, 0] / z[front] + c.cx
        w[front] = c.fy * cam[front, 1] / z[front] + c.cy
        inside = front & (u >= 0) & (u < c.width) & (w >= 0) & (w < c.height)
        if not inside.any():
            continue
        idx = np.nonzero(inside)[0]
        gw = c.width // cell_px + 1
        cell = (w[idx] // cell_px).astype(np.int64) * gw + (u[idx] // cell_px).astype(np.int64)
        zbuf = np.full((c.height // cell_px + 1) * gw, np.inf)
        np.minimum.at(zbuf, cell, z[idx])
        visible = z[idx] <= zbuf[cell] * (1.0 + depth_tolerance)
        idx = idx[visible]
        lab = _pixel_lookup(v.segmentation, np.stack([u[idx], w[idx]], 1), c.width, c.height)
        valid = lab < num_classes
        np.add.at(votes, (idx[valid], lab[valid].astype(np.int64)), 1)
    return majority(votes)


def write_point_labels(workspace: str | Path, point3D_ids: np.ndarray, labels: np.ndarray,
                       fused_labels: np.ndarray | None = None) -> Path:
    """Write WS/rerender/point_labels.npz atomically."""
    path = Path(workspace) / LABELS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"point3D_id": np.asarray(point3D_ids, np.int64), "label": np.asarray(labels, np.uint8)}
    if arrays["point3D_id"].shape != arrays["label"].shape:
        raise ValueError(f"{len(point3D_ids)} point ids but {len(labels)} labels")
    if fused_labels is not None:
        arrays["fused_label"] = np.asarray(fused_labels, np.uint8)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(path)
    return path


def read_point_labels(workspace: str | Path) -> dict[str, np.ndarray]:
    """The arrays of WS/rerender/point_labels.npz (raises FileNotFoundError when absent)."""
    with np.load(Path(workspace) / LABELS_FILE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
