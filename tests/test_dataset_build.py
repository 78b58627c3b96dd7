"""`rerender dataset` on the reconstructed synthetic set: aligned buffers, labels, split, manifest, resume, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pycolmap
import pytest
from PIL import Image

from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import DEFAULT_CLASSES
from rerender.commands import main as rerender_main
from rerender.training.dataset_builder import DatasetError, DatasetOptions, build_dataset, split_views, view_stem
from rerender.training.class_shares import RemapError
from rerender.training.point_labels import read_point_labels
from rerender.training.segmentation import Segmenter
from support_photos import BACKGROUND, reconstructed_workspace, synthetic_photo_set

BACKGROUND_SRGB = tuple(round(c * 255) for c in BACKGROUND)

# the buffer's non-empty pixels must overlap the object's true silhouette with at least this IoU (sparse SfM points
# drawn as splats: holes inside, a splat radius of overhang at the border), and nearly all of them must fall on it
MIN_IOU = 0.6
MIN_PRECISION = 0.85
OPTIONS = dict(max_size=320, min_size=200, val_count=2, seed=1, splat_px=6.0)  # sparse cloud: big splats


@pytest.fixture(scope="module")
def segmenter(shared_dir):
    from rerender.training.segmentation.espnet_segmenter import EspnetSegmenter

    weights = shared_dir / "models" / "espnet"
    if not (weights / "espnet_p2_q8_cityscapes.pth").is_file():
        pytest.skip(f"ESPNet weights not found in {weights}")
    return EspnetSegmenter(weights, max_side=256)


@pytest.fixture(scope="module")
def built(tmp_path_factory, segmenter):
    _, ws, _ = reconstructed_workspace(tmp_path_factory)
    out = tmp_path_factory.mktemp("dataset")
    report = build_dataset(ws, out, DatasetOptions(**OPTIONS), segmenter=segmenter, progress=False)
    return ws, out, report


@pytest.mark.slow
@pytest.mark.blender
def test_buffers_line_up_with_the_object_silhouette(built, tmp_path_factory):
    ws, out, report = built
    truth_dir = synthetic_photo_set(tmp_path_factory)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["views"]) >= 10, report.to_text()
    ious = []
    for view in manifest["views"]:
        d = out / "views" / view["stem"]
        buf = DeepBuffer.load_npz(d / "buffer.npz")
        photo = np.asarray(Image.open(d / "photo.png"))
        seg = np.asarray(Image.open(d / "segmentation.png"))
        assert buf.shape == photo.shape[:2] == seg.shape == (view["height"], view["width"])
        sil_img = Image.open(truth_dir / "silhouettes" / view["name"]).resize((view["width"], view["height"]))
        sil = np.asarray(sil_img) > 127
        mask = buf.mask
        iou = (mask & sil).sum() / (mask | sil).sum()
        precision = (mask & sil).sum() / mask.sum()
        ious.append(iou)
        assert precision > MIN_PRECISION, f"{view['name']}: only {precision:.2f} of buffer pixels on the object"
        assert iou > MIN_IOU, f"{view['name']}: IoU {iou:.2f} with the silhouette"
        assert np.isfinite(buf.depth[mask]).all() and np.isinf(buf.depth[~mask]).all()
    print(f"silhouette IoU: min {min(ious):.3f}, mean {np.mean(ious):.3f}")


@pytest.mark.slow
@pytest.mark.blender
def test_manifest_split_labels_and_depth_stats(built):
    ws, out, report = built
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "rerender-dataset" and manifest["version"] == 1
    assert len(manifest["classes"]) == 19 and manifest["classes"][10]["name"] == "sky"
    splits = [v["split"] for v in manifest["views"]]
    assert splits.count("val") == 2 and splits.count("train") == len(splits) - 2
    assert split_views([v["name"] for v in manifest["views"]], 2, 1) == {v["name"]: v["split"] for v in manifest["views"]}
    rec = pycolmap.Reconstruction(str(ws / "sparse" / "0"))
    for v in manifest["views"]:
        cam = v["camera"]
        assert cam["model"] == "PINHOLE" and len(cam["params"]) == 4
        image = rec.find_image_with_name(v["name"])
        assert np.allclose(cam["R"], image.cam_from_world().rotation.matrix(), atol=1e-9)
        assert v["coverage"] > 0.15
    stats = manifest["depth_stats"]
    assert 0 < stats["p01"] < stats["p50"] < stats["p99"] < 1e4
    assert manifest["dropped"] == []

    labels = read_point_labels(ws)
    assert set(labels["point3D_id"].tolist()) == set(rec.point3D_ids())
    assert labels["label"].dtype == np.uint8
    assert (labels["label"] != 255).mean() > 0.5  # most points are seen in segmented photos
    buf = DeepBuffer.load_npz(out / "views" / manifest["views"][0]["stem"] / "buffer.npz")
    drawn = buf.label[buf.mask]
    assert (drawn != 255).mean() > 0.5, "the label pass should carry the points' labels"


@pytest.mark.slow
@pytest.mark.blender
def test_resume_drops_unreadable_and_sparse_views_and_keeps_the_rest(built, tmp_path, segmenter):
    ws, out, report = built
    ws2, out2 = tmp_path / "ws", tmp_path / "dataset"
    shutil.copytree(ws, ws2)
    shutil.copytree(out, out2)
    manifest = json.loads((out / "manifest.json").read_text())
    kept_before = [v["name"] for v in manifest["views"]]
    broken, rerender = kept_before[0], kept_before[1]
    for name in (broken, rerender):  # as if the build had been interrupted before these two views
        (out2 / "work" / "views" / f"{view_stem(name)}.json").unlink()
        shutil.rmtree(out2 / "views" / view_stem(name))
    (out2 / "work" / "segmentation" / f"{view_stem(broken)}.png").unlink()
    (ws2 / "images" / broken).write_bytes(b"not an image any more")
    kept_buffer = out2 / "views" / view_stem(kept_before[2]) / "buffer.npz"
    stamp = kept_buffer.stat().st_mtime_ns

    opts = DatasetOptions(**{**OPTIONS, "val_count": 1, "min_coverage": 0.99})  # only the re-rendered view sees 0.99
    report2 = build_dataset(ws2, out2, opts, segmenter=segmenter, progress=False)
    reasons = {d["name"]: d["reason"] for d in report2.dropped}
    assert set(reasons) == {broken, rerender}
    assert "unreadable" in reasons[broken]
    assert "too sparse" in reasons[rerender]
    assert sorted(report2.kept) == sorted(kept_before[2:])
    assert kept_buffer.stat().st_mtime_ns == stamp  # finished views were not rebuilt


def test_workspace_without_sparse_model_is_refused_clearly(tmp_path, capsys):
    (tmp_path / "ws" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no COLMAP model in sparse/0"):
        build_dataset(tmp_path / "ws", tmp_path / "d", progress=False)
    assert rerender_main(["dataset", str(tmp_path / "ws"), "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "rerender reconstruct" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset(tmp_path / "nowhere", tmp_path / "d", progress=False)


def test_split_is_fixed_by_seed_and_follows_the_paper_sizes():
    from rerender.training.dataset_builder import default_val_count

    names = [f"p{i:03d}.jpg" for i in range(50)]
    a, b = split_views(names, 5, 0), split_views(list(reversed(names)), 5, 0)
    assert a == b and sum(s == "val" for s in a.values()) == 5
    assert split_views(names, 5, 1) != a
    assert default_val_count(2000) == 100 and default_val_count(30) == 3 and default_val_count(1) == 0


class _LandmarkAsCar(Segmenter):
    """A street-scene model's mistake, made deterministic: the flat background is sky, the landmark is "car"."""

    classes = DEFAULT_CLASSES
    name = "landmark-as-car"

    def _predict(self, photo):
        sky = np.abs(photo.astype(np.int16) - np.array(BACKGROUND_SRGB)).max(2) < 12
        return np.where(sky, DEFAULT_CLASSES.id_of("sky"), DEFAULT_CLASSES.id_of("car")).astype(np.uint8)


