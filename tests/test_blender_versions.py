"""The add-on on every supported Blender (4.5 LTS, 5.0, 5.2 LTS, 5.3): it registers, its compatibility layer picks
the right API, its EXR reader agrees with Blender's OpenImageIO, a render raises no DeprecationWarning from the
add-on, and the deep buffers of one scene agree with those of the training Blender (bpy 5.0.1).

These run in the main suite (Blender 5.0.1) and in each Blender test lane (packaging/blender_lanes.sh), where
``RERENDER_BACKEND_PYTHON`` names the project's main environment: the backend and the training Blender's reference
render run there, as they would in a studio where Blender's Python is not the backend's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
pytest.importorskip("pycolmap")

from support_backend import BACKEND_PYTHON  # noqa: E402
from support_colmap import write_tiny_workspace  # noqa: E402

from rerender.addon import compat  # noqa: E402
from rerender.addon.exr_read import read_exr_parts  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.lane]

ROOT = Path(__file__).resolve().parents[1]
ADDON_DIR = str(ROOT / "addon")
TRAINING_BLENDER = "5.0.1"  # the bpy of the project's environment, which makes the training deep buffers
REPORT_DIR = os.environ.get("RERENDER_LANE_REPORT_DIR")  # where a lane leaves its measured numbers (docs table)


def test_addon_registers_everything_on_this_blender(addon):
    engines = [getattr(e, "bl_idname", "") for e in bpy.types.RenderEngine.__subclasses__()]
    assert "RERENDER" in engines
    assert hasattr(bpy.ops.rerender, "import_colmap")
    assert hasattr(bpy.types.Scene, "rerender") and hasattr(bpy.types.Scene, "rerender_batch")
    panels = [c for c in bpy.types.Panel.__subclasses__() if c.__module__.startswith("rerender.addon")]
    assert panels, "the add-on registered no panels"


def test_compat_layer_picks_this_blenders_api(tmp_path):
    """Each compat function against the running Blender: what it sets is what Blender then reports."""
    assert compat.eevee_engine_id() in {e.identifier for e in
                                        bpy.types.RenderSettings.bl_rna.properties["engine"].enum_items}
    scene = bpy.data.scenes.new("compat probe")
    try:
        scene.render.engine = compat.eevee_engine_id()
        assert compat.compositor_tree(scene) is None
        tree = compat.new_compositor_tree(scene, ".compat probe tree")
        assert compat.compositor_tree(scene) == tree and len(tree.nodes) == 0
        node = compat.file_output_node(tree, "files", (("color", "RGBA"), ("depth", "FLOAT")))
        assert [s.name for s in node.inputs if s.name] == ["color", "depth"]
        compat.set_file_output_target(node, tmp_path, "tok_")
        compat.set_multilayer_exr(scene.render.image_settings)
        assert scene.render.image_settings.file_format == "OPEN_EXR_MULTILAYER"
        compat.set_single_image(scene.render.image_settings, "PNG")
        assert scene.render.image_settings.file_format == "PNG"

        from rerender.addon import points

        cloud = points.create_point_cloud("compat cloud", np.zeros((3, 3)), np.ones((3, 3)), None, scene.collection)
        mod = cloud.modifiers[points.MODIFIER_NAME]
        points.set_splat_scale(cloud, 0.0125)
        ident = points._scale_socket_identifier(mod.node_group)
        assert compat.modifier_input(mod, ident) == pytest.approx(0.0125)
        bpy.data.objects.remove(cloud)
    finally:
        if compat.compositor_tree(scene) is not None and compat.compositor_tree(scene).users <= 1 and \
                isinstance(compat.compositor_tree(scene), bpy.types.NodeTree) and \
                compat.compositor_tree(scene).name in bpy.data.node_groups:
            tree = compat.compositor_tree(scene)
            compat.set_compositor_tree(scene, None)
            bpy.data.node_groups.remove(tree)
        bpy.data.scenes.remove(scene)


def _plain_scene(w: int, h: int):
    """A cube seen by a camera, EEVEE, depth pass on: something Blender renders in a second."""
    scene = bpy.data.scenes.new("exr probe")
    scene.render.engine = compat.eevee_engine_id()
    scene.eevee.taa_render_samples = 1
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = w, h, 100
    scene.view_layers[0].use_pass_z = True
    mesh = bpy.data.meshes.new("exr probe cube")
    mesh.from_pydata([(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], [],
                     [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)])
    cube = bpy.data.objects.new("exr probe cube", mesh)
    scene.collection.objects.link(cube)
    cam = bpy.data.objects.new("exr probe cam", bpy.data.cameras.new("exr probe cam"))
    cam.location, cam.rotation_euler = (0.0, -6.0, 0.5), (math.pi / 2, 0.0, 0.0)
    scene.collection.objects.link(cam)
    scene.camera = cam
    return scene, (cube, cam)


def test_numpy_exr_reader_agrees_with_openimageio(tmp_path):
    """The fallback reader on what Blender writes: a multilayer ZIP EXR (every pass) and an uncompressed one."""
    oiio = compat.openimageio()
    if oiio is None:
        pytest.skip("this Blender build ships no OpenImageIO to compare with (the numpy reader is all it has)")
    scene, objects = _plain_scene(40, 30)
    try:
        for codec in ("ZIP", "NONE"):
            compat.set_multilayer_exr(scene.render.image_settings)
            scene.render.image_settings.exr_codec = codec
            scene.render.image_settings.color_depth = "32" if codec == "NONE" else "16"
            path = tmp_path / f"probe_{codec}.exr"
            scene.render.filepath = str(path)
            with bpy.context.temp_override(scene=scene):
                bpy.ops.render.render(scene=scene.name, write_still=True)
            mine = {n: p.pixels[..., c] for p in read_exr_parts(path) for c, n in enumerate(p.channels)}
            theirs, i = {}, 0
            inp = oiio.ImageInput.open(str(path))
            while inp.seek_subimage(i, 0):
                spec = inp.spec()
                pixels = np.asarray(inp.read_image(i, 0, 0, spec.nchannels, oiio.FLOAT))
                theirs.update({n: pixels[..., c] for c, n in enumerate(spec.channelnames)})
                i += 1
            inp.close()
            assert sorted(mine) == sorted(theirs), codec
            for name in theirs:
                np.testing.assert_array_equal(mine[name], theirs[name], err_msg=f"{codec} {name}")
            depth = next(v for k, v in mine.items() if k.endswith("Depth.Z") or k.endswith(".Z"))
            assert np.isfinite(depth).any() and (depth < 10).any(), "the cube must be in the depth pass"
    finally:
        bpy.data.scenes.remove(scene)
        for obj in objects:
            bpy.data.objects.remove(obj)


def test_deep_buffer_reads_back_without_openimageio(tmp_path, monkeypatch):
    """A Blender build without OpenImageIO: the deep buffer comes back through the numpy reader, equal to what the
    OpenImageIO read gives (where this build has one to compare with)."""
    from rerender.addon import colmap_import, deep_buffer

    ws = write_tiny_workspace(tmp_path / "ws", n_points=400)
    scene = bpy.data.scenes.new("no oiio")
    imported = colmap_import.import_reconstruction(ws.workspace, scene)
    cam = imported.cameras[ws.image_names[0]]
    try:
        with_oiio = deep_buffer.render_deep_buffer(scene, cam, resolution=(48, 36), splat_px=1.5)
        monkeypatch.setattr(compat, "_oiio_checked", True)
        monkeypatch.setattr(compat, "_oiio", None)
        assert compat.openimageio() is None
        without = deep_buffer.render_deep_buffer(scene, cam, resolution=(48, 36), splat_px=1.5)
    finally:
        for obj in list(scene.objects):
            bpy.data.objects.remove(obj)
        bpy.data.scenes.remove(scene)
    assert without.mask.sum() > 50
    for field in ("color", "depth", "label", "mask"):
        np.testing.assert_array_equal(getattr(without, field), getattr(with_oiio, field), err_msg=field)


def test_a_render_raises_no_deprecation_warning_from_the_addon(addon, backend, tmp_path):
    """F12 of a point cloud through the engine (nested EEVEE deep buffer, compositor, backend) with every
    DeprecationWarning recorded: none may come from the add-on (5.3 deprecates Scene.compositing_node_group)."""
    from rerender.addon import deep_buffer, points, properties

    helper = bpy.data.scenes.get(deep_buffer.HELPER_SCENE)
    if helper is not None:  # rebuilt inside the recorded block: its compositor set-up is what 5.3 deprecates
        bpy.data.scenes.remove(helper)
    scene = bpy.data.scenes.new("deprecation shot")
    scene.render.engine = "RERENDER"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 32, 24, 100
    rng = np.random.default_rng(1)
    xyz = np.stack([rng.uniform(-3, 3, 2000), rng.uniform(4, 6, 2000), rng.uniform(-2, 2, 2000)], axis=1)
    cloud = points.create_point_cloud("deprecation cloud", xyz, rng.random((2000, 3)), None, scene.collection)
    cam = bpy.data.objects.new("deprecation cam", bpy.data.cameras.new("deprecation cam"))
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.collection.objects.link(cam)
    scene.camera = cam
    properties.set_latent(scene, np.zeros(8))
    compat.set_multilayer_exr(scene.render.image_settings)
    scene.render.filepath = str(tmp_path / "still.exr")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bpy.ops.render.render(scene=scene.name, write_still=True)
    finally:
        bpy.data.scenes.remove(scene)
        bpy.data.objects.remove(cloud)
        bpy.data.objects.remove(cam)
    assert (tmp_path / "still.exr").is_file()
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in deprecations
            if w.filename.startswith(ADDON_DIR) or "/rerender/" in w.filename.replace(os.sep, "/")]
    assert not ours, "\n".join(ours)


# --- the same deep buffers on every Blender ----------------------------------------------------------------------

RENDER_SCRIPT = r'''
import json, sys
import numpy as np
import bpy
sys.path.insert(0, sys.argv[3])
from support_colmap import TINY_CAMERAS
from rerender.addon import colmap_import, compat, deep_buffer
workspace, out = sys.argv[1], sys.argv[2]
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
imported = colmap_import.import_reconstruction(workspace, scene)
for shift_px in map(float, sys.argv[4:]):  # one .npz per camera shift (in pixels, along x)
    arrays = {}
    for name, _, _, w, h, _, _ in TINY_CAMERAS:
        cam = imported.cameras[name]
        cam.data.shift_x += shift_px / w  # shift is in units of the image width (sensor fit horizontal)
        buf = deep_buffer.render_deep_buffer(scene, cam, resolution=(w, h), splat_px=1.5)
        cam.data.shift_x -= shift_px / w
        for field in ("color", "depth", "label", "mask"):
            arrays[f"{name}/{field}"] = getattr(buf, field)
    np.savez(f"{out}_{shift_px:g}.npz", **arrays)
print("RESULT " + json.dumps({"blender": compat.blender_version_string()}))
'''


def render_in(python: str, workspace: Path, out: Path, shifts_px: tuple[float, ...] = (0.0,)) -> tuple[str, list]:
    """Deep buffers of every photo camera of ``workspace`` rendered by the Blender of ``python``, once per camera
    shift (pixels); returns that Blender's version and the buffers of each shift."""
    script = out.with_suffix(".py")
    script.write_text(RENDER_SCRIPT)
    proc = subprocess.run([python, str(script), str(workspace), str(out), str(ROOT / "tests"),
                           *map(str, shifts_px)], capture_output=True, text=True, timeout=400)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    buffers = [dict(np.load(f"{out}_{shift:g}.npz")) for shift in shifts_px]
    return json.loads(line[len("RESULT "):])["blender"], buffers


