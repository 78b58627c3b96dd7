"""Appearance conditioning (FiLM vs the paper's concatenation), old bundles, latent fitting and the feature networks
of the losses. Real torch on a tiny procedural dataset; the ESPNet weights come from the shared test data."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rerender.backend.bundle import Bundle, BundleConfig, BundleError, init_bundle
from rerender.backend.latent_fit import fit_latent
from rerender.backend.networks import FiLM, Rerenderer
from rerender.backend.networks.encoder import COLOUR_STATISTICS, photo_colour_statistics
from rerender.backend.runtime import ModelRuntime
from rerender.training import losses
from rerender.training.config import ConfigError, TrainConfig
from rerender.training.data import load_view, read_manifest
from rerender.training.features import (SEGMENTER_FEATURES, FeatureError, SegmenterFeatures, load_features,
                                        load_segmenter_features)
from rerender.training.vgg import RANDOM_FALLBACK, VGGWeightsError, download_checkpoint

from support_dataset import make_dataset, make_trained_film_bundle, one_thread  # noqa: F401  (autouse fixture)

SIZES = dict(base_channels=8, depth=3, max_channels=32, latent_size=4, encoder_channels=8, encoder_blocks=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny staged FiLM run (stage 1 .. semantic), exported: (dataset, bundle)."""
    return make_trained_film_bundle(tmp_path_factory.mktemp("film"))


# ---- FiLM ---------------------------------------------------------------------------------------------------------

def test_film_layer_is_the_identity_at_initialisation():
    film = FiLM(4, 6)
    h = torch.randn(2, 6, 5, 5)
    assert torch.equal(film(h, torch.randn(2, 4)), h)


def test_film_network_at_init_renders_exactly_as_the_concat_network():
    torch.manual_seed(1)
    concat = Rerenderer(BundleConfig(**SIZES, appearance_conditioning="concat")).eval()
    film = Rerenderer(BundleConfig(**SIZES, appearance_conditioning="film")).eval()
    missing, unexpected = film.load_state_dict(concat.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("film.") for k in missing)
    x = torch.randn(3, concat.in_channels, 32, 40)
    z = torch.randn(3, 4) * 3
    with torch.no_grad():
        assert torch.equal(film(x, z), concat(x, z))


def test_a_standardised_latent_is_what_the_plain_network_sees_after_the_same_shift_and_scale():
    torch.manual_seed(2)
    plain = Rerenderer(BundleConfig(**SIZES, appearance_conditioning="film")).eval()
    std = Rerenderer(BundleConfig(**SIZES, appearance_conditioning="film", latent_standardised=True)).eval()
    missing, unexpected = std.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["latent_mean", "latent_scale"]
    for film in std.film:  # a trained FiLM: the latent reaches every decoder stage
        torch.nn.init.normal_(film.affine.weight)
    plain.load_state_dict({k: v for k, v in std.state_dict().items() if not k.startswith("latent_")})
    x = torch.randn(2, plain.in_channels, 32, 40)
    z = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(std(x, z), plain(x, z))  # identity until training sets the statistics
        collection = torch.randn(20, 4) * 0.2 + torch.tensor([2.0, -1.0, 0.5, 0.0])
        std.set_latent_statistics(collection)
        expected = plain(x, (z - collection.mean(0)) / collection.std(0))
        assert torch.allclose(std(x, z), expected, atol=1e-5)
        assert not torch.allclose(std(x, z), plain(x, z), atol=1e-3)
    with pytest.raises(ValueError, match="without latent standardisation"):
        plain.set_latent_statistics(collection)


def test_staged_training_sets_the_latent_statistics_and_the_bundle_keeps_them(trained):
    _, bundle_dir = trained
    bundle = Bundle.load(bundle_dir)
    r = bundle.rerenderer
    assert bundle.config.latent_standardised and r.latent_standardised
    assert not torch.equal(r.latent_scale, torch.ones_like(r.latent_scale))  # set from the training photos
    assert float(r.latent_scale.min()) > 0


def test_conditioning_is_validated():
    with pytest.raises(BundleError, match="appearance_conditioning"):
        BundleConfig(**SIZES, appearance_conditioning="adain")
    with pytest.raises(ConfigError, match="appearance_conditioning"):
        TrainConfig.tiny(appearance_conditioning="adain")


def test_changing_the_latent_changes_the_output_of_a_trained_tiny_bundle(trained):
    dataset, bundle_dir = trained
    bundle = Bundle.load(bundle_dir)
    assert bundle.config.appearance_conditioning == "film"
    film_weights = [p for n, p in bundle.rerenderer.named_parameters() if n.startswith("film.")]
    assert film_weights and any(float(p.detach().abs().max()) > 0 for p in film_weights)  # training moved them from zero
    runtime = ModelRuntime(bundle, "cpu")
    _, records = read_manifest(dataset)
    view = load_view(records[0])
    latents = np.stack([bundle.gallery[0].latent, bundle.gallery[0].latent + 2.0 * np.sign(bundle.gallery[0].latent)])
    a, b = runtime.rerender([view.buffer, view.buffer], latents)
    assert np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() > 1.0
    notes = json.loads((bundle_dir / "config.json").read_text())["notes"]
    assert notes["features"] == RANDOM_FALLBACK  # the feature network is recorded in the bundle


