"""``rerender demo``: a tiny run end to end (slow, real Blender, real SfM, real training, real backend), plus fast
checks of the pieces it is made of (camera conversion, look picking, GIF, contact sheet, reports, bad input)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from rerender.training.demo import PRESETS, Demo, DemoError, DemoOptions, preset
from rerender.training.demo.media import contact_sheet, write_gif
from rerender.training.gt_eval import GroundTruthReport

LAUNCH = "import sys; from rerender import main; sys.exit(main())"


def rerender_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCH, *args], capture_output=True, text=True, timeout=timeout)


# ---- fast checks -------------------------------------------------------------------------------------------------


def test_presets_are_consistent():
    for name, p in PRESETS.items():
        assert p.crop_size <= p.load_size, name
        assert p.val_count <= p.photos - 3, name  # appearance pretraining needs 3 training photos
        assert p.frames >= 2 and p.eval_pairs >= 1, name
    assert preset("tiny", photos=20).photos == 20
    assert preset("tiny", photos=None).photos == PRESETS["tiny"].photos
    with pytest.raises(ValueError, match="unknown demo size 'huge'"):
        preset("huge")


def test_training_gets_at_least_as_long_as_every_other_stage_together():
    small = PRESETS["small"]
    assert small.train_budget(250.0) == small.train_seconds, "a quick machine keeps the preset's budget"
    slow_photos = 400.0
    budget = small.train_budget(slow_photos)
    assert budget > small.train_seconds
    assert budget >= slow_photos + small.after_train_seconds, "training is at least half of the run"


def test_short_training_draws_negatives_from_most_of_the_collection(tmp_path):
    from rerender.training.config import short_budget_triplets

    assert short_budget_triplets(40) == {"triplet_k_near": 1, "triplet_k_far": 25}  # the quality benchmark's
    demo = Demo(DemoOptions(out=tmp_path, preset=PRESETS["small"]), echo=lambda s: None)
    demo.result.summary["dataset"] = {"train": 32}
    config = demo.train_config()
    assert (config.triplet_k_near, config.triplet_k_far) == (1, 20)
    medium = Demo(DemoOptions(out=tmp_path, preset=PRESETS["medium"]), echo=lambda s: None).train_config()
    assert (medium.triplet_k_near, medium.triplet_k_far) == (5, 13), "the paper's losses keep the paper's pools"


def test_blender_camera_conversion_round_trips():
    """A camera taken from Blender's matrix_world (with the import root's scale) gives back the same matrix."""
    from rerender.training.demo.shot import _camera_as_photo_camera
    from rerender.training.synthetic import blender_matrix_world, make_camera

    cam = make_camera("c", (4.0, -7.0, 2.5), (0.0, 0.0, 1.0), focal_mm=35.0, width=64, height=48)
    m = blender_matrix_world(cam)
    scaled = m.copy()
    scaled[:3, :3] *= 0.37  # a parent's uniform scale shows up in matrix_world
    back = _camera_as_photo_camera("c", scaled, cam.fx, 64, 48)
    np.testing.assert_allclose(back.R, cam.R, atol=1e-9)
    np.testing.assert_allclose(back.center, cam.center, atol=1e-9)
    np.testing.assert_allclose(blender_matrix_world(back), m, atol=1e-9)


def test_pick_looks_takes_the_two_most_different_latents():
    from types import SimpleNamespace

    from rerender.training.demo.shot import pick_looks

    gallery = [SimpleNamespace(name=n, latent=np.full(8, v, np.float32)) for n, v in
               (("noon", 0.1), ("night", -2.0), ("dusk", 0.5), ("fog", 1.5))]
    looks = pick_looks(gallery, frames=24)
    assert {lk.name for lk in looks} == {"night", "fog"}
    assert [lk.frame for lk in looks] == [1, 24]
    with pytest.raises(ValueError, match="needs two"):
        pick_looks(gallery[:1], frames=24)


def test_pick_looks_by_rendered_colour_starts_on_the_brighter_look():
    """With renders of one view under every look, the pair whose pictures differ most wins, whatever the latents."""
    from types import SimpleNamespace

    from rerender.training.demo.shot import colour_difference, pick_looks

    gallery = [SimpleNamespace(name=n, latent=np.full(8, v, np.float32)) for n, v in
               (("noon", 0.1), ("night", -2.0), ("dusk", 0.5), ("fog", 1.5))]
    colours = {"noon": (200, 210, 230), "night": (20, 25, 60), "dusk": (220, 140, 80), "fog": (150, 150, 150)}
    outputs = [np.broadcast_to(np.array(colours[g.name], np.uint8), (6, 8, 3)) for g in gallery]
    looks = pick_looks(gallery, frames=24, outputs=outputs)
    assert [lk.name for lk in looks] == ["noon", "night"] and [lk.frame for lk in looks] == [1, 24]
    diff = colour_difference(outputs[0], outputs[1])
    assert diff["luminance_difference"] > 150 and diff["mean_rgb_distance"] > 250


def test_gif_keeps_every_frame(tmp_path):
    frames = [np.full((12, 16, 3), (20 * i, 255 - 20 * i, 128), np.uint8) for i in range(5)]
    frames[2][:, :4] = 0  # identical consecutive frames must not be merged either
    path = write_gif(frames, tmp_path / "a.gif")
    with Image.open(path) as im:
        read = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    assert len(read) == 5
    assert all(r.shape == (12, 16, 3) for r in read)
    assert np.abs(read[0].astype(int) - read[4].astype(int)).mean() > 50


def test_contact_sheet_lays_out_rows_and_columns(tmp_path):
    rows = [[np.full((20, 30, 3), 200, np.uint8), np.zeros((10, 15, 3), np.uint8)] for _ in range(3)]
    path = contact_sheet(rows, ["buffer", "output"], tmp_path / "s.png", height=40, row_labels=["a", "b", "c"])
    sheet = np.asarray(Image.open(path))
    assert sheet.shape[0] >= 3 * 40
    assert sheet.shape[1] >= 60 + 30  # two tiles scaled to height 40 (60 + 60 wide), plus labels
    assert (sheet == 200).all(axis=-1).sum() >= 3 * 40 * 60  # the bright tiles are all there


def test_ground_truth_report_summarises_and_compares():
    r = GroundTruthReport()
    r.transfer = [{"view": "a", "latent_of_b": {"psnr": 20.0, "l1": 10.0, "ssim": 0.6},
                   "latent_of_random": {"psnr": 15.0, "l1": 18.0, "ssim": 0.4}},
                  {"view": "b", "latent_of_b": {"psnr": 14.0, "l1": 20.0, "ssim": 0.3},
                   "latent_of_random": {"psnr": 16.0, "l1": 17.0, "ssim": 0.5}}]
    r.transient = [{"view": "a", "transient_pixels": 40, "l1_without": 5.0, "l1_with": 30.0}]
    s = r.summary()
    assert s["appearance_transfer"]["psnr_latent_of_b"] == pytest.approx(17.0)
    assert s["appearance_transfer"]["b_beats_random"] == pytest.approx(0.5)
    assert s["transient"]["without_beats_with"] == 1.0
    md = r.markdown()
    assert "latent encoded from photo B | 2 | 17.00" in md and "label pass without people | 1 | 5.00" in md


def test_demo_refuses_a_folder_made_with_other_settings(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"preset": PRESETS["small"].to_json(), "seed": 0,
                                                        "segmenter": "truth"}))
    demo = Demo(DemoOptions(out=tmp_path, preset=PRESETS["tiny"]), echo=lambda s: None)
    with pytest.raises(DemoError, match="other settings"):
        demo.run()


def test_cli_rejects_bad_numbers_and_missing_cuda(tmp_path):
    result = rerender_cli("demo", "--out", str(tmp_path / "x"), "--photos", "1", timeout=120)
    assert result.returncode == 2
    assert "--photos 1 is too small" in result.stderr
    result = rerender_cli("demo", "--out", str(tmp_path / "x"), "--photos", "5", "--val-count", "5", timeout=120)
    assert result.returncode == 2 and "leaves no training photos" in result.stderr
    import torch

    if not torch.cuda.is_available():
        result = rerender_cli("demo", "--out", str(tmp_path / "x"), "--gpu", timeout=120)
        assert result.returncode == 2 and "no CUDA" in result.stderr
    assert not (tmp_path / "x").exists(), "a refused run must not create the results folder"


# ---- the tiny demo end to end ------------------------------------------------------------------------------------


BLEND_CHECK = textwrap.dedent("""
    import json, sys
    import bpy, addon_utils
    addon_utils.enable("rerender.addon", default_set=True)  # first, as an artist's Blender has it
    bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
    scene = bpy.data.scenes["Rerender demo"]
    action = scene.animation_data.action if scene.animation_data else None
    curves = []
    if action is not None:
        from bpy_extras import anim_utils
        slot = scene.animation_data.action_slot
        bag = anim_utils.action_get_channelbag_for_slot(action, slot) if slot else None
        curves = list(bag.fcurves) if bag is not None else list(getattr(action, "fcurves", []))
    latent = [c for c in curves if c.data_path.startswith("rerender.appearance[")]
    cam = scene.camera
    cam_curves = []
    if cam is not None and cam.animation_data and cam.animation_data.action:
        from bpy_extras import anim_utils
        cbag = anim_utils.action_get_channelbag_for_slot(cam.animation_data.action, cam.animation_data.action_slot)
        cam_curves = [c.data_path for c in cbag.fcurves]
    print("RESULT" + json.dumps({
        "engine": scene.render.engine,
        "latent_curves": len(latent),
        "keys_per_curve": sorted({len(c.keyframe_points) for c in latent}),
        "key_frames": sorted({round(k.co[0]) for c in latent for k in c.keyframe_points}),
        "latent_size": len(scene.rerender.appearance),
        "frames": [scene.frame_start, scene.frame_end],
        "camera_curves": sorted(set(cam_curves)),
        "points": max((len(o.data.vertices) for o in bpy.data.objects if o.type == "MESH"), default=0),
    }))
