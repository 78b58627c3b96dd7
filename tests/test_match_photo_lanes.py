""""Match this photo" on every supported Blender: the operator, its progress, cancel and the stored look, with no
torch in the test process (a Blender lane has none; the backend is served from the main environment).

The loss itself is checked on a trained bundle in tests/test_match_photo_addon.py; here the served bundle is the
small untrained one of support_addon, so this checks the Blender side: the operators register and run, the look is
stored and keyed, cancel stops with a latent.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from support_addon import point_wall_shot, remove_shot  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.lane]

W, H = 64, 48


@pytest.fixture()
def shot(addon, tmp_path):
    """A wall of points, the scene camera, and a photo file (written by Blender) of the wall's size."""
    scene, objects = point_wall_shot("lane match shot", W, H, points_count=4000)
    image = bpy.data.images.new("lane match photo", W, H, alpha=False)
    rgba = np.ones((H, W, 4), np.float32)
    rgba[..., :3] = np.linspace(0.1, 0.9, W)[None, :, None] * np.array([1.0, 0.6, 0.3], np.float32)
    image.pixels.foreach_set(rgba.ravel())
    path = str(tmp_path / "sunset.png")
    image.filepath_raw = path
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)
    scene["photo"] = path
    yield scene
    remove_shot(scene, objects)


def test_match_photo_stores_a_keyable_look_and_cancel_keeps_one(shot):
    from rerender.addon import appearance, photo_match, properties

    path = shot["photo"]
    with bpy.context.temp_override(scene=shot):
        assert bpy.ops.rerender.match_photo(filepath=path, steps=30, chunk=10, max_side=W) == {"FINISHED"}
    assert photo_match.jobs.wait(120)
    (level, message), = photo_match.jobs.deliver()
    assert level == "INFO" and "look 'sunset' matched to sunset.png through 'lane match shot cam'" in message, message
    before, after = (float(v) for v in message.split("loss ")[1].split(" in ")[0].split(" → "))
    assert after <= before and "in 30 steps" in message
    look = shot.rerender.looks["sunset"]
    assert look.source == "PHOTO" and look.photo_path == path and len(look.latent) == 8
    with bpy.context.temp_override(scene=shot):
        assert bpy.ops.rerender.apply_look(name="sunset", frame=3) == {"FINISHED"}
    shot.frame_set(3)
    np.testing.assert_array_equal(properties.read_latent(shot), appearance.look_latent(look))

    state = appearance.match_photo_async(shot, path, "stopped", steps=2000, chunk=10, max_side=W,
                                         link_seconds=None)
    deadline = time.monotonic() + 60
    while state.progress is None:
        assert time.monotonic() < deadline, "no progress from the match"
        time.sleep(0.02)
    # Called as the Cancel button calls it, with no context override: on Python 3.11 Blenders an operator called
    # under temp_override while the match thread runs can crash Blender (addon/jobs.py).
    assert bpy.ops.rerender.cancel_match() == {"FINISHED"}
    assert photo_match.jobs.wait(30)
    (level, message), = photo_match.jobs.deliver()
    assert level == "INFO" and "cancelled at" in message, message
    assert state.progress.steps_done < 2000 and "stopped" in shot.rerender.looks