def test_a_bundle_made_before_film_existed_loads_and_renders_as_before(tmp_path):
    """An old config.json has no appearance_conditioning field: it means the bottleneck concatenation."""
    made = init_bundle(tmp_path / "old", **SIZES, seed=5)
    cfg_path = tmp_path / "old" / "config.json"
    raw = json.loads(cfg_path.read_text())
    del raw["appearance_conditioning"]
    cfg_path.write_text(json.dumps(raw))
    assert not any(".film." in k or k.startswith("rerenderer.film") for k in load_file(str(tmp_path / "old" /
                                                                                         "weights.safetensors")))
    old = Bundle.load(tmp_path / "old")
    assert old.config.appearance_conditioning == "concat" and old.rerenderer.film is None
    x = torch.randn(1, old.rerenderer.in_channels, 16, 16)
    z = torch.from_numpy(old.gallery[1].latent)[None]
    with torch.no_grad():
        assert torch.equal(old.rerenderer(x, z), made.rerenderer(x, z))


# ---- the encoder's colour statistics --------------------------------------------------------------------------------

def test_colour_statistics_are_each_channels_mean_spread_and_histogram():
    grey = torch.zeros(1, 3, 8, 8)  # 0 in [-1, 1] is mid grey: every pixel in bin 4 of 8
    half = torch.cat([-torch.ones(1, 3, 4, 8), torch.ones(1, 3, 4, 8)], dim=2)  # half black, half white
    s = photo_colour_statistics(torch.cat([grey, half]))
    assert s.shape == (2, COLOUR_STATISTICS)
    mean, std, hist = s[:, :3] / 4 + 0.5, s[:, 3:6] / 4, (s[:, 6:] / 2).reshape(2, 3, -1) ** 2
    torch.testing.assert_close(mean, torch.full((2, 3), 0.5))
    torch.testing.assert_close(std, torch.tensor([[0.0] * 3, [0.5] * 3]))
    torch.testing.assert_close(hist.sum(-1), torch.ones(2, 3))
    assert torch.all(hist[0, :, 4] == 1.0)
    torch.testing.assert_close(hist[1, :, [0, 7]], torch.full((3, 2), 0.5))
    warm = grey.clone()
    warm[:, 0] += 0.5
    assert not torch.allclose(photo_colour_statistics(warm), s[:1])  # a colour cast is seen


def test_a_trained_encoder_reads_the_colour_statistics_and_an_old_bundle_encodes_without_them(trained, tmp_path):
    _, bundle_dir = trained
    new = Bundle.load(bundle_dir)
    assert new.config.encoder_colour_statistics and new.encoder.colour_statistics
    pooled = new.encoder.blocks[-1].shortcut[1].weight.shape[0]
    assert new.encoder.mean.weight.shape[1] == pooled + COLOUR_STATISTICS
    # a config.json written before the option has no such field: the heads read the pooled features alone
    made = init_bundle(tmp_path / "old", **SIZES, seed=3)
    cfg_path = tmp_path / "old" / "config.json"
    raw = json.loads(cfg_path.read_text())
    del raw["encoder_colour_statistics"]
    cfg_path.write_text(json.dumps(raw))
    old = Bundle.load(tmp_path / "old")
    assert not old.config.encoder_colour_statistics and not old.encoder.colour_statistics
    assert old.encoder.mean.weight.shape[1] == old.encoder.blocks[-1].shortcut[1].weight.shape[0]
    x = torch.randn(2, old.encoder.in_channels, 16, 16)
    with torch.no_grad():
        assert torch.equal(old.encoder.latent(x), made.encoder.latent(x))


# ---- latent fitting -------------------------------------------------------------------------------------------------

def test_fitting_the_latent_lowers_the_photo_loss_and_can_be_cancelled(trained):
    dataset, bundle_dir = trained
    runtime = ModelRuntime(bundle_dir, "cpu")
    _, records = read_manifest(dataset)
    view = load_view([r for r in records if r.split == "val"][0])
    seen: list[int] = []
    fit = fit_latent(runtime, view.photo, view.buffer, steps=60, progress=lambda s, n, loss: seen.append(s))
    assert fit.steps == 60 and seen[-1] == 60 and len(fit.losses) == 61
    assert fit.final_loss < 0.97 * fit.initial_loss
    out_start = runtime.rerender([view.buffer], runtime.encode([view.photo], [view.buffer]))[0]
    out_fit = runtime.rerender([view.buffer], fit.latent[None])[0]
    err = lambda o: np.abs(o.astype(np.float32) - view.photo.astype(np.float32)).mean()  # noqa: E731
    assert err(out_fit) < err(out_start)
    stopped = fit_latent(runtime, view.photo, view.buffer, steps=60, cancel=lambda: True)
    assert stopped.cancelled and stopped.steps == 0
    with pytest.raises(ValueError, match="fit steps"):
        fit_latent(runtime, view.photo, view.buffer, steps=-1)


