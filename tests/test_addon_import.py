"""COLMAP import into the real Blender (bpy wheel): counts, exact cameras, colors, labels, up axis, bad folders."""

from __future__ import annotations

import numpy as np
import pytest

from support_colmap import TINY_CAMERAS, facade_points, write_fused_ply, write_tiny_workspace

bpy = pytest.importorskip("bpy")
pytest.importorskip("pycolmap")

from rerender.addon import cameras as cams  # noqa: E402
from rerender.addon import colmap_import as ci  # noqa: E402
from rerender.addon import points as pts  # noqa: E402
from rerender.bridge.colors import srgb8_to_linear  # noqa: E402

pytestmark = pytest.mark.blender

N = 120  # facade points; the marker makes N + 1


@pytest.fixture()
def scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def _labels(n: int) -> np.ndarray:
    lab = (np.arange(n + 1) % 19).astype(np.uint8)
    lab[5] = 255  # one explicitly unknown point
    return lab


def _attribute(obj, name: str, prop: str, width: int) -> np.ndarray:
    data = obj.data.attributes[name].data
    out = np.empty(len(data) * width, np.float32 if prop == "color" else np.int32)
    data.foreach_get(prop, out)
    return out.reshape(len(data), width) if width > 1 else out


def _datablock_counts() -> dict[str, int]:
    return {k: len(getattr(bpy.data, k)) for k in ("objects", "collections", "meshes", "cameras", "images")}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_import_counts_colors_labels_and_exact_cameras(tmp_path, scene, binary):
    ws = write_tiny_workspace(tmp_path / "ws", binary=binary, n_points=N, labels=_labels(N))
    result = ci.import_reconstruction(ws.workspace, scene)

    assert result.source == "sparse"
    assert len(result.points.data.vertices) == N + 1 == result.num_points
    assert sorted(result.cameras) == sorted(ws.image_names)
    assert result.resolution == (96, 72)  # two of the three photos are 96 x 72
    assert (scene.render.resolution_x, scene.render.resolution_y) == (96, 72)

    # Each vertex knows its COLMAP point id; colors are exactly the linear values of the photo colors, labels
    # exactly as written.
    ids = _attribute(result.points, pts.POINT_ID_ATTR, "value", 1)
    assert sorted(ids) == sorted(ws.point_ids)
    order = np.searchsorted(ws.point_ids, ids)  # the test's ids are increasing
    colors = _attribute(result.points, pts.COLOR_ATTR, "color", 4)
    labels = _attribute(result.points, pts.LABEL_ATTR, "value", 1)
    np.testing.assert_array_equal(colors[:, :3], srgb8_to_linear(ws.rgb8[order]))
    np.testing.assert_array_equal(labels, _labels(N)[order])

    # Every camera reproduces its COLMAP calibration and pose (relative to the reconstruction root).
    for name, _, _, w, h, _, _ in TINY_CAMERAS:
        obj = result.cameras[name]
        im = ws.image(name)
        back = cams.colmap_from_camera(obj, w, h, cams.camera_pixel_aspect(obj, scene))
        c = im.camera
        np.testing.assert_allclose([back.fx, back.fy, back.cx, back.cy],
                                   [c.focal_length_x, c.focal_length_y, c.principal_point_x, c.principal_point_y],
                                   atol=1e-4)
        np.testing.assert_allclose(back.R, im.cam_from_world().rotation.matrix(), atol=1e-6)
        np.testing.assert_allclose(back.t, im.cam_from_world().translation, atol=1e-5)
        assert obj.parent is result.root


def test_up_axis_scale_and_hidden_photo_cameras_with_backgrounds(tmp_path, scene):
    ws = write_tiny_workspace(tmp_path / "ws", n_points=N)
    result = ci.import_reconstruction(ws.workspace, scene)
    bpy.context.view_layer.update()
    distances = []
    for obj in result.cameras.values():
        m = np.array(obj.matrix_world)
        up = m[:3, 1] / np.linalg.norm(m[:3, 1])
        assert up[2] > 0.95, f"{obj.name}: photo 'up' should become Blender +Z, got {up}"
        distances.append(np.linalg.norm(m[:3, 3]))
        bg = obj.data.background_images
        assert len(bg) == 1 and bpy.path.abspath(bg[0].image.filepath).endswith(obj.name)
    # Centered and scaled so photos sit about AUTO_VIEW_DISTANCE from the scene center.
    assert np.median(distances) == pytest.approx(ci.AUTO_VIEW_DISTANCE, rel=0.05)
    assert result.camera_collection.hide_render
    assert scene.camera is not None
    # No labels file: every point is unknown.
    assert set(_attribute(result.points, pts.LABEL_ATTR, "value", 1)) == {255}


def test_dense_fused_ply_replaces_sparse_points_with_its_labels(tmp_path, scene):
    ws = write_tiny_workspace(tmp_path / "ws", n_points=N)
    xyz, rgb = facade_points(2000, seed=3)
    write_fused_ply(ws.workspace / "dense" / "fused.ply", xyz, rgb)
    fused_label = (np.arange(len(xyz)) % 7).astype(np.uint8)
    (ws.workspace / "rerender").mkdir()
    np.savez(ws.workspace / "rerender" / "point_labels.npz", point3D_id=ws.point_ids,
             label=np.zeros(N + 1, np.uint8), fused_label=fused_label)

    result = ci.import_reconstruction(ws.workspace, scene)
    assert result.source == "dense" and result.num_points == len(xyz)
    np.testing.assert_array_equal(_attribute(result.points, pts.LABEL_ATTR, "value", 1), fused_label)
    np.testing.assert_array_equal(_attribute(result.points, pts.COLOR_ATTR, "color", 4)[:, :3],
                                  srgb8_to_linear(rgb))
    sparse = ci.import_reconstruction(ws.workspace, scene, dense=False, name="sparse")
    assert sparse.source == "sparse" and sparse.num_points == N + 1


