"""Synthetic wild photo collections: ground truth consistency, determinism, re-rendering (real Blender via bpy)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rerender.bridge.classes import DEFAULT_CLASSES
from rerender.training.synthetic import (
    PhotoCamera, SceneSpec, blender_matrix_world, camera_path, key_points, load_collection, make_camera,
    plan_collection, project,
)
from rerender.training.synthetic.sampling import VISIT_JITTER_DEG, appearance_schedule, sun_visits

BUILDING = DEFAULT_CLASSES.id_of("building")
SKY = DEFAULT_CLASSES.id_of("sky")
PERSON = DEFAULT_CLASSES.id_of("person")
W, H = 160, 120


# ------------------------------------------------------------------------------------------ no Blender needed

def test_plan_is_deterministic_and_seed_dependent():
    a = plan_collection(6, width=W, height=H, seed=3)
    b = plan_collection(6, width=W, height=H, seed=3)
    c = plan_collection(6, width=W, height=H, seed=4)
    assert [x.to_json() for x in a.cameras] == [x.to_json() for x in b.cameras]
    assert {k: v.to_json() for k, v in a.appearances.items()} == {k: v.to_json() for k, v in b.appearances.items()}
    assert [x.to_json() for x in a.cameras] != [x.to_json() for x in c.cameras]


def test_cameras_follow_the_tourist_arc():
    info = plan_collection(40, width=640, height=480, seed=1)
    for cam in info.cameras:
        C = cam.center
        assert 24.0 - 1e-6 <= np.hypot(C[0], C[1]) <= 42.0 + 1e-6
        assert 1.5 <= C[2] <= 10.0
        assert C[1] < 0  # in front of the landmark (it faces -Y)
        focal_mm = cam.fx * 36.0 / cam.width
        assert 22.0 <= focal_mm <= 45.0
        # The landmark's center is in front of every camera.
        _, z = project(cam, np.array([[0.0, 0.0, 10.0]]))
        assert z[0] > 0


def test_appearance_schedule_has_night_and_daylight():
    kinds = appearance_schedule(20, seed=0)
    assert 1 <= kinds.count("night") <= 2
    assert kinds.count("day") >= 8 and "sunset" in kinds and "overcast" in kinds
    tiny = appearance_schedule(4, seed=0)
    assert tiny.count("night") == 1 and tiny[0] != "night"


def test_sunny_photos_share_their_visits_sun_and_the_sun_outshines_the_sky():
    """Shadows must agree between photos of one visit (SfM matches across them) and a day must read as a day."""
    seed = 5
    visits = sun_visits(seed)
    info = plan_collection(60, width=W, height=H, seed=seed)
    used = set()
    d_az, d_el = VISIT_JITTER_DEG
    for kind in ("day", "sunset"):
        photos = [a for a in info.appearances.values() if a.kind == kind]
        assert photos
        for a in photos:
            near = [k for k, (el, az) in enumerate(visits[kind])
                    if abs((a.sun_azimuth_deg - az + 180.0) % 360.0 - 180.0) <= d_az + 1e-9
                    and abs(a.sun_elevation_deg - el) <= d_el + 1e-9]
            assert near, f"{kind} sun at {a.sun_elevation_deg:.1f}/{a.sun_azimuth_deg:.1f} is in no visit {visits}"
            used.update((kind, k) for k in near)
            if kind == "day":
                assert a.sun_strength >= 80.0 * a.sky_strength
    assert {("day", k) for k in range(len(visits["day"]))} <= used  # every sunny visit has photos
    assert sun_visits(seed) == visits and sun_visits(seed + 1) != visits
    overcast = [a for a in info.appearances.values() if a.kind == "overcast"]
    assert overcast and max(a.sun_strength for a in overcast) < 0.2 * min(
        a.sun_strength for a in info.appearances.values() if a.kind == "day")


def test_projection_and_blender_matrix_agree():
    cam = make_camera("c", (10.0, -30.0, 2.0), (0.0, 0.0, 8.0), focal_mm=35.0, width=640, height=480, roll_deg=2.0)
    uv, z = project(cam, np.array([[0.0, 0.0, 8.0]]))
    assert np.allclose(uv[0], [320.0, 240.0], atol=1e-6) and z[0] > 0  # the aim point is the image center
    M = blender_matrix_world(cam)
    assert np.allclose(M[:3, 3], cam.center)
    # Blender cameras look down their local -Z: the world direction must be the COLMAP forward axis.
    assert np.allclose(-M[:3, 2], np.asarray(cam.R)[2])


def test_camera_path_is_smooth_and_passes_the_key_viewpoints():
    info = plan_collection(12, width=320, height=240, seed=0)
    path = camera_path(info.cameras, 60, keys=4)
    centers = np.array([c.center for c in path])
    steps = np.linalg.norm(np.diff(centers, axis=0), axis=1)
    assert steps.max() < 4 * np.median(steps) + 1e-6  # no jumps
    photo_centers = np.array([c.center for c in info.cameras])
    assert np.min(np.linalg.norm(photo_centers - centers[0], axis=1)) < 1e-6  # starts at a photo viewpoint
    for cam in path:  # every frame still looks at the landmark
        _, z = project(cam, np.array([[0.0, 0.0, 10.0]]))
        assert z[0] > 0


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="count must be at least 1"):
        plan_collection(0, width=W, height=H, seed=0)
    with pytest.raises(ValueError, match="unknown landmark parameter"):
        plan_collection(2, width=W, height=H, seed=0, landmark={"tower_heigth": 30})
    with pytest.raises(ValueError, match="rotation matrix"):
        PhotoCamera("x", 10, 10, 5, 5, 5, 5, [[1, 0, 0], [0, 1, 0], [0, 0, 2]], [0, 0, 0])
    with pytest.raises(ValueError, match="not a synthetic scene description"):
        SceneSpec.from_json({"format": "something else"})


# ----------------------------------------------------------------------------------------------- Blender

@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from rerender.training.synthetic import generate_collection

    out = tmp_path_factory.mktemp("synth")
    info = generate_collection(out, count=4, width=W, height=H, seed=0, quality="preview")
    return out, info


def _photo(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _labels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.blender
@pytest.mark.slow
def test_collection_files_and_ground_truth(collection):
    out, info = collection
    loaded = load_collection(out)
    assert loaded.names == info.names == [f"photo_{i:04d}" for i in range(4)]
    cameras = json.loads((out / "ground_truth" / "cameras.json").read_text())["cameras"]
    assert {"width", "height", "fx", "fy", "cx", "cy", "R", "t", "matrix_world"} <= set(cameras[0])
    for name in info.names:
        photo = _photo(out / "images" / f"{name}.jpg")
        labels = _labels(out / "ground_truth" / "segmentation" / f"{name}.png")
        assert photo.shape == (H, W, 3) and labels.shape == (H, W) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {c.id for c in DEFAULT_CLASSES}
        building = np.mean(labels == BUILDING)
        assert 0.05 < building < 0.98, f"{name}: building covers {building:.2f} of the photo"
    sky_photos = sum(np.mean(_labels(info.segmentation_path(n)) == SKY) > 0.01 for n in info.names)
    assert sky_photos >= 3
    person_fraction = [np.mean(_labels(info.segmentation_path(n)) == PERSON) for n in info.names]
    assert max(person_fraction) > 0 and max(person_fraction) < 0.3  # people are placed, and they stay small


@pytest.mark.blender
@pytest.mark.slow
def test_landmark_points_project_onto_building(collection):
    out, info = collection
    hits = misses = 0
    for cam in info.cameras:
        labels = _labels(info.segmentation_path(cam.name))
        for name, point in key_points().items():
            uv, z = project(cam, np.array([point]))
            u, v = uv[0]
            if z[0] <= 0 or not (1 <= u < W - 1 and 1 <= v < H - 1):
                continue
            if labels[int(v), int(u)] == BUILDING:
                hits += 1
            else:
                misses += 1
    assert hits >= 3 and misses <= max(1, hits // 10), f"{hits} key points on the building, {misses} elsewhere"


@pytest.mark.blender
@pytest.mark.slow
def test_night_photos_are_darker_than_day(collection):
    out, info = collection
    brightness = {n: _photo(info.image_path(n)).mean() for n in info.names}
    night = [brightness[n] for n in info.names if info.appearances[n].kind == "night"]
    day = [brightness[n] for n in info.names if info.appearances[n].kind == "day"]
    assert night and day
    assert max(night) < 0.6 * min(day), brightness


@pytest.mark.blender
@pytest.mark.slow
def test_render_view_in_a_fresh_process_reproduces_the_photo(collection, tmp_path):
    out, info = collection
    name = info.names[1]
    script = textwrap.dedent(f"""
        import numpy as np
        from rerender.training.synthetic import render_view
        photo, labels = render_view({str(out)!r}, {name!r}, {name!r})
        np.savez({str(tmp_path / 'view.npz')!r}, photo=photo, labels=labels)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=600)
    view = np.load(tmp_path / "view.npz")
    saved_labels = _labels(info.segmentation_path(name))
    assert np.mean(view["labels"] == saved_labels) > 0.999
    saved_photo = _photo(info.image_path(name)).astype(np.float32)
    error = np.abs(view["photo"].astype(np.float32) - saved_photo).mean()
    assert error < 3.0, f"re-rendered photo differs by {error:.2f} gray levels on average (JPEG alone: ~1)"


