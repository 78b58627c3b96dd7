"""The one PINHOLE camera type and the one Umeyama (bridge/cameras.py): what the reader makes of a real pycolmap model
projects exactly as pycolmap does, and the similarity alignment recovers a known transform."""

from __future__ import annotations

import numpy as np
import pytest

from support_colmap import write_tiny_workspace

from rerender.bridge.cameras import PinholeCamera, similarity_residuals, umeyama


def test_reader_cameras_project_like_pycolmap(tmp_path):
    pytest.importorskip("pycolmap")
    from rerender.addon import cameras, colmap_reader

    assert cameras.ColmapCamera is PinholeCamera  # one type, whichever name a module uses
    ws = write_tiny_workspace(tmp_path / "ws", n_points=40)
    model = colmap_reader.load_model(ws.workspace)
    assert [c.name for c in model.cameras] == ws.image_names
    for camera in model.cameras:
        np.testing.assert_allclose(camera.project(ws.marker_xyz[None])[0], ws.project(camera.name, ws.marker_xyz),
                                   atol=1e-6)
        np.testing.assert_allclose(camera.center, ws.image(camera.name).projection_center(), atol=1e-9)
        half = camera.scaled_to(camera.width // 2, camera.height // 2)
        np.testing.assert_allclose(half.project(ws.marker_xyz[None])[0],
                                   camera.project(ws.marker_xyz[None])[0] * [half.width / camera.width,
                                                                            half.height / camera.height], atol=1e-9)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R = q * np.sign(np.linalg.det(q))  # a proper rotation
    dst = 2.5 * src @ R.T + [1.0, -2.0, 0.5]
    s, R_est, t = umeyama(src, dst)
    assert s == pytest.approx(2.5) and np.allclose(R_est, R) and np.allclose(t, [1.0, -2.0, 0.5])
    assert similarity_residuals(src, dst).max() < 1e-9
    mirrored = dst * [1, 1, -1]  # a reflection is not a similarity: the residuals say so
    assert similarity_residuals(src, mirrored).max() > 0.1
    with pytest.raises(ValueError, match="N x 3"):
        umeyama(src[:2], dst[:2])
