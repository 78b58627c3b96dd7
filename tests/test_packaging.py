"""The extension zip an artist installs: built with Blender's own tool, installed into the bpy wheel's Blender
exactly as Preferences > Add-ons > Install from Disk does, enabled, and used to import a scene and render a frame —
with the project's own packages hidden, so only what the zip carries can make it work. The same on a farm worker
that installs from a generated extension repository (index.json in a local folder). The Blender test lanes
(packaging/blender_lanes.sh) run these on every supported Blender; there ``RERENDER_EXTENSION_DIST`` names the zips
the lane script built once."""

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
ext_site = (Path(os.environ["BLENDER_USER_RESOURCES"]) / "extensions" / ".local" / "lib" /
            f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages")

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
mode, source, workspace, exr, blend = sys.argv[1:6]
if mode == "file":  # Preferences > Get Extensions > Install from Disk
    result = bpy.ops.extensions.package_install_files(filepath=source, repo="user_default", enable_on_install=True)
    bpy.ops.wm.save_userpref()  # what an admin's `blender --command extension install-file -e` leaves on a worker
    result = sorted(result)
else:  # a farm worker: `blender --command extension repo-add / sync / install -e` from the studio's repository
    bpy.context.preferences.system.use_online_access = True  # needed even for a file:// repository
    from bl_pkg.bl_extension_cli import cli_extension_handler
    result = [cli_extension_handler(["repo-add", "--url", "file://" + source, "farm"]),
              cli_extension_handler(["sync"]), cli_extension_handler(["install", "farm.rerender", "--enable"])]
enabled = [k for k in bpy.context.preferences.addons.keys() if k.endswith(".rerender")]
import zmq, msgpack, pycolmap
out = {"result": result, "enabled": enabled,
       "zmq": zmq.__file__, "msgpack": msgpack.__file__, "pycolmap": pycolmap.__file__,
       "engines": [getattr(e, "bl_idname", "") for e in bpy.types.RenderEngine.__subclasses__()],
       "import_op": hasattr(bpy.ops.rerender, "import_colmap")}

# As an artist would: import the COLMAP workspace, look through a photo camera, F12 with the engine.
scene = bpy.context.scene
before = set(bpy.data.objects)
bpy.ops.rerender.import_colmap(directory=workspace)
cameras = [o for o in set(bpy.data.objects) - before if o.type == "CAMERA"]
out["cameras"] = len(cameras)
scene.camera = sorted(cameras, key=lambda o: o.name)[0]
scene.render.engine = "RERENDER"
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 64, 48, 100
if hasattr(scene.render.image_settings, "media_type"):  # Blender 5.0+
    scene.render.image_settings.media_type = "MULTI_LAYER_IMAGE"
scene.render.image_settings.file_format = "OPEN_EXR_MULTILAYER"
out["channels"], out["size"] = [], None
if exr != "-":
    scene.render.filepath = exr
    bpy.ops.render.render(write_still=True)
    # Read the EXR back with the extension's own reader (Blender's OpenImageIO is not in every build).
    import importlib
    reader = importlib.import_module(enabled[0] + ".exr_read")
    for part in reader.read_exr_parts(exr):
        out["channels"] += part.channels
        out["size"] = [part.pixels.shape[1], part.pixels.shape[0]]

# A shot for the farm: the camera moves over frames 1-3; saved with the point cloud inside the .blend.
cam = scene.camera
cam.keyframe_insert("location", frame=1)
cam.location.x += 0.3
cam.keyframe_insert("location", frame=3)
scene.frame_start, scene.frame_end = 1, 3
bpy.ops.wm.save_as_mainfile(filepath=blend)
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
def dist(tmp_path_factory) -> dict[str, Path]:
    """platform -> built zip: the lane script's prebuilt ones (RERENDER_EXTENSION_DIST), else built here."""
    prebuilt = os.environ.get("RERENDER_EXTENSION_DIST")
    if prebuilt:
        zips = {p: next(Path(prebuilt).glob(f"rerender-*-{p.replace('-', '_')}.zip"), None)
                for p in build_extension.PLATFORMS}
        missing = [p for p, z in zips.items() if z is None]
        assert not missing, f"RERENDER_EXTENSION_DIST={prebuilt} lacks the zips for {missing}"
        return zips
    built = build_extension.build(tmp_path_factory.mktemp("dist"))
    return {b.platform: b.path for b in built}


@pytest.fixture(scope="module")
def linux_zip(dist) -> Path:
    return dist["linux-x64"]


@pytest.fixture(scope="module")
def backend_for_install(tmp_path_factory):
    from support_backend import BackendProcess, free_tcp_address, make_small_bundle

    bundle = make_small_bundle(tmp_path_factory.mktemp("bundle"))
    with BackendProcess(bundle, free_tcp_address()) as backend:
        yield backend


def wheel_tags(zip_path: Path) -> dict[str, set[str]]:
    """package -> the 'python-abi' tags of the wheels a zip carries (e.g. {'pyzmq': {'cp311-cp311', 'cp312-abi3'}})."""
    with zipfile.ZipFile(zip_path) as z:
        wheels = [Path(n).name for n in z.namelist() if n.startswith("wheels/") and n.endswith(".whl")]
    tags: dict[str, set[str]] = {}
    for wheel in wheels:
        parts = wheel[:-len(".whl")].split("-")
        tags.setdefault(parts[0].lower(), set()).add(f"{parts[-3]}-{parts[-2]}")
    return tags


def test_zip_carries_addon_vendored_bridge_and_wheels(linux_zip: Path) -> None:
    with zipfile.ZipFile(linux_zip) as z:
        names = z.namelist()
        manifest = z.read("blender_manifest.toml").decode()
    assert "__init__.py" in names and "engine.py" in names and "compat.py" in names and "exr_read.py" in names
    assert "vendor/bridge/protocol.py" in names and "vendor/bridge/client.py" in names
    wheels = [n for n in names if n.startswith("wheels/") and n.endswith(".whl")]
    for package in ("pyzmq", "msgpack", "pycolmap"):
        assert any(Path(w).name.startswith(package) and "x86_64" in w for w in wheels), (package, wheels)
    assert not any("win_amd64" in w or "macosx" in w for w in wheels), "linux zip must carry linux wheels only"
    assert 'platforms = ["linux-x64"]' in manifest
    assert 'blender_version_min = "4.5.0"' in manifest and 'blender_version_max = "5.4.0"' in manifest
    assert not any("__pycache__" in n for n in names)


# The wheels every zip must hold: Python 3.11 (Blender 4.5, 5.0) and 3.13 (5.1+); pyzmq's stable-ABI wheel serves 3.13.
EXPECTED_TAGS = {"pyzmq": {"cp311-cp311", "cp312-abi3"}, "msgpack": {"cp311-cp311", "cp313-cp313"},
                 "pycolmap": {"cp311-cp311", "cp313-cp313"}}
PLATFORM_WORDS = {"linux-x64": "x86_64", "windows-x64": "win_amd64", "macos-arm64": "arm64"}


@pytest.mark.lane
@pytest.mark.parametrize("platform", sorted(build_extension.PLATFORMS))
def test_every_platform_zip_validates_here_and_holds_wheels_for_each_python(dist, platform) -> None:
    """Blender's own validator (of the Blender running this test: 5.0 in the main suite, 4.5/5.2/5.3 in the
    lanes) accepts each zip, which carries one wheel per package for each of Python 3.11 and 3.13."""
    zip_path = dist[platform]
    out = build_extension.run_tool(["validate", str(zip_path)])
    assert "error" not in out.lower(), out
    tags = wheel_tags(zip_path)
    print(f"{zip_path.name}: " + "; ".join(f"{p} {sorted(t)}" for p, t in sorted(tags.items())))
    assert tags == EXPECTED_TAGS, tags
    with zipfile.ZipFile(zip_path) as z:
        wheels = [n for n in z.namelist() if n.endswith(".whl")]
        manifest = z.read("blender_manifest.toml").decode()
    assert all(PLATFORM_WORDS[platform] in w or "universal2" in w for w in wheels), wheels
    assert f'platforms = ["{platform}"]' in manifest


def test_manifest_rejects_fields_the_packager_owns(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    build_extension.stage_addon(stage)
    manifest = stage / "blender_manifest.toml"
    manifest.write_text(manifest.read_text().replace("wheels = []", 'wheels = ["./wheels/x.whl"]'))
    with pytest.raises(build_extension.PackagingError, match="packager fills it in"):
        build_extension.write_manifest(stage, [], ["linux-x64"])


def install_then_render_on_a_worker(tmp_path: Path, backend, mode: str, source: Path, f12: bool) -> dict:
    """Install (``mode`` 'file': the zip; 'index': from a repository) in one Blender process, import a scene,
    optionally F12, save a shot; then a fresh worker process renders frames 1-3 of that shot."""
    from support_colmap import write_tiny_workspace

    workspace = write_tiny_workspace(tmp_path / "ws", n_points=400)
    script = tmp_path / "install.py"
    script.write_text(INSTALL_AND_RENDER)
    exr, blend = tmp_path / "frame.exr", tmp_path / "shot.blend"
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"), RERENDER_BACKEND=backend.address)
    proc = subprocess.run([sys.executable, str(script), mode, str(source), str(workspace.workspace),
                           str(exr) if f12 else "-", str(blend)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    out["image_names"] = workspace.image_names
    assert blend.is_file(), "the shot .blend was not saved"
    (tmp_path / "worker.py").write_text(FARM_WORKER)
    worker = subprocess.run([sys.executable, str(tmp_path / "worker.py"), str(blend), str(tmp_path / "farm") + "/"],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    line = next((l for l in worker.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, worker.stdout[-3000:] + worker.stderr[-3000:]
    out["worker"] = json.loads(line[len("RESULT "):])
    out["frames"] = sorted(p.name for p in (tmp_path / "farm").iterdir())
    return out


def assert_installed_from_extension(out: dict, tmp_path: Path, repo: str) -> None:
    assert out["enabled"] == [f"bl_ext.{repo}.rerender"]
    ext_site = str(tmp_path / "user" / "extensions" / ".local")
    for package in ("zmq", "msgpack", "pycolmap"):
        assert out[package].startswith(ext_site), (package, out[package])
    assert "RERENDER" in out["engines"]
    assert out["import_op"]
    assert out["cameras"] == len(out["image_names"])
    # The render-farm path: the saved shot renders frames 1-3 in a fresh worker process.
    assert out["worker"] == {"engine": "RERENDER", "enabled": [f"bl_ext.{repo}.rerender"]}
    assert len(out["frames"]) == 3, out["frames"]


@pytest.mark.lane
def test_installed_zip_imports_a_scene_and_renders_without_the_project(linux_zip: Path, backend_for_install,
                                                                     tmp_path: Path) -> None:
    out = install_then_render_on_a_worker(tmp_path, backend_for_install, "file", linux_zip, f12=True)
    assert out["result"] == ["FINISHED"]
    assert_installed_from_extension(out, tmp_path, "user_default")
    assert (tmp_path / "frame.exr").is_file()
    assert out["size"] == [64, 48]
    for pass_name in ("Combined", "Depth", "Albedo", "Label", "Mask"):
        assert any(pass_name in c for c in out["channels"]), (pass_name, out["channels"])


@pytest.mark.lane
def test_farm_worker_installs_from_a_repository_index_and_renders(dist, backend_for_install, tmp_path: Path) -> None:
    """A studio's extension repository (a local folder: the zips + Blender's generated index.json); a worker
    adds it, syncs, installs and enables the extension, and renders a saved shot's frames."""
    index = build_extension.write_repository(tmp_path / "repository", list(dist.values()))
    listing = json.loads(index.read_text())["data"]
    assert sorted(p for entry in listing for p in entry["platforms"]) == sorted(build_extension.PLATFORMS)
    assert all(entry["python_versions"] == ["3.11", "3.13"] for entry in listing), listing
    assert all(entry["blender_version_min"] == "4.5.0" for entry in listing)
    out = install_then_render_on_a_worker(tmp_path, backend_for_install, "index", index, f12=False)
    assert out["result"] == [0, 0, 0], "repo-add, sync, install must each succeed"
    assert_installed_from_extension(out, tmp_path, "farm")
