"""Looks on the real Blender against a real `rerender serve` (docs/artist-workflow.md).

What must hold: the gallery fetched in the background lands as looks with their thumbnails; two gallery looks keyed
at frames 1 and 11 give, at frame 6, exactly the latent half-way (linear F-curves), a constant key holds; an
animation render sends the backend, for every frame, exactly the latent the F-curves give (and frame 6's image is
the backend's answer for that latent); mixes are the documented formula; a look encoded from a real photo is the
backend's encoding of that photo, is stored in the .blend, survives saving and opening the file in a fresh Blender
process, and is applied there by name.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from rerender.bridge import Client, srgb8_to_linear  # noqa: E402

from support_addon import point_wall_shot, remove_shot  # noqa: E402

pytestmark = pytest.mark.blender

W, H = 64, 48


@pytest.fixture()
def shot(addon):
    """A closed wall of points 4-6 units ahead of a camera looking down +y; engine RERENDER, 64 x 48."""
    scene, objects = point_wall_shot("appearance shot", W, H)
    scene.render.use_compositing = False
    yield scene
    remove_shot(scene, objects)


def fetch_gallery(scene) -> None:
    from rerender.addon import appearance

    with bpy.context.temp_override(scene=scene):
        assert bpy.ops.rerender.fetch_gallery() == {"FINISHED"}
    assert appearance.jobs.wait(30), "the gallery fetch did not finish"
    messages = appearance.jobs.deliver()
    assert messages and messages[0][0] == "INFO", messages


def test_gallery_looks_arrive_with_thumbnails(shot, backend):
    from rerender.addon import appearance

    fetch_gallery(shot)
    with Client(backend.address, timeout=20) as client:
        gallery = client.appearances()
    assert [look.name for look in shot.rerender.looks] == [a.name for a in gallery]
    assert len(gallery) == 4
    for look, entry in zip(shot.rerender.looks, gallery):
        np.testing.assert_array_equal(appearance.look_latent(look), entry.latent)
        assert look.source == "GALLERY"
        image = bpy.data.images[look.thumbnail]
        assert image.packed_file is not None, "thumbnails are packed so they travel with the .blend"
        np.testing.assert_array_equal(appearance.image_pixels(image), entry.thumbnail)


@pytest.mark.lane  # also on every supported Blender (packaging/blender_lanes.sh)
def test_keyed_gallery_looks_interpolate_and_the_backend_gets_each_frames_latent(shot, backend, tmp_path):
    from rerender.addon import appearance, engine, properties
    from rerender.addon.deep_buffer import render_deep_buffer
    from test_engine import channel, read_layers

    fetch_gallery(shot)
    noon = appearance.look_latent(shot.rerender.looks["noon"])
    night = appearance.look_latent(shot.rerender.looks["night"])
    with bpy.context.temp_override(scene=shot):
        assert bpy.ops.rerender.apply_look(name="noon", frame=1, interpolation="LINEAR") == {"FINISHED"}
        assert bpy.ops.rerender.apply_look(name="night", frame=11, interpolation="LINEAR") == {"FINISHED"}
        with pytest.raises(RuntimeError, match="no look named 'no such look'.*'noon'"):
            bpy.ops.rerender.apply_look(name="no such look", frame=3)
    curves = properties.latent_fcurves(shot)
    assert sorted(curves) == list(range(8))
    assert all(p.interpolation == "LINEAR" for fc in curves.values() for p in fc.keyframe_points)

    shot.frame_set(6)
    np.testing.assert_allclose(properties.read_latent(shot), (noon + night) / 2, rtol=0, atol=1e-6)
    shot.frame_set(1)
    np.testing.assert_array_equal(properties.read_latent(shot), noon)

    # the animation: frames 1, 6, 11; the backend must receive what the F-curves give at each
    shot.frame_start, shot.frame_end, shot.frame_step = 1, 11, 5
    from rerender.addon.compat import set_multilayer_exr

    set_multilayer_exr(shot.render.image_settings)
    shot.render.image_settings.color_depth = "32"
    shot.render.filepath = str(tmp_path / "look_")
    engine.last_latents.clear()
    bpy.ops.render.render(scene=shot.name, animation=True)
    assert sorted(engine.last_latents) == [1, 6, 11]
    for frame, sent in engine.last_latents.items():
        from_curves = np.array([curves[i].evaluate(frame) for i in range(8)], np.float32)
        np.testing.assert_array_equal(sent, from_curves, err_msg=f"frame {frame}")
    np.testing.assert_allclose(engine.last_latents[6], (noon + night) / 2, atol=1e-6)

    # frame 6's image is the backend's answer for that deep buffer and the half-way latent
    layers = read_layers(tmp_path / "look_0006.exr")
    combined = np.stack([channel(layers, f"Combined.{c}") for c in "RGB"], axis=-1)
    with bpy.context.temp_override(scene=shot):
        shot.frame_set(6)
        buffer = render_deep_buffer(shot, shot.camera, resolution=(W, H), splat_px=2.0)
    with Client(backend.address, timeout=20) as client:
        expected = srgb8_to_linear(client.rerender(buffer, engine.last_latents[6]))
        noon_image = srgb8_to_linear(client.rerender(buffer, noon))
    np.testing.assert_allclose(combined, expected, rtol=0, atol=1e-6)
    assert not np.allclose(expected, noon_image, atol=1e-3), "the look must change the image"

    # a constant key holds its look until the next key
    with bpy.context.temp_override(scene=shot):
        bpy.ops.rerender.apply_look(name="noon", frame=1, interpolation="CONSTANT")
    shot.frame_set(10)
    np.testing.assert_array_equal(properties.read_latent(shot), noon)
    shot.frame_set(11)
    np.testing.assert_array_equal(properties.read_latent(shot), night)


def test_mix_two_looks_with_a_slider_and_a_scale(shot):
    from rerender.addon import appearance, properties

    appearance.store_look(shot, "a", np.arange(8, dtype=np.float32))
    appearance.store_look(shot, "b", -np.ones(8, np.float32))
    shot.rerender.mix_a, shot.rerender.mix_b = "a", "b"
    shot.rerender.mix_factor, shot.rerender.mix_scale = 0.25, 0.5
    with bpy.context.temp_override(scene=shot):
        assert bpy.ops.rerender.mix_looks(store_as="a-ish") == {"FINISHED"}
    want = 0.5 * (0.75 * np.arange(8) - 0.25)
    np.testing.assert_allclose(properties.read_latent(shot), want, atol=1e-6)
    np.testing.assert_allclose(appearance.look_latent(shot.rerender.looks["a-ish"]), want, atol=1e-6)
    assert shot.rerender.looks["a-ish"].source == "MIX"
    with pytest.raises(appearance.LookError, match="no look named 'c'.*'a', 'b'"):
        appearance.mix_looks(shot, "a", "c", 0.5)
    appearance.store_look(shot, "short", np.zeros(3))
    with pytest.raises(appearance.LookError, match="3 and 8 values"):
        appearance.mix_looks(shot, "short", "a", 0.5)


_READ_BACK = """
import json, sys
import bpy, addon_utils
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
addon_utils.enable("rerender.addon", default_set=True)
from rerender.addon import appearance, properties
scene = bpy.data.scenes[sys.argv[2]]
look = scene.rerender.looks[sys.argv[3]]
image = bpy.data.images[look.thumbnail]
with bpy.context.temp_override(scene=scene):
    result = bpy.ops.rerender.apply_look(name=sys.argv[3], frame=5)
