"""The extension zip an artist installs: built with Blender's own tool, installed into the bpy wheel's Blender
exactly as Preferences > Add-ons > Install from Disk does, enabled, and used to import a scene and render a frame —
with the project's own packages hidden, so only what the zip carries can make it work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packaging"))
import build_extension  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.blender]

HIDE_PROJECT = r'''
import importlib.abc, json, os, sys
from pathlib import Path
ext_site = Path(os.environ["BLENDER_USER_RESOURCES"]) / "extensions" / ".local" / "lib" / "python3.11" / "site-packages"

class OnlyFromExtension(importlib.abc.MetaPathFinder):
    """Refuse the project's packages and its dependencies from anywhere but the extension's own wheels."""
    guarded = {"rerender", "zmq", "msgpack", "pycolmap"}
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top == "rerender":
            raise ImportError("the rerender package is hidden: the extension must use its vendored bridge")
        if top in self.guarded and name == top:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, [str(ext_site)], target)
                if spec is not None:
                    return spec
            raise ImportError(f"{name} is not installed from the extension's wheels in {ext_site}")
        return None

sys.meta_path.insert(0, OnlyFromExtension())
for mod in [m for m in sys.modules if m.partition(".")[0] in OnlyFromExtension.guarded]:
    del sys.modules[mod]

'''

INSTALL_AND_RENDER = HIDE_PROJECT + r'''
import bpy
result = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default", enable_on_install=True)
bpy.ops.wm.save_userpref()  # what an admin's `blender --command extension install-file -e` leaves on a worker
enabled = [k for k in bpy.context.preferences.addons.keys() if k.endswith(".rerender")]
import zmq, msgpack, pycolmap
out = {"result": sorted(result), "enabled": enabled,
       "zmq": zmq.__file__, "msgpack": msgpack.__file__, "pycolmap": pycolmap.__file__,
       "engines": [getattr(e, "bl_idname", "") for e in bpy.types.RenderEngine.__subclasses__()],
       "import_op": hasattr(bpy.ops.rerender, "import_colmap")}

# As an artist would: import the COLMAP workspace, look through a photo camera, F12 with the engine.
scene = bpy.context.scene
before = set(bpy.data.objects)
bpy.ops.rerender.import_colmap(directory=sys.argv[2])
cameras = [o for o in set(bpy.data.objects) - before if o.type == "CAMERA"]
out["cameras"] = len(cameras)
scene.camera = sorted(cameras, key=lambda o: o.name)[0]
scene.render.engine = "RERENDER"
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 64, 48, 100
scene.render.image_settings.media_type = "MULTI_LAYER_IMAGE"
scene.render.filepath = sys.argv[3]
bpy.ops.render.render(write_still=True)

# Read the EXR back with the OpenImageIO that ships inside Blender (one part per pass in Blender 5.0).
sys.path.append(os.path.join(bpy.utils.resource_path("LOCAL"), "python", "lib", "python3.11", "site-packages"))
import OpenImageIO as oiio
inp = oiio.ImageInput.open(sys.argv[3])
out["channels"], out["size"] = [], None
part = 0
while inp.seek_subimage(part, 0):
    spec = inp.spec()
    out["channels"] += list(spec.channelnames)
    out["size"] = [spec.width, spec.height]
    part += 1
inp.close()

# A shot for the farm: the camera moves over frames 1-3; saved with the point cloud inside the .blend.
cam = scene.camera
cam.keyframe_insert("location", frame=1)
cam.location.x += 0.3
cam.keyframe_insert("location", frame=3)
scene.frame_start, scene.frame_end = 1, 3
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[4])
print("RESULT " + json.dumps(out))
'''

# What a render-farm worker (Flamenco) runs: `blender -b shot.blend -o OUT -a` with the backend's address in the
# environment, on a machine that has only Blender and the installed extension.
FARM_WORKER = HIDE_PROJECT + r'''
import bpy
# The bpy module starts from factory settings; the blender executable loads the worker's preferences (and with
# them its enabled extensions) by itself.
bpy.ops.wm.read_userpref()
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
scene = bpy.context.scene
scene.render.filepath = sys.argv[2]
bpy.ops.render.render(animation=True)
print("RESULT " + json.dumps({"engine": scene.render.engine,
                              "enabled": [k for k in bpy.context.preferences.addons.keys() if k.endswith(".rerender")]}))
'''


@pytest.fixture(scope="module")
def linux_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = build_extension.build(out, ["linux-x64"])
    assert len(built) == 1
    return built[0].path


def test_zip_carries_addon_vendored_bridge_and_wheels(linux_zip: Path) -> None:
    with zipfile.ZipFile(linux_zip) as z:
        names = z.namelist()
        manifest = z.read("blender_manifest.toml").decode()
    assert "__init__.py" in names and "engine.py" in names
    assert "vendor/bridge/protocol.py" in names and "vendor/bridge/client.py" in names
    wheels = [n for n in names if n.startswith("wheels/") and n.endswith(".whl")]
    for package in ("pyzmq", "msgpack", "pycolmap"):
        assert any(Path(w).name.startswith(package) and "x86_64" in w for w in wheels), (package, wheels)
    assert not any("win_amd64" in w or "macosx" in w for w in wheels), "linux zip must carry linux wheels only"
    assert 'platforms = ["linux-x64"]' in manifest
    assert not any("__pycache__" in n for n in names)


def test_manifest_rejects_fields_the_packager_owns(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    build_extension.stage_addon(stage)
    manifest = stage / "blender_manifest.toml"
    manifest.write_text(manifest.read_text().replace("wheels = []", 'wheels = ["./wheels/x.whl"]'))
    with pytest.raises(build_extension.PackagingError, match="packager fills it in"):
        build_extension.write_manifest(stage, [], ["linux-x64"])


def test_installed_zip_imports_a_scene_and_renders_without_the_project(linux_zip: Path, tmp_path: Path) -> None:
    from support_backend import BackendProcess, free_tcp_address, make_small_bundle
    from support_colmap import write_tiny_workspace

    workspace = write_tiny_workspace(tmp_path / "ws", n_points=400)
    script = tmp_path / "install.py"
    script.write_text(INSTALL_AND_RENDER)
    exr, blend = tmp_path / "frame.exr", tmp_path / "shot.blend"
    bundle = make_small_bundle(tmp_path / "bundle")
    with BackendProcess(bundle, free_tcp_address()) as backend:
        env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"), RERENDER_BACKEND=backend.address)
        proc = subprocess.run([sys.executable, str(script), str(linux_zip), str(workspace.workspace), str(exr),
                               str(blend)], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
        worker = None
        if blend.is_file():
            (tmp_path / "worker.py").write_text(FARM_WORKER)
            frames_dir = tmp_path / "farm"
            worker = subprocess.run([sys.executable, str(tmp_path / "worker.py"), str(blend), str(frames_dir) + "/"],
                                    capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["result"] == ["FINISHED"]
    assert out["enabled"] == ["bl_ext.user_default.rerender"]
    ext_site = str(tmp_path / "user" / "extensions" / ".local")
    for package in ("zmq", "msgpack", "pycolmap"):
        assert out[package].startswith(ext_site), (package, out[package])
    assert "RERENDER" in out["engines"]
    assert out["import_op"]
    assert out["cameras"] == len(workspace.image_names)
    assert exr.is_file(), proc.stderr[-3000:]
    assert out["size"] == [64, 48]
    for pass_name in ("Combined", "Depth", "Albedo", "Label"):
        assert any(pass_name in c for c in out["channels"]), (pass_name, out["channels"])

    # The render-farm path: the saved shot renders frames 1-3 in a fresh worker process.
    assert worker is not None, "the shot .blend was not saved"
    line = next((l for l in worker.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, worker.stdout[-3000:] + worker.stderr[-3000:]
    assert json.loads(line[len("RESULT "):]) == {"engine": "RERENDER", "enabled": ["bl_ext.user_default.rerender"]}
    frames = sorted(p.name for p in (tmp_path / "farm").iterdir())
    assert len(frames) == 3, frames
