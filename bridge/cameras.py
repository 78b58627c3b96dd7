"""The one PINHOLE camera type and the one similarity alignment, shared by the add-on, the dataset and evaluation.

Why in the bridge: the add-on (vendored into the Blender extension, so it can only rely on the bridge), the dataset
builder, the point labeller and the tests all handle the same calibrated photo camera. One type with one field order
keeps them from drifting apart. Conventions are COLMAP's: world->camera (R, t), camera x right, y down, z forward,
intrinsics in pixels with pixel (0, 0)'s center at (0.5, 0.5). numpy only.

The synthetic landmark generator (``training/synthetic/spec.py``) has a camera of its own on purpose: it is the
JSON-serialisable ground truth of a generated collection in Blender's world frame, not a calibrated photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class PinholeCamera:
    """A PINHOLE camera in COLMAP's conventions; ``name`` is the photo's image name when there is one."""

    R: np.ndarray  # 3x3 world->camera rotation
    t: np.ndarray  # 3 world->camera translation
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    name: str = ""

    @property
    def center(self) -> np.ndarray:
        """The camera center in world coordinates."""
        return -np.asarray(self.R).T @ np.asarray(self.t)

    @property
    def K(self) -> np.ndarray:
        """The 3x3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, xyz: np.ndarray) -> np.ndarray:
        """World points N x 3 -> pixel coordinates N x 2 (COLMAP convention: pixel (0, 0)'s center is (0.5, 0.5))."""
        cam = np.asarray(xyz, np.float64) @ np.asarray(self.R).T + self.t
        return np.stack([self.fx * cam[:, 0] / cam[:, 2] + self.cx, self.fy * cam[:, 1] / cam[:, 2] + self.cy], 1)

    def scaled_to(self, width: int, height: int) -> "PinholeCamera":
        """The same camera for the photo resized to ``width`` x ``height`` (intrinsics scale per axis)."""
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(self.R, self.t, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, int(width),
                             int(height), self.name)


def umeyama(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity (s, R, t) minimising ``|target - (s R source + t)|²`` over N x 3 point sets (Umeyama 1991).

    Why: an SfM reconstruction is defined only up to a similarity, so comparing its camera centers with true ones
    must factor that out first (and that comparison is the only check that catches a mirror-folded reconstruction).
    """
    src, dst = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"need two N x 3 point sets with N >= 3, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    U, D, Vt = np.linalg.svd(xd.T @ xs / len(src))
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    var_s = (xs ** 2).sum() / len(src)
    s = float(np.trace(np.diag(D) @ S) / var_s) if var_s > 0 else 1.0
    return s, R, mu_d - s * R @ mu_s


def similarity_residuals(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-point distances between ``target`` and ``source`` after the best similarity (:func:`umeyama`)."""
    s, R, t = umeyama(source, target)
    return np.linalg.norm(s * np.asarray(source, np.float64) @ R.T + t - np.asarray(target, np.float64), axis=1)
