"""Importers that never run away: truncated, garbage and hostile COLMAP binaries are refused by the one pre-check,
fast, before pycolmap reads them and before anything is written — by the add-on's reader and by `rerender dataset`.

Why these cases: pycolmap trusts declared counts, so a half-truncated frames.bin stalled it for 80 s and a corrupt
points3D.bin made it allocate gigabytes; image names in images.bin are data from elsewhere and must not escape the
workspace.
"""

from __future__ import annotations

import struct
import time
import tracemalloc

import numpy as np
import pytest

from support_colmap import write_tiny_workspace

pycolmap = pytest.importorskip("pycolmap")

from rerender.addon import colmap_checks, colmap_reader  # noqa: E402
from rerender.addon.colmap_checks import ColmapImportError  # noqa: E402

FILES = ("cameras", "images", "points3D", "rigs", "frames")


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _garbage(path) -> None:
    path.write_bytes(np.random.default_rng(len(path.name)).integers(0, 256, path.stat().st_size, np.uint8).tobytes())


def _refused_fast(call, match: str) -> ColmapImportError:
    started = time.perf_counter()
    with pytest.raises(ColmapImportError, match=match) as info:
        call()
    assert time.perf_counter() - started < 1.0
    return info.value


@pytest.fixture()
def ws(tmp_path):
    return write_tiny_workspace(tmp_path / "ws", n_points=200)


def test_the_camera_model_table_matches_pycolmap():
    for name, model in pycolmap.CameraModelId.__members__.items():
        if name != "INVALID":
            camera = pycolmap.Camera.create_from_model_id(1, model, 100.0, 10, 10)
            assert colmap_checks.CAMERA_MODEL_PARAMS[int(model.value)] == len(camera.params), name


def test_a_good_model_passes_and_every_file_is_walked(ws):
    assert sorted(p.stem for p in ws.model_dir.glob("*.bin")) == sorted(FILES)
    assert colmap_checks.check_binary_model(ws.model_dir) == ws.image_names


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("name", FILES)
def test_damaged_binaries_are_refused_fast_with_the_fix_and_nothing_written(ws, name, damage):
    path = ws.model_dir / f"{name}.bin"
    (_truncate if damage == "truncated" else _garbage)(path)
    before = sorted(p.relative_to(ws.workspace) for p in ws.workspace.rglob("*"))
    error = _refused_fast(lambda: colmap_reader.read_reconstruction(ws.workspace, undistort=True), name)
    assert "Re-export" in str(error)
    assert sorted(p.relative_to(ws.workspace) for p in ws.workspace.rglob("*")) == before


def test_a_declared_count_beyond_the_file_is_refused_without_allocating_it(ws):
    path = ws.model_dir / "points3D.bin"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2 ** 40) + data[8:])
    tracemalloc.start()
    try:
        _refused_fast(lambda: colmap_reader.load_model(ws.workspace), "declares 1,099,511,627,776 points")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(data) + 256 * 1024  # far below what 2**40 points would need


def test_a_track_length_beyond_the_file_is_refused(ws):
    path = ws.model_dir / "points3D.bin"
    data = bytearray(path.read_bytes())
    data[8 + 43: 8 + 51] = struct.pack("<Q", 2 ** 60)  # the first point's track length
    path.write_bytes(bytes(data))
    _refused_fast(lambda: colmap_checks.check_binary_model(ws.model_dir), "track of 1,152,921,504,606,846,976")


@pytest.mark.parametrize("name", ["../outside.jpg", "/etc/passwd", "sub/../../x.jpg", "C:\\photos\\a.jpg"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_image_names_are_confined_to_the_workspace(tmp_path, name, binary):
    ws = write_tiny_workspace(tmp_path / "ws", n_points=50, binary=binary)
    rec = pycolmap.Reconstruction(str(ws.model_dir))
    rec.image(1).name = name
    (rec.write_binary if binary else rec.write_text)(str(ws.model_dir))
    error = _refused_fast(lambda: colmap_reader.read_reconstruction(ws.workspace, undistort=True),
                          "outside the workspace")
    assert "relative paths inside it" in str(error)
    assert not (ws.workspace / "rerender").exists()


def test_rerender_dataset_refuses_damaged_models_before_writing(tmp_path, capsys):
    from rerender.commands import main as rerender_main
    from rerender.training.dataset_builder import DatasetError, build_dataset

    for name in FILES:
        ws = write_tiny_workspace(tmp_path / name, n_points=100)
        _truncate(ws.model_dir / f"{name}.bin")
        out = tmp_path / f"{name}-dataset"
        started = time.perf_counter()
        with pytest.raises(DatasetError, match=f"{name}.bin is truncated or corrupt"):
            build_dataset(ws.workspace, out, progress=False)
        assert time.perf_counter() - started < 1.0
        assert rerender_main(["dataset", str(ws.workspace), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{name}.bin" in err and "Re-export" in err and "Traceback" not in err
        assert not out.exists()


def test_rerender_dataset_refuses_a_truncated_dense_cloud_before_writing(tmp_path):
    from support_colmap import facade_points, write_fused_ply

    from rerender.training.dataset_builder import DatasetError, build_dataset

    ws = write_tiny_workspace(tmp_path / "ws", n_points=100)
    write_fused_ply(ws.workspace / "dense" / "fused.ply", *facade_points(500))
    _truncate(ws.workspace / "dense" / "fused.ply", 0.6)
    started = time.perf_counter()
    with pytest.raises(DatasetError, match="fused.ply: .* vertices \\(truncated file\\); re-run stereo fusion"):
        build_dataset(ws.workspace, tmp_path / "dataset", progress=False)
    assert time.perf_counter() - started < 1.0
    assert not (tmp_path / "dataset").exists()