# ---- features of the losses ---------------------------------------------------------------------------------------

def test_segmenter_features_are_a_real_perceptual_distance(espnet_dir):
    feats = load_features("segmenter", segmenter_weights=espnet_dir)
    assert isinstance(feats, SegmenterFeatures) and feats.weights_name == SEGMENTER_FEATURES
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    same = losses.perceptual_loss(feats, x, x, feats.layer_weights, feats.feature_scale)
    near = losses.perceptual_loss(feats, x, (x + 0.05 * torch.randn_like(x)).clamp(-1, 1), feats.layer_weights,
                                  feats.feature_scale)
    far = losses.perceptual_loss(feats, x, y, feats.layer_weights, feats.feature_scale)
    assert float(same) == 0.0 and 0 < float(near) < 0.1 * float(far)
    out = x.clone().requires_grad_(True)
    losses.perceptual_loss(feats, out, y, feats.layer_weights, feats.feature_scale).backward()
    assert out.grad is not None and float(out.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in feats.parameters())


def test_auto_features_fall_back_to_the_segmenter_then_to_random_vgg(espnet_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no ImageNet VGG19 in this empty hub cache
    monkeypatch.setenv("RERENDER_CACHE", str(tmp_path / "cache"))
    assert load_features("auto", segmenter_weights=espnet_dir, download=False).weights_name == SEGMENTER_FEATURES
    with pytest.warns(RuntimeWarning, match="no ImageNet VGG19 and no segmenter weights"):
        fallback = load_features("auto", width_divisor=8, download=False)
    assert fallback.weights_name == RANDOM_FALLBACK
    with pytest.raises(FeatureError, match="segmenter"):
        load_segmenter_features(tmp_path / "missing.pth")


def test_a_downloaded_vgg_checkpoint_with_the_wrong_hash_is_removed(tmp_path):
    src = tmp_path / "not_vgg.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, src)
    dest = tmp_path / "hub" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(VGGWeightsError, match="SHA-256"):
        download_checkpoint(dest, url=src.as_uri())
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_vectorised_style_distances_match_the_pairwise_definition():
    torch.manual_seed(0)
    feats = [torch.randn(7, c, 9) for c in (3, 5)]
    grams = [losses.gram_matrix(f[..., None]) for f in feats]
    d = losses.pairwise_style_distances(grams, chunk=3)
    ref = torch.stack([losses.style_distance(grams, [g[i:i + 1] for g in grams]) for i in range(7)])
    assert torch.allclose(d, ref, rtol=1e-4, atol=1e-7) and torch.equal(d, d.T)


def test_relative_triplet_margin_is_not_met_by_scaling_latents_apart():
    a, p, n = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.2, 0.0]])
    assert float(losses.triplet_loss(a * 100, p * 100, n * 100, 0.1)) == 0.0  # absolute margin: met by scale
    rel = [float(losses.triplet_loss(a * s, p * s, n * s, 0.1, relative=0.5)) for s in (1.0, 100.0)]
    assert rel[0] > 0 and rel[1] == pytest.approx(rel[0] * 100 ** 2, rel=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match="triplet_relative_margin"):
            TrainConfig.tiny(triplet_relative_margin=3.0)


def test_the_encode_op_fits_the_latent_when_asked(trained):
    from rerender.backend.server_ops import OP_TABLE
    from rerender.bridge.errors import ProtocolError
    from rerender.bridge.protocol import Message, buffer_to_wire

    dataset, bundle_dir = trained
    runtime = ModelRuntime(bundle_dir, "cpu")
    _, records = read_manifest(dataset)
    view = load_view([r for r in records if r.split == "val"][0])
    spec = OP_TABLE["encode"]
    arrays = {**buffer_to_wire(view.buffer, "float32"), "photo": view.photo}
    for bad in (-1, 5001, 2.5, True):
        with pytest.raises(ProtocolError, match="fit_steps"):
            spec.check(Message("encode", 1, {"fit_steps": bad}, arrays))
    inputs = [spec.prepare(runtime, arrays, runtime.latent_size)]
    plain = spec.compute(runtime, inputs, spec.check(Message("encode", 1, {}, arrays)))[0][0]["latent"]
    fitted = spec.compute(runtime, inputs, spec.check(Message("encode", 2, {"fit_steps": 30}, arrays)))[0][0]["latent"]
    direct = fit_latent(runtime, *reversed(inputs[0]), steps=30, init=plain)
    assert not np.allclose(plain, fitted) and np.allclose(fitted, direct.latent, atol=1e-5)
