"""`rerender dataset` on a distorted COLMAP model (SIMPLE_RADIAL, OPENCV): it undistorts by itself (pycolmap, into
the dataset folder), with no manual step, and its deep buffers line up with the photos as well as for a PINHOLE
model of the same scene.

The scene is a checkered plane photographed through each camera model exactly (tests/support_colmap.py), so "lines
up" is measured directly on the dataset's photo: the buffer's drawn pixels against the plane's pixels (IoU), and,
where both show the plane, how often the buffer's point colors are on the same checker square as the photo (a few
pixels of misalignment move many pixels onto the neighbouring square).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from support_colmap import plane_mask, write_plane_workspace

pytest.importorskip("bpy")
pytest.importorskip("pycolmap")

from rerender.bridge.buffers import DeepBuffer  # noqa: E402
from rerender.commands import main as rerender_main  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.blender]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _alignment(buffer: DeepBuffer, photo: np.ndarray) -> tuple[float, float]:
    """(IoU of drawn vs plane pixels, fraction of shared pixels on the same checker square: red or green)."""
    plane = plane_mask(photo)
    both = buffer.mask & plane
    color = np.asarray(buffer.color, np.float32)
    same = (color[..., 0] > color[..., 1]) == (photo[..., 0].astype(int) > photo[..., 1].astype(int))
    return _iou(buffer.mask, plane), float(same[both].mean())


@pytest.fixture(scope="module")
def espnet(shared_dir):
    weights = shared_dir / "models" / "espnet"
    if not (weights / "espnet_p2_q8_cityscapes.pth").is_file():
        pytest.skip(f"ESPNet weights not found in {weights}")
    return weights


def build(tmp_path_factory, espnet, model: str) -> tuple[dict, dict]:
    """{view name: _alignment with the dataset's photo}, {view name: _alignment with the raw (distorted) photo}."""
    ws = write_plane_workspace(tmp_path_factory.mktemp(f"ws-{model}"), model)
    out = tmp_path_factory.mktemp(f"dataset-{model}")
    assert rerender_main(["dataset", str(ws), "--out", str(out), "--max-size", "320", "--min-size", "100",
                          "--splat-px", "2.5", "--val-count", "0", "--segmenter", "espnet_p2_q8",
                          "--segmenter-weights", str(espnet), "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["views"]) == 3 and manifest["dropped"] == []
    aligned, raw = {}, {}
    for view in manifest["views"]:
        assert view["camera"]["model"] == "PINHOLE"
        d = out / "views" / view["stem"]
        buffer = DeepBuffer.load_npz(d / "buffer.npz")
        aligned[view["name"]] = _alignment(buffer, np.asarray(Image.open(d / "photo.png")))
        original = Image.open(ws / "images" / view["name"]).resize((view["width"], view["height"]), Image.NEAREST)
        raw[view["name"]] = _alignment(buffer, np.asarray(original))
    return aligned, raw


@pytest.fixture(scope="module")
def pinhole(tmp_path_factory, espnet):
    return build(tmp_path_factory, espnet, "PINHOLE")[0]


@pytest.mark.parametrize("model", ["SIMPLE_RADIAL", "OPENCV"])
def test_distorted_model_is_undistorted_and_lines_up_like_pinhole(tmp_path_factory, espnet, pinhole, model):
    aligned, raw = build(tmp_path_factory, espnet, model)
    print(f"{model}: (IoU, same square) {aligned}, PINHOLE {pinhole}, raw distorted photos {raw}")
    assert min(iou for iou, _ in pinhole.values()) > 0.9 and min(same for _, same in pinhole.values()) > 0.9
    for name, (iou, same) in aligned.items():
        assert iou >= pinhole[name][0] - 0.02, f"{name}: IoU {iou:.3f} vs {pinhole[name][0]:.3f} for PINHOLE"
        assert same >= pinhole[name][1] - 0.02, f"{name}: {same:.3f} on the same square vs {pinhole[name][1]:.3f}"
    # the check can tell: the buffers do not line up with the photos as they were before undistortion
    assert np.mean([same for _, same in raw.values()]) < np.mean([same for _, same in aligned.values()]) - 0.05
