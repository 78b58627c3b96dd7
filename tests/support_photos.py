"""A small synthetic photo set rendered with real Blender (bpy), with the true cameras, for SfM and dataset tests.

The scene: a cluster of boxes, a cylinder and a sphere, textured with noise and Voronoi patterns evaluated in WORLD
coordinates (reconstruction-facts.md: object-local textures repeat on twin parts and SfM folds the camera arc onto
itself while reporting a tiny reprojection error), lit by a sun and two point lights, photographed from a ring of
cameras. There is no ground: the background is a flat color, so the object's silhouette is the render's alpha and
every SfM point lies on the object.

Run as a script in a subprocess (``python tests/support_photos.py OUT``) so the tests' own Blender state is never
touched by the generator; ``synthetic_photo_set(tmp_path_factory)`` caches one set per test session.

Outputs in OUT: ``photos/view_XX.png`` (RGB), ``silhouettes/view_XX.png`` (uint8 0/255), ``cameras.json``
({name: {"R", "t", "center", "fx", "fy", "cx", "cy", "width", "height"}} in COLMAP conventions), ``done``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from rerender.bridge.cameras import umeyama  # noqa: F401  (the one Umeyama; test_reconstruct imports it from here)
from support_colmap import look_at

N_VIEWS = 14
WIDTH, HEIGHT = 320, 240
BACKGROUND = (0.55, 0.62, 0.70)  # sRGB of the flat "sky"


def _build_scene():
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_EEVEE"
    scene.eevee.taa_render_samples = 2
    scene.render.resolution_x, scene.render.resolution_y = WIDTH, HEIGHT
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = "Standard"
    world = bpy.data.worlds.new("world")
    world.color = (0.3, 0.3, 0.3)
    scene.world = world

    mat = bpy.data.materials.new("world_textured")
    mat.use_nodes = True
    nt = mat.node_tree
    bsdf = nt.nodes["Principled BSDF"]
    geo = nt.nodes.new("ShaderNodeNewGeometry")  # Position = world space: no two places look alike
    noise = nt.nodes.new("ShaderNodeTexNoise")  # large blotches, strong luminance contrast for SIFT
    noise.inputs["Scale"].default_value = 4.0
    noise.inputs["Detail"].default_value = 10.0
    noise.inputs["Roughness"].default_value = 0.6
    ramp = nt.nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.elements[0].position = 0.38
    ramp.color_ramp.elements[0].color = (0.02, 0.02, 0.02, 1)
    ramp.color_ramp.elements[1].position = 0.62
    ramp.color_ramp.elements[1].color = (1.0, 0.95, 0.85, 1)
    vor = nt.nodes.new("ShaderNodeTexVoronoi")  # per-cell colors: no two places look alike
    vor.inputs["Scale"].default_value = 5.0
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.blend_type = "MULTIPLY"
    mix.inputs["Factor"].default_value = 1.0
    nt.links.new(geo.outputs["Position"], noise.inputs["Vector"])
    nt.links.new(geo.outputs["Position"], vor.inputs["Vector"])
    nt.links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
    nt.links.new(ramp.outputs["Color"], mix.inputs["A"])
    nt.links.new(vor.outputs["Color"], mix.inputs["B"])
    nt.links.new(mix.outputs["Result"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.9

    def add(op, **kw):
        op(**kw)
        obj = bpy.context.active_object
        obj.data.materials.append(mat)
        return obj

    add(bpy.ops.mesh.primitive_cube_add, size=2.0, location=(0, 0, 0))
    add(bpy.ops.mesh.primitive_cube_add, size=1.0, location=(1.3, 0.4, -0.5))
    add(bpy.ops.mesh.primitive_cylinder_add, radius=0.45, depth=2.6, location=(-1.2, -0.5, 0.3))
    add(bpy.ops.mesh.primitive_uv_sphere_add, radius=0.7, location=(0.1, 0.2, 1.5), segments=48, ring_count=24)

    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(40), math.radians(15), math.radians(30))
    scene.collection.objects.link(sun)
    for i, loc in enumerate([(4, -3, 3), (-4, 3, 2)]):
        lamp = bpy.data.objects.new(f"lamp{i}", bpy.data.lights.new(f"lamp{i}", "POINT"))
        lamp.data.energy = 600.0
        lamp.location = loc
        scene.collection.objects.link(lamp)
    return scene


def generate(out: Path, n_views: int = N_VIEWS) -> None:
    import bpy
    import numpy as np
    from mathutils import Matrix
    from PIL import Image

    out = Path(out)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    (out / "silhouettes").mkdir(exist_ok=True)
    scene = _build_scene()
    cam_data = bpy.data.cameras.new("cam")
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.sensor_width = 36.0
    cam_data.lens = 35.0
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    fx = cam_data.lens / 36.0 * WIDTH
    truth = {}
    rng = np.random.default_rng(7)
    for i in range(n_views):
        # a 210-degree arc: 16 degrees between neighbours, so each photo overlaps the next ones a lot
        ang = math.radians(-105 + 210 * i / (n_views - 1))
        radius = 4.9 + rng.uniform(-0.3, 0.3)
        center = (radius * math.cos(ang), radius * math.sin(ang), 1.0 + 1.2 * math.sin(3 * ang))
        R, t = look_at(center, (0, 0, 0.2), down=(0.0, 0.0, -1.0))  # world +z is up
        m = np.eye(4)
        m[:3, :3] = R.T
        m[:3, 3] = center
        cam.matrix_world = Matrix((m @ np.diag([1.0, -1.0, -1.0, 1.0])).tolist())  # rows; a bare list is read as columns
        name = f"view_{i:02d}.png"
        scene.render.filepath = str(out / "tmp_render.png")
        bpy.ops.render.render(write_still=True)
        rgba = np.asarray(Image.open(out / "tmp_render.png").convert("RGBA")).astype(np.float32) / 255.0
        alpha = rgba[..., 3:4]
        rgb = rgba[..., :3] * alpha + np.asarray(BACKGROUND, np.float32) * (1 - alpha)
        Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(out / "photos" / name)
        Image.fromarray(((alpha[..., 0] > 0.5) * 255).astype(np.uint8)).save(out / "silhouettes" / name)
        truth[name] = {"R": R.tolist(), "t": t.tolist(), "center": list(center), "fx": fx, "fy": fx,
                       "cx": WIDTH / 2, "cy": HEIGHT / 2, "width": WIDTH, "height": HEIGHT}
    (out / "tmp_render.png").unlink(missing_ok=True)
    (out / "cameras.json").write_text(json.dumps(truth, indent=1))
    (out / "done").write_text("ok")


def synthetic_photo_set(tmp_path_factory) -> Path:
    """The generated set, rendered once per test session (cached in the session's base temp folder).

    ``RERENDER_TEST_PHOTOS=DIR`` reuses a set generated earlier with ``python tests/support_photos.py DIR``
    (rendering takes minutes on a loaded 2-core machine)."""
    import os

    reuse = os.environ.get("RERENDER_TEST_PHOTOS")
    if reuse and (Path(reuse) / "done").exists():
        return Path(reuse)
    out = tmp_path_factory.getbasetemp() / "synthetic_photos"
    if not (out / "done").exists():
        proc = subprocess.run([sys.executable, __file__, str(out)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not (out / "done").exists():
            raise RuntimeError(f"photo generation failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out


if __name__ == "__main__":
    generate(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else N_VIEWS)


def reconstructed_workspace(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(photo folder used, COLMAP workspace, summary dict from WS/rerender/reconstruction.json) of the generated set
    plus two photos that cannot register (noise) and one corrupt file; reconstructed once per test session."""
    import shutil

    import numpy as np
    from PIL import Image

    from rerender.training.reconstruct import reconstruct

    base = tmp_path_factory.getbasetemp()
    photos, ws, done = base / "sfm_photos", base / "sfm_ws", base / "sfm_ws.done"
    if not done.exists():
        src = synthetic_photo_set(tmp_path_factory) / "photos"
        if photos.exists():
            shutil.rmtree(photos)
        shutil.copytree(src, photos)
        rng = np.random.default_rng(3)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(photos / f"noise_{i}.png")
        (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        reconstruct(photos, ws, progress=False)
        done.write_text("ok")
    return photos, ws, json.loads((ws / "rerender" / "reconstruction.json").read_text())
