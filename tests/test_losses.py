"""Known-answer tests of the training losses, the VGG19 loader and the discriminator (real torch, tiny tensors)."""

from __future__ import annotations


import pytest
import torch

from rerender.training import losses
from rerender.training.discriminator import MultiscaleDiscriminator
from rerender.training.vgg import (IMAGENET, LAYER_INDEX, RANDOM_FALLBACK, VGG19Features, VGGWeightsError,
                                   load_vgg19)

WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


@pytest.fixture(scope="module")
def small_vgg() -> VGG19Features:
    torch.manual_seed(0)
    return load_vgg19(width_divisor=8)


def test_vgg_layer_indices_match_torchvision():
    # torchvision's vgg19().features: conv1_2 is module 2, conv3_2 is 12, conv5_2 is 30
    assert LAYER_INDEX["conv1_1"] == 0 and LAYER_INDEX["conv1_2"] == 2
    assert LAYER_INDEX["conv2_2"] == 7 and LAYER_INDEX["conv3_2"] == 12
    assert LAYER_INDEX["conv4_2"] == 21 and LAYER_INDEX["conv5_2"] == 30
    assert LAYER_INDEX["conv5_4"] == 34


def test_vgg_loader_round_trip(tmp_path):
    """A torchvision-format checkpoint (features.N.* + classifier.*) written here loads bit-exactly."""
    torch.manual_seed(1)
    source = VGG19Features(layers=("conv1_2", "conv2_2"))
    state = {f"features.{k}": v.clone() for k, v in source.features.state_dict().items()}
    state["features.5.weight"] = torch.randn(128, 64, 3, 3)  # conv2_1, as torchvision has it
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    vgg = load_vgg19(path, layers=("conv1_2", "conv2_2"))
    assert vgg.weights_name == IMAGENET
    assert torch.equal(vgg.features[5].weight, state["features.5.weight"])
    assert torch.equal(vgg.features[2].bias, state["features.2.bias"])
    assert not any(p.requires_grad for p in vgg.parameters())