def test_ascii_ply_reads_like_binary(tmp_path):
    xyz, rgb = facade_points(5)
    lines = ["ply", "format ascii 1.0", f"element vertex {len(xyz)}", "property double x", "property double y",
             "property double z", "property uchar red", "property uchar green", "property uchar blue", "end_header"]
    lines += [f"{x} {y} {z} {r} {g} {b}" for (x, y, z), (r, g, b) in zip(xyz, rgb)]
    (tmp_path / "a.ply").write_text("\n".join(lines) + "\n")
    got_xyz, got_rgb = ci.read_ply_points(tmp_path / "a.ply")
    np.testing.assert_allclose(got_xyz, xyz)
    np.testing.assert_array_equal(got_rgb, rgb)


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


MALFORMED = {
    "missing points3D": (lambda ws: (ws / "sparse/0/points3D.bin").unlink(), "missing points3D"),
    "truncated points3D": (lambda ws: _truncate(ws / "sparse/0/points3D.bin"), "truncated or corrupt"),
    "truncated images": (lambda ws: _truncate(ws / "sparse/0/images.bin"), "truncated or corrupt"),
    "truncated cameras": (lambda ws: _truncate(ws / "sparse/0/cameras.bin"), "truncated or corrupt"),
    "truncated fused.ply": (lambda ws: write_fused_ply(ws / "dense/fused.ply", *facade_points(50)) or
                            _truncate(ws / "dense/fused.ply", 0.7), "truncated file"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_model_gives_clear_error_and_creates_nothing(tmp_path, scene, case):
    ws = write_tiny_workspace(tmp_path / "ws", n_points=N).workspace
    damage, expected = MALFORMED[case]
    damage(ws)
    before = _datablock_counts()
    with pytest.raises(ci.ColmapImportError, match=expected):
        ci.import_reconstruction(ws, scene)
    assert _datablock_counts() == before


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("name", ["cameras", "images", "points3D", "rigs", "frames"])
def test_damaged_binaries_are_refused_fast_by_the_importer_and_create_nothing(tmp_path, scene, name, damage):
    import time

    ws = write_tiny_workspace(tmp_path / "ws", n_points=N).workspace
    path = ws / "sparse" / "0" / f"{name}.bin"
    if damage == "truncated":
        _truncate(path)
    else:
        path.write_bytes(np.random.default_rng(7).integers(0, 256, path.stat().st_size, np.uint8).tobytes())
    before = _datablock_counts()
    started = time.perf_counter()
    with pytest.raises(ci.ColmapImportError, match=f"{name}.bin"):
        ci.import_reconstruction(ws, scene, undistort=True)
    assert time.perf_counter() - started < 1.0
    assert _datablock_counts() == before and not (ws / "rerender").exists()


def test_not_a_colmap_folder(tmp_path, scene):
    (tmp_path / "holiday").mkdir()
    (tmp_path / "holiday" / "notes.txt").write_text("not a model")
    before = _datablock_counts()
    with pytest.raises(ci.ColmapImportError, match="not a COLMAP reconstruction"):
        ci.import_reconstruction(tmp_path / "holiday", scene)
    with pytest.raises(ci.ColmapImportError, match="does not exist"):
        ci.import_reconstruction(tmp_path / "nowhere", scene)
    assert _datablock_counts() == before


def test_distorted_cameras_are_refused_or_undistorted(tmp_path, scene):
    distorted = (("a.jpg", "OPENCV", (90.0, 92.0, 48.0, 36.0, -0.2, 0.05, 0.0, 0.0), 96, 72, (0.0, -0.6, -6.0), 0),
                 TINY_CAMERAS[1])
    ws = write_tiny_workspace(tmp_path / "ws", n_points=N, cameras=distorted).workspace
    with pytest.raises(ci.ColmapImportError, match="undistort"):
        ci.import_reconstruction(ws, scene)
    assert "a.jpg" not in bpy.data.objects
    result = ci.import_reconstruction(ws, scene, undistort=True)
    assert sorted(result.cameras) == ["a.jpg", "b.jpg"]
    assert (ws / "rerender" / "undistorted" / "sparse").is_dir()


def test_operator_imports_and_reports_errors(tmp_path, scene):
    ws = write_tiny_workspace(tmp_path / "ws", n_points=N).workspace
    ci.register()
    try:
        assert bpy.ops.rerender.import_colmap(directory=str(ws)) == {"FINISHED"}
        assert "ws points" in bpy.data.objects and "b.jpg" in bpy.data.objects
        before = _datablock_counts()
        with pytest.raises(RuntimeError, match="not a COLMAP reconstruction"):
            bpy.ops.rerender.import_colmap(directory=str(tmp_path))
        assert _datablock_counts() == before
    finally:
        ci.unregister()
    assert not hasattr(bpy.types, "RERENDER_OT_import_colmap")


def test_documented_one_liner_enables_the_import_operator(tmp_path, scene):
    """docs/addon-rasterizer.md: the add-on's own register() (the installed extension's code path) in bpy."""
    import addon_utils

    ws = write_tiny_workspace(tmp_path / "ws", n_points=N).workspace
    addon_utils.enable("rerender.addon", default_set=True)
    try:
        assert bpy.ops.rerender.import_colmap(directory=str(ws), load_images=False) == {"FINISHED"}
        assert "ws photos" in bpy.data.collections
    finally:
        addon_utils.disable("rerender.addon", default_set=True)
    assert not hasattr(bpy.types, "RERENDER_OT_import_colmap")