def buffer_difference(a: dict, b: dict) -> dict:
    """How two sets of deep buffers of the same cameras differ, summed over the cameras."""
    names = sorted({k.split("/")[0] for k in a})
    stats = dict(covered=0, mask=0, albedo=0, label=0, depth=0, color_max=0.0, depth_rel_max=0.0)
    for name in names:
        ma, mb = a[f"{name}/mask"], b[f"{name}/mask"]
        both = ma & mb
        stats["covered"] += int(ma.sum())
        stats["mask"] += int((ma != mb).sum())
        ca, cb = a[f"{name}/color"].astype(np.float32)[both], b[f"{name}/color"].astype(np.float32)[both]
        stats["albedo"] += int((np.abs(ca - cb) > 1e-3).any(axis=1).sum())
        stats["label"] += int((a[f"{name}/label"][both] != b[f"{name}/label"][both]).sum())
        if both.any():
            stats["color_max"] = max(stats["color_max"], float(np.abs(ca - cb).max()))
            da, db = a[f"{name}/depth"][both], b[f"{name}/depth"][both]
            rel = np.abs(da - db) / da
            stats["depth"] += int((rel > 1e-3).sum())  # pixels where another point (or none) won the depth test
            stats["depth_rel_max"] = max(stats["depth_rel_max"], float(rel.max()))
    return stats