""")


@pytest.mark.slow
@pytest.mark.blender
@pytest.mark.timeout(1500)  # the whole pipeline: ~3 min alone, over 10 on a machine shared with other work
def test_tiny_demo_runs_end_to_end_and_every_output_is_sane(tmp_path):
    out = tmp_path / "demo"
    p = PRESETS["tiny"]
    result = rerender_cli("demo", "--size", "tiny", "--out", str(out), "--no-progress", timeout=1400)
    assert result.returncode == 0, f"rerender demo failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    for i, stage in enumerate(("collection", "reconstruct", "dataset", "train", "evaluate", "shot", "frames",
                               "media"), start=1):
        assert f"[{i}/8] {stage}: done in" in result.stdout

    # every output exists
    for name in ("contact_sheet.png", "camera_path.gif", "rerender_demo.blend", "demo.json", "README.md",
                 "evaluation/evaluation.json", "evaluation/evaluation.md", "evaluation/ground_truth_sheet.png",
                 "run/bundle/config.json"):
        assert (out / name).is_file(), f"missing output {name}"

    # GIF: N frames of the preset's size that change along the path
    with Image.open(out / "camera_path.gif") as gif:
        frames = [np.asarray(f.convert("RGB")).astype(np.float32) for f in ImageSequence.Iterator(gif)]
    assert len(frames) == p.frames
    assert frames[0].shape == (p.frame_size[1], p.frame_size[0], 3)
    assert np.abs(frames[0] - frames[-1]).mean() > 1.0, "camera and look change: first and last frame must differ"
    assert len({f.tobytes() for f in frames}) == p.frames, "every frame of a moving camera differs"
    assert all(f.std() > 1.0 for f in frames), "a frame is a flat colour: the render produced nothing"

    # contact sheet: one row per evaluated held-out view, not blank
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB")).astype(np.float32)
    assert sheet.shape[0] > 48 and sheet.std() > 5

    # evaluation: Table 1 metrics and the ground-truth comparisons, finite
    ev = json.loads((out / "evaluation" / "evaluation.json").read_text())
    t1 = ev["table1"]["staged"]
    assert set(t1) >= {"vgg", "l1", "psnr", "ssim"}
    assert all(math.isfinite(v) for v in t1.values())
    assert 0 < t1["psnr"] < 60 and 0 <= t1["l1"] <= 255 and -1 <= t1["ssim"] <= 1
    gt = ev["ground_truth"]["appearance_transfer"]
    assert gt["pairs"] == p.eval_pairs
    for key in ("psnr_latent_of_b", "psnr_latent_of_random", "l1_latent_of_b", "ssim_latent_of_b"):
        assert math.isfinite(gt[key]), key
    if "transient" in ev["ground_truth"]:
        tr = ev["ground_truth"]["transient"]
        assert tr["views"] >= 1 and math.isfinite(tr["l1_in_transient_region_labels_without_people"])
    summary = json.loads((out / "demo.json").read_text())
    assert summary["stages"]["dataset"]["segmentation"] == "generator ground truth"
    assert summary["stages"]["reconstruct"]["registered"] >= 3

    # the .blend opens in a fresh Blender: engine set, camera animated, two keyed looks on every latent component
    check = subprocess.run([sys.executable, "-c", BLEND_CHECK, str(out / "rerender_demo.blend")],
                           capture_output=True, text=True, timeout=300)
    line = [ln for ln in check.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, f"blend check failed:\n{check.stdout[-2000:]}\n{check.stderr[-3000:]}"
    blend = json.loads(line[0][len("RESULT"):])
    assert blend["engine"] == "RERENDER"
    assert blend["latent_size"] == 8 and blend["latent_curves"] == 8
    assert blend["keys_per_curve"] == [2] and blend["key_frames"] == [1, p.frames]
    assert blend["frames"] == [1, p.frames]
    assert {"location", "rotation_euler"} <= set(blend["camera_curves"])
    assert blend["points"] == summary["stages"]["reconstruct"]["points"] > 0, "the .blend holds the whole cloud"

    # resumable: a second run finds every stage done and redoes nothing
    again = rerender_cli("demo", "--size", "tiny", "--out", str(out), "--no-progress", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already done") == 8


def test_camera_accuracy_sees_through_a_similarity_and_catches_a_fold(tmp_path):
    """SfM's frame is arbitrary (rotation, scale, shift): aligned, true cameras give ~0 error; a folded arc does not."""
    import pycolmap

    from rerender.training.demo.pipeline import camera_accuracy
    from rerender.training.synthetic import plan_collection
    from rerender.training.synthetic.collection import _write_ground_truth

    info = plan_collection(8, width=64, height=48, seed=3)
    info.root = tmp_path / "collection"
    _write_ground_truth(info)

    def workspace(name: str, fold: bool) -> Path:
        angle = 0.7
        S = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        scale, shift = 0.25, np.array([3.0, -1.0, 2.0])
        rec = pycolmap.Reconstruction()
        for i, cam in enumerate(info.cameras, start=1):
            c = cam.center.copy()
            if fold and c[0] > 0:
                c[0] = -c[0]  # the right half of the arc folded onto the left
            R = np.asarray(cam.R) @ S.T  # world' = scale * S @ world + shift
            t = -R @ (scale * S @ c + shift)
            rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=64, height=48,
                                                            params=[cam.fx, cam.fy, cam.cx, cam.cy], camera_id=i))
            rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{cam.name}.jpg", camera_id=i, image_id=i),
                                             pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
        folder = tmp_path / name / "sparse" / "0"
        folder.mkdir(parents=True)
        rec.write_binary(str(folder))
        return tmp_path / name

    good = camera_accuracy(workspace("good", False), info.root)
    assert good["cameras_compared"] == 8
    assert good["median_center_error_m"] < 1e-6
    folded = camera_accuracy(workspace("folded", True), info.root)
    assert folded["median_center_error_of_spread"] > 0.05