@pytest.mark.blender
@pytest.mark.slow
def test_render_view_transfers_appearance_without_transients(collection):
    from rerender.training.synthetic import render_view

    out, info = collection
    day = next(n for n in info.names if info.appearances[n].kind == "day")
    night = next(n for n in info.names if info.appearances[n].kind == "night")
    photo, labels = render_view(out, day, night, transients=False)
    assert not np.isin(labels, DEFAULT_CLASSES.transient_ids).any()
    static = ~np.isin(_labels(info.segmentation_path(day)), DEFAULT_CLASSES.transient_ids)
    assert np.mean(labels[static] == _labels(info.segmentation_path(day))[static]) > 0.999  # same view
    sky = labels == SKY
    assert sky.mean() > 0.01
    day_photo = _photo(info.image_path(day))
    assert photo[sky].mean() < 0.3 * day_photo[sky].mean()  # the night's sky
    assert photo.mean() < 0.85 * day_photo.mean()  # even with the facade floodlit


@pytest.mark.blender
@pytest.mark.slow  # needs the rendered collection fixture
def test_generation_resumes_and_refuses_a_different_collection(collection):
    from rerender.training.synthetic import generate_collection

    out, info = collection
    before = {n: info.image_path(n).stat().st_mtime_ns for n in info.names}
    again = generate_collection(out, count=4, width=W, height=H, seed=0, quality="preview")
    assert again.seconds_per_photo == []  # nothing re-rendered: every photo was already there
    assert {n: info.image_path(n).stat().st_mtime_ns for n in info.names} == before
    with pytest.raises(FileExistsError, match="different synthetic collection"):
        generate_collection(out, count=4, width=W, height=H, seed=1, quality="preview")