@pytest.mark.slow
@pytest.mark.blender
def test_landmark_labelled_transient_is_reported_and_remap_fixes_it(tmp_path_factory):
    _, ws, _ = reconstructed_workspace(tmp_path_factory)
    out = tmp_path_factory.mktemp("car_dataset")
    opts = dict(OPTIONS, max_size=160, min_size=100)
    report = build_dataset(ws, out, DatasetOptions(**opts), segmenter=_LandmarkAsCar(), progress=False)
    assert report.point_shares["car"] > 0.9, report.point_shares
    assert report.pixel_shares["car"] > 0.1 and report.pixel_shares["sky"] > 0.3, report.pixel_shares
    assert len(report.warnings) == 1 and "--remap car=building" in report.warnings[0]
    text = report.to_text()
    assert "WARNING" in text and "car" in text and "sky" in text

    fixed = build_dataset(ws, out, DatasetOptions(**opts, remap={"car": "building"}), progress=False)
    assert fixed.warnings == []
    assert fixed.point_shares["building"] > 0.9 and "car" not in fixed.point_shares
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["remap"] == {"car": "building"} and manifest["warnings"] == []
    view = out / "views" / manifest["views"][0]["stem"]
    seg = np.asarray(Image.open(view / "segmentation.png"))
    assert DEFAULT_CLASSES.id_of("car") not in np.unique(seg)
    buf = DeepBuffer.load_npz(view / "buffer.npz")  # the label pass is rasterized from the relabelled points
    drawn = buf.label[buf.mask]
    assert (drawn == DEFAULT_CLASSES.id_of("building")).mean() > 0.9
    with pytest.raises(RemapError, match="'cars' is not a class"):
        build_dataset(ws, out, DatasetOptions(**opts, remap={"cars": "building"}), progress=False)


