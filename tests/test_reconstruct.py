"""`rerender reconstruct` on a photo set rendered by real Blender with known cameras, and on bad input."""

from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest
from PIL import Image

from rerender.commands import main as rerender_main
from rerender.training.reconstruct import ReconstructionError, list_photos, reconstruct
from support_photos import N_VIEWS, reconstructed_workspace, synthetic_photo_set, umeyama

# after a similarity alignment, every recovered camera center must lie within this fraction of the camera spread
# (RMS distance of the true centers from their mean), and every orientation within this angle
CENTER_TOLERANCE = 0.02
ROTATION_TOLERANCE_DEG = 1.0


@pytest.fixture(scope="module")
def sfm(tmp_path_factory):
    return reconstructed_workspace(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.blender
def test_registers_most_photos_and_recovers_true_cameras(sfm, tmp_path_factory):
    photos, ws, summary = sfm
    truth = json.loads((synthetic_photo_set(tmp_path_factory) / "cameras.json").read_text())
    rec = pycolmap.Reconstruction(str(ws / "sparse" / "0"))
    images = {rec.image(i).name: rec.image(i) for i in rec.reg_image_ids()}
    real = [n for n in images if n in truth]
    assert len(real) >= N_VIEWS - 2, f"only {len(real)} of {N_VIEWS} generated photos registered"
    assert summary["registered"] == len(images)
    assert summary["points"] > 500 and summary["mean_reprojection_error_px"] < 1.0

    est = np.array([images[n].projection_center() for n in real])
    true = np.array([truth[n]["center"] for n in real])
    s, R, t = umeyama(est, true)
    aligned = s * est @ R.T + t
    spread = np.sqrt(((true - true.mean(0)) ** 2).sum(1).mean())
    err = np.linalg.norm(aligned - true, axis=1) / spread
    assert err.max() < CENTER_TOLERANCE, f"camera center errors (fraction of spread): {np.round(err, 4)}"
    for n in real:  # world->camera rotations agree once the similarity's rotation is applied
        R_est = images[n].cam_from_world().rotation.matrix()
        R_true = np.array(truth[n]["R"])
        d = R_est @ R.T @ R_true.T
        angle = np.degrees(np.arccos(np.clip((np.trace(d) - 1) / 2, -1, 1)))
        assert angle < ROTATION_TOLERANCE_DEG, f"{n}: rotation off by {angle:.2f} degrees"

    # undistorted PINHOLE model in sparse/0, photos in images/
    assert all(rec.camera(c).model_name == "PINHOLE" for c in rec.cameras)
    assert all((ws / "images" / n).is_file() for n in images)


@pytest.mark.slow
@pytest.mark.blender
def test_bad_photos_are_reported_and_the_rest_is_kept(sfm):
    _, ws, summary = sfm
    assert [b["name"] for b in summary["photos_unreadable"]] == ["broken.jpg"]
    assert {"noise_0.png", "noise_1.png"} <= set(summary["unregistered"])
    assert summary["photos_found"] == N_VIEWS + 3
    assert "sparse" in summary["dense_note"] or summary["dense"]


def test_folder_without_images_is_refused_clearly(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no photos here")
    with pytest.raises(ReconstructionError, match="no images"):
        reconstruct(tmp_path, tmp_path / "ws", progress=False)
    assert rerender_main(["reconstruct", str(tmp_path), "--out", str(tmp_path / "ws"), "--no-progress"]) == 2
    assert "no images" in capsys.readouterr().err
    missing = tmp_path / "does-not-exist"
    with pytest.raises(ReconstructionError, match="not a folder"):
        reconstruct(missing, tmp_path / "ws", progress=False)


def test_unreadable_images_are_listed_by_name(tmp_path):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "truncated.jpg")
    data = (tmp_path / "truncated.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    good, bad = list_photos(tmp_path)
    assert good == ["good.png"]
    assert sorted(b["name"] for b in bad) == ["corrupt.jpg", "truncated.jpg"]
    assert all(b["reason"] for b in bad)
    with pytest.raises(ReconstructionError, match="only 1 readable photos"):
        reconstruct(tmp_path, tmp_path / "ws", progress=False)


def test_photos_that_do_not_register_give_a_clear_error_and_keep_the_database(tmp_path):
    rng = np.random.default_rng(0)
    photos = tmp_path / "noise"
    photos.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(photos / f"n{i}.png")
    with pytest.raises(ReconstructionError, match="no photo could be registered"):
        reconstruct(photos, tmp_path / "ws", progress=False, dense="off")
    assert (tmp_path / "ws" / "database.db").is_file()
    summary = json.loads((tmp_path / "ws" / "rerender" / "reconstruction.json").read_text())
    assert sorted(summary["unregistered"]) == [f"n{i}.png" for i in range(4)]


@pytest.mark.slow
@pytest.mark.blender
def test_collapsed_models_are_recognised_as_degenerate(sfm):
    from rerender.training.reconstruct import is_degenerate

    _, ws, _ = sfm
    rec = pycolmap.Reconstruction(str(ws / "sparse" / "0"))
    assert not is_degenerate(rec)
    rng = np.random.default_rng(0)
    for pid in rec.point3D_ids():  # what a bad initial pair produced on real photos: every point at one spot
        rec.point3D(pid).xyz = np.array([1.0, 2.0, 3.0]) + 1e-6 * rng.random(3)
    assert is_degenerate(rec)


def test_split_models_get_sizes_and_advice():
    from rerender.training.reconstruct import ReconstructionSummary, split_advice

    advice = "\n".join(split_advice([26, 6, 4, 2, 2], "vocabtree", "per_image"))
    assert "5 separate models (26, 6, 4, 2, 2 photos)" in advice and "kept the largest (26 photos)" in advice
    assert "--matcher exhaustive" in advice and "--camera-mode single" in advice and "overlap" in advice
    assert "--matcher" not in "\n".join(split_advice([10, 3], "exhaustive", "single"))
    summary = ReconstructionSummary(photos_found=40, registered=26, models_found=5, model_sizes=[26, 6, 4, 2, 2],
                                    matcher="exhaustive", camera_mode="per_image")
    assert "26, 6, 4, 2, 2 photos" in summary.to_text()


@pytest.mark.slow
@pytest.mark.blender
def test_single_camera_failure_says_what_failed(sfm, tmp_path):
    from rerender.training.reconstruct import match_statistics, no_model_message

    _, ws, _ = sfm
    with_features, pairs = match_statistics(ws / "database.db")
    assert with_features >= 14 and pairs >= 20
    text = no_model_message([f"p{i}" for i in range(16)], ws / "database.db", "single", "exhaustive")
    assert "the photos do match" in text and "--camera-mode per_image" in text and "too few matching" not in text
    assert f"{pairs} photo pairs" in text
