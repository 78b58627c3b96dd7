"""The COLMAP workspace a dataset is built from: its registered photos and undistorted PINHOLE cameras (no bpy).

``rerender dataset`` (training/dataset_builder.py) opens the workspace here before anything is written, so every
problem with it (no model, no images/, a corrupt binary file, a distorted model without a place to undistort into)
is a DatasetError with advice, raised first. The demo and the benchmarks read workspaces through
``load_workspace``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rerender.bridge.cameras import PinholeCamera

log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """The dataset cannot be built; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class WorkspaceView:
    """A registered photo of the workspace and its undistorted PINHOLE camera at the photo's full size."""

    name: str
    camera: PinholeCamera


def open_workspace(workspace: Path, undistort_into: Path | None = None) -> tuple[Path, object, list[WorkspaceView]]:
    """(the workspace photos and model are read from, pycolmap.Reconstruction, [WorkspaceView] sorted by name).

    The model is read by the add-on's bpy-free reader (``rerender.addon.colmap_reader``: every binary file checked
    against its declared counts first, image names confined to the workspace). A distorted model (SIMPLE_RADIAL,
    OPENCV, ...) is undistorted with pycolmap into ``undistort_into``, whose ``images/`` and ``sparse/`` then are the
    workspace; without ``undistort_into`` it is refused. Every error is a DatasetError raised before anything is
    written.
    """
    from rerender.addon.colmap_reader import ColmapImportError, check_ply, load_model

    ws = Path(workspace)
    if not ws.is_dir():
        raise DatasetError(f"workspace {ws} does not exist; create it with `rerender reconstruct PHOTOS --out {ws}`")
    model = ws / "sparse" / "0"
    if not model.is_dir() and (ws / "sparse" / "cameras.bin").exists():
        model = ws / "sparse"
    if not any((model / f).exists() for f in ("cameras.bin", "cameras.txt")):
        raise DatasetError(f"{ws} has no COLMAP model in sparse/0 (cameras/images/points3D .bin or .txt); run "
                           f"`rerender reconstruct PHOTOS --out {ws}` first, or point at a COLMAP workspace")
    if not (ws / "images").is_dir():
        raise DatasetError(f"{ws} has no images/ folder (the photos of the model); run `rerender reconstruct` or "
                           f"put the photos the model names into {ws / 'images'}")
    try:
        read = load_model(model, undistort_into=undistort_into)
        root = read.workspace if read.undistorted else ws
        if (root / "dense" / "fused.ply").is_file():
            check_ply(root / "dense" / "fused.ply")  # dense labels are voted from it after segmenting
    except ColmapImportError as exc:
        raise DatasetError(str(exc)) from exc
    if read.undistorted:
        log.info("the model's cameras are distorted: photos and model undistorted into %s", read.workspace)
    views = sorted((WorkspaceView(c.name, c) for c in read.cameras), key=lambda v: v.name)
    return root, read.reconstruction, views


def load_workspace(workspace: Path):
    """(pycolmap.Reconstruction, [WorkspaceView] sorted by name) of an undistorted workspace WS/sparse/0."""
    _, rec, views = open_workspace(workspace)
    return rec, views


__all__ = ["DatasetError", "WorkspaceView", "load_workspace", "open_workspace"]