@pytest.mark.slow
@pytest.mark.blender
def test_dataset_command_is_quiet_without_verbose(tmp_path_factory, shared_dir):
    weights = shared_dir / "models" / "espnet"
    if not (weights / "espnet_p2_q8_cityscapes.pth").is_file():
        pytest.skip(f"ESPNet weights not found in {weights}")
    _, full, _ = reconstructed_workspace(tmp_path_factory)
    ws = tmp_path_factory.mktemp("ten_photos") / "ws"  # the same workspace with 10 registered photos
    shutil.copytree(full, ws, ignore=shutil.ignore_patterns("database.db", "distorted", "stereo"))
    rec = pycolmap.Reconstruction(str(ws / "sparse" / "0"))
    for image_id in sorted(rec.reg_image_ids())[10:]:
        rec.deregister_frame(rec.image(image_id).frame_id)
    rec.write(str(ws / "sparse" / "0"))
    assert pycolmap.Reconstruction(str(ws / "sparse" / "0")).num_reg_images() == 10
    out = tmp_path_factory.mktemp("quiet_dataset")
    cmd = [sys.executable, "-m", "rerender", "dataset", str(ws), "--out", str(out), "--max-size", "160",
           "--min-size", "100", "--splat-px", "6", "--segmenter-weights", str(weights)]
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    # lines as a terminal shows them: a progress bar redraws itself with "\r" on one line
    lines = (proc.stdout + proc.stderr).decode().rstrip("\n").split("\n")
    print(f"rerender dataset on 10 photos: {len(lines)} lines")
    assert len(lines) < 40, "\n".join(lines)
    assert any("10 views kept" in line for line in lines), "\n".join(lines)
    assert not any(line.startswith("Saved:") for line in lines), "Blender's per-file lines should be in the log"
    assert any("views kept" in line for line in lines) and any("segmenter: espnet" in line for line in lines)
    assert "Saved:" in (out / "work" / "native.log").read_text()


def test_class_shares_warning_and_remap_table():
    from rerender.training.class_shares import (class_counts, parse_remap, remap_lut, shares, shares_text,
                                                transient_warnings)

    car, building, sky = (DEFAULT_CLASSES.id_of(n) for n in ("car", "building", "sky"))
    points = np.array([car] * 51 + [building] * 40 + [sky] * 9 + [255] * 50, np.uint8)
    point_shares = shares(class_counts([points]), DEFAULT_CLASSES)
    assert point_shares == pytest.approx({"car": 0.51, "building": 0.40, "sky": 0.09})  # unknown not counted
    assert list(point_shares) == ["car", "building", "sky"]
    warnings = transient_warnings(point_shares, DEFAULT_CLASSES)
    assert len(warnings) == 1 and "51%" in warnings[0] and "--remap car=building" in warnings[0]
    assert transient_warnings({"person": 0.05, "building": 0.95}, DEFAULT_CLASSES) == []  # a few real passers-by
    assert shares_text({"sky": 0.5, "car": 0.004}, point_shares).startswith("sky 50% / 9%, car 0% / 51%")

    lut = remap_lut(parse_remap(["car=building", " truck = building "]), DEFAULT_CLASSES)
    assert lut[car] == building and lut[DEFAULT_CLASSES.id_of("truck")] == building and lut[sky] == sky
    assert lut[255] == 255
    with pytest.raises(RemapError, match="CLASS=CLASS"):
        parse_remap(["car"])
    with pytest.raises(RemapError, match="'statue' is not a class.*road, sidewalk, building"):
        remap_lut({"car": "statue"}, DEFAULT_CLASSES)


def test_bad_remap_is_refused_by_the_command(tmp_path, capsys):
    (tmp_path / "ws").mkdir()
    assert rerender_main(["dataset", str(tmp_path / "ws"), "--out", str(tmp_path / "d"), "--remap", "car"]) == 2
    assert "use CLASS=CLASS" in capsys.readouterr().err