def test_true_segmentation_is_put_where_the_dataset_builder_looks(tmp_path):
    """The builder skips photos whose segmentation is cached in D/work/segmentation/<stem>.png at the buffer size;
    the demo writes the generator's truth there (nearest resize keeps class ids exact)."""
    from support_colmap import write_tiny_workspace

    from rerender.training.dataset_builder import buffer_size
    from rerender.training.demo import prefill_true_segmentation

    tiny = write_tiny_workspace(tmp_path / "ws")
    truth_dir = tmp_path / "collection" / "ground_truth" / "segmentation"
    truth_dir.mkdir(parents=True)
    for name in tiny.image_names:
        labels = np.full((120, 160), 2, np.uint8)
        labels[:40] = 10  # sky on top
        labels[100:, 60:80] = 11  # a person
        Image.fromarray(labels).save(truth_dir / f"{Path(name).stem}.png")
    written = prefill_true_segmentation(tmp_path / "ws", tmp_path / "D", tmp_path / "collection", 64)
    assert written == len(tiny.image_names)
    for name in tiny.image_names:
        seg = np.asarray(Image.open(tmp_path / "D" / "work" / "segmentation" / f"{Path(name).stem}.png"))
        from rerender.training.dataset_builder import load_workspace

        view = next(v for v in load_workspace(tmp_path / "ws")[1] if v.name == name)
        assert (seg.shape[1], seg.shape[0]) == buffer_size(view.camera.width, view.camera.height, 64)
        assert set(np.unique(seg)) == {2, 10, 11}
    # a second call finds them all there
    assert prefill_true_segmentation(tmp_path / "ws", tmp_path / "D", tmp_path / "collection", 64) == 0
    (truth_dir / f"{Path(tiny.image_names[0]).stem}.png").unlink()
    import shutil

    shutil.rmtree(tmp_path / "D")
    with pytest.raises(DemoError, match="no ground-truth segmentation"):
        prefill_true_segmentation(tmp_path / "ws", tmp_path / "D", tmp_path / "collection", 64)


