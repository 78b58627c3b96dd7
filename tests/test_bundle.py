"""Model bundle: save/load round trip, atomic save, clear errors for broken bundles, `rerender bundle` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rerender.backend.bundle import (FORMAT_VERSION, Appearance, Bundle, BundleConfig, BundleError, class_table,
                                     init_bundle)

SMALL = dict(base_channels=8, depth=2, max_channels=16, latent_size=4, encoder_channels=8, encoder_blocks=2)


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    init_bundle(tmp_path / "b", **SMALL, name="test bundle", seed=3)
    return tmp_path / "b"


def test_init_writes_the_documented_files(bundle_dir: Path):
    names = {p.name for p in bundle_dir.iterdir()}
    assert names == {"config.json", "weights.safetensors", "gallery.json", "gallery"}
    cfg = json.loads((bundle_dir / "config.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION and cfg["latent_size"] == 4 and cfg["name"] == "test bundle"
    assert len(cfg["classes"]) == 19 and cfg["encoding"]["label_mode"] == "color"
    keys = load_file(str(bundle_dir / "weights.safetensors")).keys()
    assert {k.split(".", 1)[0] for k in keys} == {"rerenderer", "encoder", "semantic"}
    gallery = json.loads((bundle_dir / "gallery.json").read_text())["appearances"]
    assert [g["name"] for g in gallery] == ["noon", "golden hour", "overcast", "night"]
    assert all((bundle_dir / g["thumbnail"]).is_file() for g in gallery)
    assert (bundle_dir / "gallery" / "golden_hour.png").is_file()


def test_save_load_round_trip_is_bit_exact(tmp_path: Path):
    made = init_bundle(tmp_path / "a", **SMALL, seed=7)
    made.gallery.append(Appearance("my photo/ü", np.array([0.1, -2.5, 1e-7, 3.0], np.float32),
                                   np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)))
    made.save(tmp_path / "b")
    loaded = Bundle.load(tmp_path / "b")
    original, again = made.state_dict(), loaded.state_dict()
    assert original.keys() == again.keys()
    for k in original:
        assert torch.equal(original[k], again[k]), k
    assert loaded.config.to_json() == made.config.to_json()
    assert [a.name for a in loaded.gallery] == [a.name for a in made.gallery]
    for a, b in zip(made.gallery, loaded.gallery):
        np.testing.assert_array_equal(a.latent, b.latent)  # float32 survives JSON exactly
        np.testing.assert_array_equal(a.thumbnail, b.thumbnail)
    assert not any(m.training for m in loaded.modules().values())


def test_different_seeds_give_different_weights_same_seed_the_same(tmp_path: Path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = init_bundle(tmp_path / "a", **SMALL, seed=1).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is left alone
    b = init_bundle(tmp_path / "b", **SMALL, seed=1).state_dict()
    c = init_bundle(tmp_path / "c", **SMALL, seed=2).state_dict()
    key = "rerenderer.from_input.0.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


def test_save_replaces_atomically_and_leaves_no_temporaries(bundle_dir: Path):
    bundle = Bundle.load(bundle_dir)
    bundle.config.name = "renamed"
    bundle.gallery = bundle.gallery[:1]
    bundle.save(bundle_dir)
    assert Bundle.load(bundle_dir).config.name == "renamed"
    assert len(list((bundle_dir / "gallery").iterdir())) == 1
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["b"]


def test_save_refuses_to_overwrite_a_directory_that_is_not_a_bundle(tmp_path: Path, bundle_dir: Path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("do not delete")
    with pytest.raises(BundleError, match="not a model bundle; refusing"):
        Bundle.load(bundle_dir).save(tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "do not delete"


def test_variants_round_trip(tmp_path: Path):
    i2i = init_bundle(tmp_path / "i2i", **{**SMALL, "latent_size": 0}, use_semantics=False, label_mode="onehot",
                      num_classes=23)
    assert i2i.encoder is None and i2i.gallery == []
    loaded = Bundle.load(tmp_path / "i2i")
    assert loaded.encoder is None and loaded.config.num_classes == 23 and loaded.rerenderer.in_channels == 5
    assert loaded.semantic.to_output.weight.shape[0] == 23
    assert len({c.color for c in loaded.config.classes}) == 23


# ---- broken bundles -------------------------------------------------------------------------------------------------

def test_missing_directory(tmp_path: Path):
    with pytest.raises(BundleError, match="does not exist.*rerender bundle init"):
        Bundle.load(tmp_path / "nowhere")


def test_missing_and_corrupt_config(bundle_dir: Path):
    (bundle_dir / "config.json").write_text('{"format_version": 1, "base_channels": ')
    with pytest.raises(BundleError, match="config.json is corrupt"):
        Bundle.load(bundle_dir)
    (bundle_dir / "config.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(BundleError, match="no integer format_version"):
        Bundle.load(bundle_dir)
    (bundle_dir / "config.json").unlink()
    with pytest.raises(BundleError, match="has no config.json"):
        Bundle.load(bundle_dir)


def test_format_version_too_new(bundle_dir: Path):
    cfg = json.loads((bundle_dir / "config.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (bundle_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match=f"version {FORMAT_VERSION + 1} is newer.*upgrade rerender"):
        Bundle.load(bundle_dir)


def test_invalid_config_values(bundle_dir: Path):
    cfg = json.loads((bundle_dir / "config.json").read_text())
    cfg["encoding"]["near"] = -1
    (bundle_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="config is invalid.*near"):
        Bundle.load(bundle_dir)


def test_weights_that_do_not_match_the_config(bundle_dir: Path):
    cfg = json.loads((bundle_dir / "config.json").read_text())
    cfg["base_channels"] = 4
    (bundle_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="rerenderer weights do not match config.json.*wrong shape"):
        Bundle.load(bundle_dir)


def test_missing_truncated_and_partial_weights(bundle_dir: Path):
    weights = bundle_dir / "weights.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v for k, v in tensors.items() if not k.startswith("semantic.")}, str(weights))
    with pytest.raises(BundleError, match="semantic weights do not match.*missing"):
        Bundle.load(bundle_dir)
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        Bundle.load(bundle_dir)
    weights.unlink()
    with pytest.raises(BundleError, match="weights.safetensors is missing"):
        Bundle.load(bundle_dir)


def test_corrupt_gallery(bundle_dir: Path):
    (bundle_dir / "gallery" / "noon.png").write_bytes(b"not a png")
    with pytest.raises(BundleError, match="gallery.json or its thumbnails are corrupt"):
        Bundle.load(bundle_dir)


def test_gallery_latent_of_wrong_length(bundle_dir: Path):
    g = json.loads((bundle_dir / "gallery.json").read_text())
    g["appearances"][0]["latent"] = [0.0] * 9
    (bundle_dir / "gallery.json").write_text(json.dumps(g))
    with pytest.raises(BundleError, match="'noon' has a latent of length 9.*latent_size is 4"):
        Bundle.load(bundle_dir)


def test_config_rejects_mismatched_encoding():
    from rerender.backend.encoding import InputEncoding
    with pytest.raises(BundleError, match="palette has 19 classes but the class table has 5"):
        BundleConfig(classes=class_table(5), encoding=InputEncoding())


# ---- the command ----------------------------------------------------------------------------------------------------

def rerender_cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from rerender import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_cli_bundle_init_and_info(tmp_path: Path):
    out = tmp_path / "cli bundle"
    r = rerender_cli("bundle", "init", "--out", str(out), "--base-channels", "4", "--depth", "2", "--max-channels",
                     "8", "--latent-size", "3", "--encoder-channels", "4", "--name", "smoke", "--num-classes", "5")
    assert r.returncode == 0, r.stderr
    assert "wrote untrained bundle 'smoke'" in r.stdout
    loaded = Bundle.load(out)
    assert loaded.config.latent_size == 3 and loaded.config.num_classes == 5 and loaded.config.base_channels == 4
    info = rerender_cli("bundle", "info", str(out))
    assert info.returncode == 0, info.stderr
    assert "smoke" in info.stdout and "latent 3" in info.stdout and "multiples of 4" in info.stdout
    assert "gallery     4 appearances: noon" in info.stdout
    as_json = json.loads(rerender_cli("bundle", "info", "--json", str(out)).stdout)
    assert as_json["config"]["latent_size"] == 3 and len(as_json["gallery"]) == 4
    again = rerender_cli("bundle", "init", "--out", str(out))
    assert again.returncode == 1 and "--force" in again.stderr


def test_cli_info_reports_errors_clearly(tmp_path: Path):
    r = rerender_cli("bundle", "info", str(tmp_path / "missing"))
    assert r.returncode == 1
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