def test_similarity_residuals_factor_out_scale_rotation_translation():
    from rerender.training.synthetic.geometry import look_at_rotation, similarity_residuals

    rng = np.random.default_rng(0)
    points = rng.normal(size=(20, 3)) * 10
    R = look_at_rotation((1.0, 2.0, 3.0), (-4.0, 7.0, 1.0), roll_deg=20.0)
    moved = 0.37 * points @ R.T + np.array([5.0, -2.0, 9.0])
    assert similarity_residuals(moved, points).max() < 1e-9
    mirrored = points * np.array([-1.0, 1.0, 1.0])  # a mirror is not a similarity: it must show
    assert np.median(similarity_residuals(mirrored, points)) > 1.0


@pytest.mark.blender
def test_animated_camera_follows_the_path():
    import bpy

    from rerender.training.synthetic.animation import animate_camera

    info = plan_collection(8, width=320, height=240, seed=2)
    path = camera_path(info.cameras, 12, keys=4)
    scene = bpy.context.scene  # animation is flushed to the objects of the active scene's depsgraph only
    saved = (scene.frame_start, scene.frame_end, scene.frame_current)
    saved_size = (scene.render.resolution_x, scene.render.resolution_y)
    obj = bpy.data.objects.new("test_synthetic_path_cam", bpy.data.cameras.new("test_synthetic_path_cam"))
    scene.collection.objects.link(obj)
    try:
        first, last = animate_camera(obj, path, frame_start=5, scene=scene)
        assert (first, last) == (5, 16) and (scene.frame_start, scene.frame_end) == (5, 16)
        for k in (0, 7, 11):
            scene.frame_set(5 + k)
            assert np.allclose(np.array(obj.matrix_world), blender_matrix_world(path[k]), atol=1e-4)
            assert obj.data.lens == pytest.approx(path[k].fx * 36.0 / path[k].width, rel=1e-5)
    finally:
        bpy.data.objects.remove(obj)
        scene.frame_start, scene.frame_end = saved[:2]
        scene.frame_set(saved[2])
        scene.render.resolution_x, scene.render.resolution_y = saved_size