def test_ground_truth_eval_runs_transfer_and_transient_measurements(tmp_path):
    """gt_eval on a procedural dataset whose truth is known analytically (support_dataset's lights and people).

    The truth renderer is the procedural scene's own: view A under B's light = A's albedo × B's light; without
    people = the same with the person removed. A freshly initialised bundle cannot beat anything, so this checks
    the bookkeeping: which views, which pairs, which pixels, and that errors are measured against the right truth.
    """
    from support_backend import make_small_bundle
    from support_dataset import LIGHTS, PERSON, make_dataset

    from rerender.backend.runtime import ModelRuntime
    from rerender.training.data import load_view, read_manifest
    from rerender.training.gt_eval import SHEET_HEADERS, ground_truth_eval, write_report

    root = make_dataset(tmp_path / "D", n_train=4, n_val=2, height=32, width=40)
    _, records = read_manifest(root)
    views = {r.name: load_view(r) for r in records}
    index = {Path(r.name).stem: i for i, r in enumerate(records)}
    calls = []

    def truth(camera: str, appearance: str, transients: bool, width: int, height: int):
        calls.append((camera, appearance, transients, width, height))
        view = views[f"{camera}.jpg"]
        labels = view.segmentation.copy()
        if not transients:
            labels[labels == PERSON] = 2  # what the person hid is building
        mult = np.array(LIGHTS[index[appearance] % len(LIGHTS)][0], np.float32)
        photo = np.clip(view.buffer.color.astype(np.float32) * mult * 255, 0, 255).astype(np.uint8)
        return photo, labels

    runtime = ModelRuntime(make_small_bundle(tmp_path / "bundle"), "cpu")
    rows: list = []
    report = ground_truth_eval(runtime, root, truth, pairs=3, seed=1, progress=False, sheet_rows=rows)
    val = [r.name for r in records if r.split == "val"]
    assert [t["view"] for t in report.transfer] == [val[0], val[1], val[0]]  # cycles through the held-out views
    for t in report.transfer:
        assert t["appearance_from"] != t["view"] and t["random_other"] not in (t["view"], t["appearance_from"])
        assert all(np.isfinite(v) for v in t["latent_of_b"].values())
    assert all(c[2] is False for c in calls), "every truth of (b) and (c) is the people-free render"
    assert {c[3:] for c in calls} == {(40, 32)}, "the truth is rendered at the view's size"
    with_people = [n for n in val if (views[n].segmentation == PERSON).any()]
    assert [t["view"] for t in report.transient] == with_people  # once per view, only where people are
    assert all(t["transient_pixels"] == int((views[t["view"]].segmentation == PERSON).sum()) for t in report.transient)
    assert len(rows) == len(val) and all(len(tiles) == len(SHEET_HEADERS) for _, tiles in rows)
    write_report(report, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "ground_truth_eval.json").read_text())
    assert saved["summary"]["appearance_transfer"]["pairs"] == 3
    assert "Appearance transfer" in (tmp_path / "out" / "ground_truth_eval.md").read_text()