def test_vgg_loader_errors_name_the_file(tmp_path):
    with pytest.raises(VGGWeightsError, match="not found"):
        load_vgg19(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(VGGWeightsError, match="bad.pth"):
        load_vgg19(bad)
    wrong = tmp_path / "wrong.pth"
    torch.save({"model.conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(VGGWeightsError, match="features.0.weight"):
        load_vgg19(wrong, layers=("conv1_2",))


def test_vgg_without_weights_warns_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    with pytest.warns(RuntimeWarning, match="NO IMAGENET WEIGHTS"):
        vgg = load_vgg19(layers=("conv1_2",), download=False)
    assert vgg.weights_name == RANDOM_FALLBACK


def test_gram_distance_of_image_to_itself_is_zero(small_vgg):
    torch.manual_seed(2)
    a, b = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    ga, gb = losses.style_grams(small_vgg, a), losses.style_grams(small_vgg, b)
    assert losses.style_distance(ga, ga).item() == 0.0
    assert losses.style_distance(ga, gb).item() > 0.0
    d = losses.pairwise_style_distances([torch.cat([x, y]) for x, y in zip(ga, gb)])
    assert d[0, 0] == 0 and d[1, 1] == 0 and torch.isclose(d[0, 1], d[1, 0])


def test_gram_matrix_known_value():
    f = torch.ones(1, 2, 2, 2)  # C=2, H=W=2: every entry of F F^T is 4, normalised by C*H*W = 8
    assert torch.allclose(losses.gram_matrix(f), torch.full((1, 2, 2), 0.5))


def test_style_distance_ignores_layout_but_not_colour(small_vgg):
    """The property the paper picks it for: a shuffled layout of the same texture is closer than another colour."""
    torch.manual_seed(3)
    stripes = torch.zeros(1, 3, 32, 32)
    stripes[..., ::4, :] = 0.8
    shifted = torch.roll(stripes, shifts=2, dims=2)
    recoloured = stripes.clone()
    recoloured[:, 0] -= 0.9
    g = lambda x: losses.style_grams(small_vgg, x)  # noqa: E731
    assert losses.style_distance(g(stripes), g(shifted)) < losses.style_distance(g(stripes), g(recoloured))


def test_triplet_loss_zero_when_separated_by_margin():
    anchor = torch.zeros(2, 8)
    positive = torch.zeros(2, 8)
    negative = torch.zeros(2, 8)
    negative[:, 0] = 0.5  # |a-n|^2 = 0.25 >= 0 + margin 0.1
    assert losses.triplet_loss(anchor, positive, negative, margin=0.1).item() == 0.0
    negative[:, 0] = 0.2  # 0.04: inside the margin -> 0.1 - 0.04
    assert losses.triplet_loss(anchor, positive, negative, margin=0.1).item() == pytest.approx(0.06)


def test_log_ratio_loss_is_zero_for_any_scaled_copy_of_the_distance_and_teaches_its_ordering():
    torch.manual_seed(0)
    target_points = torch.randn(6, 8)
    target = ((target_points[:, None] - target_points[None]) ** 2).sum(-1)
    # latents whose distances are the target's times any factor: nothing to learn
    assert losses.log_ratio_loss(target_points * 7.0, target).item() == pytest.approx(0.0, abs=1e-6)
    # latents in the wrong places: a positive loss, and gradient steps move them towards the target's ordering
    z = torch.randn(6, 8, requires_grad=True)
    first = losses.log_ratio_loss(z, target).item()
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        losses.log_ratio_loss(z, target).backward()
        opt.step()
    assert first > 0.1 and losses.log_ratio_loss(z, target).item() < 0.1 * first
    with torch.no_grad():
        dz = ((z[:, None] - z[None]) ** 2).sum(-1) + torch.eye(6) * 1e9
    assert (dz.argmin(1) == (target + torch.eye(6) * 1e9).argmin(1)).all()  # every nearest neighbour kept
    assert losses.log_ratio_loss(z[:2], target[:2, :2]).item() == 0.0  # fewer than 3: no pair to compare


def test_lsgan_known_values():
    ones, zeros = [torch.ones(2, 1, 4, 4)] * 2, [torch.zeros(2, 1, 4, 4)] * 2
    assert losses.lsgan_d_loss(ones, zeros).item() == 0.0  # perfect discriminator, 2 scales
    assert losses.lsgan_d_loss(zeros, ones).item() == pytest.approx(4.0)  # worst: (0-1)^2 + 1^2 per scale
    assert losses.lsgan_g_loss(ones).item() == 0.0
    assert losses.lsgan_g_loss(zeros).item() == pytest.approx(2.0)
    half = [torch.full((1, 1, 2, 2), 0.5)]
    assert losses.lsgan_g_loss(half).item() == pytest.approx(0.25)


def test_perceptual_loss_zero_on_identical_and_weighted(small_vgg):
    torch.manual_seed(4)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    assert losses.perceptual_loss(small_vgg, x, x, WEIGHTS).item() == 0.0
    full = losses.perceptual_loss(small_vgg, x, y, WEIGHTS).item()
    only_first = losses.perceptual_loss(small_vgg, x, y, (1 / 32, 0, 0, 0, 0)).item()
    assert 0 < only_first < full
    x.requires_grad_(True)
    losses.perceptual_loss(small_vgg, x, y, WEIGHTS).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_l1_kl_and_masked_cross_entropy():
    a, b = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    assert losses.l1_loss(a, b).item() == 1.0
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    b2 = b.clone()
    b2[..., 1:, :] = 5.0
    assert losses.l1_loss(a, b2, mask).item() == 1.0
    assert losses.kl_divergence(torch.zeros(3, 8), torch.zeros(3, 8)).item() == 0.0
    assert losses.kl_divergence(torch.ones(3, 8), torch.zeros(3, 8)).item() == pytest.approx(4.0)
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 1, 0, 0] = 10.0  # confident and right on pixel 0
    labels = torch.tensor([[[1, 2]]])
    masked = losses.masked_cross_entropy(logits, labels, ignore=(2,)).item()
    assert masked < 1e-3  # pixel 1 (class 2, "transient") does not count
    assert losses.masked_cross_entropy(logits, labels, ignore=()).item() > 0.5
    all_masked = losses.masked_cross_entropy(logits.requires_grad_(), labels, ignore=(1, 2))
    assert all_masked.item() == 0.0


def test_multiscale_discriminator_shapes_and_gradient():
    torch.manual_seed(5)
    d = MultiscaleDiscriminator(in_channels=3 + 5, channels=4, scales=3)
    img, cond = torch.randn(2, 3, 32, 32), torch.randn(2, 5, 32, 32)
    outs = d(img, cond)
    assert len(outs) == 3
    assert all(o.shape[:2] == (2, 1) for o in outs)
    assert outs[0].shape[-1] > outs[1].shape[-1] > outs[2].shape[-1]
    losses.lsgan_d_loss(outs, outs).backward()
    assert all(p.grad is not None for p in d.parameters() if p.requires_grad)


def test_colour_statistics_loss_sees_colour_not_layout():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(losses.colour_statistics_loss(img, img)) == 0.0
    # the same pixels in another order: mean and std agree, only the low-pass term differs a little
    shuffled = img.flatten(2)[:, :, torch.randperm(32 * 32)].reshape(img.shape)
    warmer = img.clone()
    warmer[:, 0] += 0.4
    assert float(losses.colour_statistics_loss(warmer, img)) > 2 * float(losses.colour_statistics_loss(shuffled, img))
    out = torch.zeros(1, 3, 16, 16, requires_grad=True)
    losses.colour_statistics_loss(out, torch.full((1, 3, 16, 16), 0.5)).backward()
    assert out.grad is not None and float(out.grad.sum()) < 0  # pushes the output up towards the target


def test_colour_histograms_are_unit_vectors_and_separate_colours():
    grey = torch.full((1, 8, 8, 3), 128, dtype=torch.uint8)
    blue = grey.clone()
    blue[..., 2] = 250
    h = losses.colour_histograms(torch.cat([grey, grey, blue]))
    assert torch.allclose((h ** 2).sum(1), torch.ones(3))
    d = losses.appearance_distances(torch.zeros(3, 3), h, colour_weight=1.0)
    assert float(d[0, 1]) == 0.0 and float(d[0, 2]) > 0.0 and torch.equal(d, d.T)
    gram = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]])
    assert torch.equal(losses.appearance_distances(gram, h, colour_weight=0.0), gram)


def test_hard_mining_takes_the_far_photo_whose_latent_is_nearest():
    from types import SimpleNamespace

    from rerender.training.steps import PhaseSteps

    class Miner(PhaseSteps):
        def __init__(self, mining: str) -> None:
            # photo 0's style neighbours: 1, 2 near; 3, 4, 5 far
            self.style_distances = torch.tensor([[0, 1, 1, 9, 9, 9]], dtype=torch.float32).repeat(6, 1)
            self.config = SimpleNamespace(triplet_k_near=2, triplet_k_far=3, triplet_mining=mining)
            self.train_set = [None] * 6
            self.gen = torch.Generator().manual_seed(0)

    miner = Miner("hard")
    z = torch.tensor([[0.0], [5.0], [0.1], [3.0], [0.2], [4.0]])  # latents: 4 is the far photo nearest 0
    miner._remember_latents(list(range(6)), z)
    for _ in range(5):
        pos, neg = miner.triplets([0])
        assert neg == [4] and pos == [1]  # hardest negative, hardest (farthest) positive
    paper = Miner("random")
    paper._remember_latents(list(range(6)), z)  # ignored without hard mining
    random_negs = {paper.triplets([0])[1][0] for _ in range(30)}
    assert random_negs == {3, 4, 5}