def test_transients_stay_apart_and_clear_of_the_photographer():
    info = plan_collection(30, width=W, height=H, seed=9)
    for cam in info.cameras:
        people = [t for t in info.transients[cam.name] if t.kind == "person"]
        cars = [t for t in info.transients[cam.name] if t.kind == "car"]
        assert 2 <= len(people) <= 12 and len(cars) <= 3
        for t in people:
            assert np.hypot(t.x - cam.center[0], t.y - cam.center[1]) >= 4.0
        for i, a in enumerate(people):
            for b in people[i + 1:]:
                assert np.hypot(a.x - b.x, a.y - b.y) >= 0.7
        for i, a in enumerate(cars):
            for b in cars[i + 1:]:
                assert a.y != b.y or abs(a.x - b.x) >= 6.0


def test_synth_command_rejects_bad_arguments(tmp_path, capsys):
    from rerender import main

    assert main(["synth", "--out", str(tmp_path / "o"), "--count", "0"]) == 2
    assert "--count must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path / "o"), "--count", "2", "--size", "640by480"])
    assert "size must look like 640x480" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing was started


@pytest.mark.blender
@pytest.mark.slow
def test_render_view_of_a_new_camera_from_a_bare_scene_description(collection):
    from rerender.training.synthetic import render_view

    out, info = collection
    frame = camera_path(info.cameras, 5, keys=3)[2]
    photo, labels = render_view(info.scene, frame, info.appearances[info.names[0]], width=80, height=60)
    assert photo.shape == (60, 80, 3) and labels.shape == (60, 80)
    assert 0.05 < np.mean(labels == BUILDING) < 0.98  # the path keeps the landmark in view
    assert not np.isin(labels, DEFAULT_CLASSES.transient_ids).any()  # a new camera has no transients of its own


def test_camera_path_works_in_any_similarity_frame():
    """An SfM reconstruction has its own frame (scale, rotation, origin): the path must follow the photos there."""
    from rerender.training.synthetic.geometry import look_at_rotation

    info = plan_collection(10, width=320, height=240, seed=4)
    Q = look_at_rotation((0.0, 0.0, 0.0), (0.3, -1.0, 0.7), roll_deg=35.0)  # an arbitrary rotation
    scale, shift = 0.13, np.array([3.0, -1.0, 2.0])

    def to_sfm(cam):  # world' = scale * Q @ world + shift
        R = np.asarray(cam.R) @ Q.T
        t = scale * np.asarray(cam.t) - R @ shift
        return PhotoCamera(cam.name, cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy, R.tolist(), t.tolist())

    path = camera_path(info.cameras, 20, keys=4)
    moved = camera_path([to_sfm(c) for c in info.cameras], 20, keys=4)
    for a, b in zip(path, moved):
        assert np.allclose(scale * Q @ a.center + shift, b.center, atol=1e-6)
        assert np.allclose(np.asarray(a.R) @ Q.T, np.asarray(b.R), atol=1e-6)  # same view, no roll added