scene.frame_set(5)
print("RESULT" + json.dumps({
    "latent": appearance.look_latent(look).tolist(), "source": look.source, "photo": look.photo_path,
    "packed": image.packed_file is not None, "thumb_size": list(image.size), "op": sorted(result),
    "applied": properties.read_latent(scene).tolist(), "name": scene.rerender.appearance_name}))
"""


def test_encoded_photo_look_is_stored_in_the_blend_and_applied_by_name(shot, backend, shared_dir, tmp_path):
    from rerender.addon import appearance

    photo_path = sorted((shared_dir / "data" / "sacre_coeur").glob("*.jpg"))[0]
    with bpy.context.temp_override(scene=shot):
        assert bpy.ops.rerender.encode_photo(filepath=str(photo_path), name="tourist photo",
                                             max_side=64) == {"FINISHED"}
    assert appearance.jobs.wait(30)
    assert appearance.jobs.deliver()[0][0] == "INFO"
    look = shot.rerender.looks["tourist photo"]
    assert look.source == "PHOTO" and look.photo_path == str(photo_path)

    photo, buffer = appearance.photo_and_buffer(shot, str(photo_path), max_side=64)
    assert max(photo.shape[:2]) == 64 and photo.shape[:2] == buffer.shape and buffer.coverage() > 0.3
    with Client(backend.address, timeout=20) as client:
        np.testing.assert_array_equal(appearance.look_latent(look), client.encode(photo, buffer))
    assert 20 < photo.mean() < 235 and photo.std() > 10, "a real photo's 8-bit sRGB values, not linear ones"

    blend = tmp_path / "looks.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True)  # copy: this session's file is unchanged
    run = subprocess.run([sys.executable, "-c", _READ_BACK, str(blend), shot.name, "tourist photo"],
                         capture_output=True, text=True, timeout=120)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line is not None, f"the fresh Blender failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    back = json.loads(line[len("RESULT"):])
    np.testing.assert_array_equal(np.float32(back["latent"]), appearance.look_latent(look))
    assert back["source"] == "PHOTO" and back["photo"] == str(photo_path)
    assert back["packed"] and max(back["thumb_size"]) == 64
    assert back["op"] == ["FINISHED"] and back["name"] == "tourist photo"
    np.testing.assert_array_equal(np.float32(back["applied"]), appearance.look_latent(look))


def test_bad_photo_is_refused_with_what_to_do(shot, tmp_path):
    from rerender.addon import appearance

    with pytest.raises(appearance.LookError, match="does not exist"):
        appearance.photo_and_buffer(shot, str(tmp_path / "missing.jpg"))
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a photo")
    with pytest.raises(appearance.LookError, match="cannot read"):
        appearance.load_photo(str(not_image))