def test_deep_buffers_match_the_training_blender(tmp_path):
    """One scene, three cameras, rendered here and by the training Blender (5.0.1, the main environment); the
    difference is stated and must stay below what a quarter-pixel camera shift does on the training Blender —
    SfM poses carry more error than that (sub-pixel reprojection errors), so the networks are trained on it."""
    here = compat.blender_version_string()
    if here == TRAINING_BLENDER and BACKEND_PYTHON == sys.executable:
        pytest.skip("this is the training Blender: the lanes compare 4.5, 5.2 and 5.3 against it")
    labels = (np.arange(1501) % 7 + 1).astype(np.uint8)
    ws = write_tiny_workspace(tmp_path / "ws", n_points=1500, labels=labels)
    version_here, (here_b,) = render_in(sys.executable, ws.workspace, tmp_path / "here")
    version_ref, (ref_b, shift_b) = render_in(BACKEND_PYTHON, ws.workspace, tmp_path / "ref", (0.0, 0.25))
    assert version_ref == TRAINING_BLENDER, f"the main environment runs bpy {version_ref}, not {TRAINING_BLENDER}"
    cross = buffer_difference(ref_b, here_b)
    jitter = buffer_difference(ref_b, shift_b)
    report = {"blender": version_here, "reference": version_ref, "vs_training": cross, "quarter_px_shift": jitter}
    print(json.dumps(report))
    if REPORT_DIR:
        Path(REPORT_DIR).mkdir(parents=True, exist_ok=True)
        (Path(REPORT_DIR) / f"deep-buffer-{version_here}.json").write_text(json.dumps(report, indent=1))
    assert cross["covered"] > 500, cross
    assert jitter["mask"] > 0, "a quarter-pixel shift must move splat edges (else the comparison says nothing)"
    # Each kind of difference (coverage, albedo, depth, label pixels) stays below the quarter-pixel shift's.
    for kind in ("mask", "albedo", "depth", "label"):
        assert cross[kind] <= jitter[kind], (kind, report)
