"""Losses of staged training and of the baselines (paper §3, docs/training.md).

Every function takes tensors and returns a scalar tensor (or, for distances, one value per pair), so each has a
known-answer test: the Gram distance of an image to itself is 0, the triplet loss is 0 once the negative is
farther than the positive by the margin, LSGAN losses vanish at their targets.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .vgg import VGG19Features


def perceptual_loss(vgg: VGG19Features, output: torch.Tensor, target: torch.Tensor,
                    layer_weights: Sequence[float], feature_scale: float = 0.1) -> torch.Tensor:
    """Weighted mean squared difference of VGG activations (conv1_2 ... conv5_2; weights 1/32 ... 1).

    Why the 0.1 scale: the authors scale activations before the squared difference, which keeps this loss in the
    same range as the GAN loss with their 0.3 weight. The target's features carry no gradient.
    """
    feats_out = vgg(output)
    with torch.no_grad():
        feats_tgt = vgg(target)
    total = output.new_zeros(())
    for w, a, b in zip(layer_weights, feats_out, feats_tgt):
        total = total + w * F.mse_loss(a.float() * feature_scale, b.float() * feature_scale)
    return total


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """N x C x H x W activations -> N x C x C Gram matrices normalised by C*H*W (size-independent)."""
    n, c, h, w = features.shape
    f = features.float().reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def style_grams(vgg: VGG19Features, images: torch.Tensor) -> list[torch.Tensor]:
    """Gram matrices of every feature layer (VGG19 or the segmenter's encoder) for a batch of images in [-1, 1]."""
    with torch.inference_mode():
        return [gram_matrix(f) for f in vgg(images)]


def style_distance(grams_a: Sequence[torch.Tensor], grams_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Style distance between paired Gram sets: sum over layers of the squared Frobenius norm of the difference.

    Shapes broadcast, so ``grams_a`` with N items against ``grams_b`` of one image gives N distances.
    """
    total = None
    for ga, gb in zip(grams_a, grams_b):
        d = ((ga - gb) ** 2).flatten(1).sum(1) if ga.dim() == 3 else ((ga - gb) ** 2).sum()
        total = d if total is None else total + d
    assert total is not None, "style_distance needs at least one layer"
    return total


def pairwise_style_distances(grams: Sequence[torch.Tensor], chunk: int = 256) -> torch.Tensor:
    """N x N matrix of style distances between all images whose Gram matrices are given, by matrix products.

    |Ga - Gb|^2 = |Ga|^2 + |Gb|^2 - 2 <Ga, Gb> summed over layers; Gram matrices are symmetric, so only their upper
    triangle is used (off-diagonal entries weighted by sqrt 2), which halves the work and the memory. The vectors
    are centred on their mean first (distances do not change), which keeps float32's cancellation error far below
    the distances between different photos; negative round-off is clamped to 0.
    """
    n = grams[0].shape[0]
    out = torch.zeros(n, n, dtype=torch.float32)
    for g in grams:
        c = g.shape[-1]
        iu = torch.triu_indices(c, c)
        weight = torch.where(iu[0] == iu[1], 1.0, 2.0 ** 0.5)
        vec = g.detach().to("cpu", torch.float32)[:, iu[0], iu[1]] * weight
        vec = vec - vec.mean(0, keepdim=True)
        sq = (vec ** 2).sum(1)
        for i in range(0, n, chunk):
            out[i:i + chunk] += sq[i:i + chunk, None] + sq[None, :] - 2.0 * vec[i:i + chunk] @ vec.T
    out = 0.5 * (out + out.T)  # exactly symmetric (chunked products round differently)
    return out.clamp_(min=0.0).fill_diagonal_(0.0)


def colour_histograms(photos_uint8: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """N x H x W x 3 uint8 photos -> N x bins**3 square roots of their joint RGB histograms (each sums to 1 squared).

    The square root makes the Euclidean distance between two of them the Hellinger distance of the histograms.
    """
    q = (photos_uint8.to(torch.int64) * bins) // 256
    cell = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    n = cell.shape[0]
    counts = torch.zeros(n, bins ** 3, dtype=torch.float64)
    counts.scatter_add_(1, cell.reshape(n, -1), torch.ones(n, cell[0].numel(), dtype=torch.float64))
    return (counts / counts.sum(1, keepdim=True)).sqrt().float()


def appearance_distances(gram_distances: torch.Tensor, histograms: torch.Tensor | None,
                         colour_weight: float) -> torch.Tensor:
    """The distance stage 1 ranks photos by: the Gram (style) distance, plus ``colour_weight`` times the colour
    histograms' squared Hellinger distance, each divided by its median over pairs so the weight is a ratio.

    Why the colour term: Gram matrices of a network trained for segmentation (the fallback feature extractor where
    ImageNet VGG19 cannot be had) are built to ignore colour, which is most of what a look is; measured on the
    generated collection (48 photos, four kinds of light), the nearest photo by the segmenter's Gram distance has the
    same kind of light for 75 % of photos, by colour histogram for 92 %.
    """
    if histograms is None or colour_weight <= 0:
        return gram_distances
    h = histograms.to(torch.float64)
    sq = (h ** 2).sum(1)
    hist_d = (sq[:, None] + sq[None, :] - 2.0 * h @ h.T).clamp_(min=0.0).float()
    off = ~torch.eye(len(h), dtype=torch.bool)

    def normalised(d: torch.Tensor) -> torch.Tensor:
        scale = float(d[off].median()) if off.any() else 1.0
        return d / (scale if scale > 0 else 1.0)

    out = normalised(gram_distances.float()) + colour_weight * normalised(hist_d)
    return out.fill_diagonal_(0.0)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float,
                 relative: float = 0.0) -> torch.Tensor:
    """max(|za - zp|^2 - |za - zn|^2 + margin, 0), averaged over the batch.

    The paper's formula is written on Gram matrices, but those do not depend on the encoder: the Gram (style)
    distance chooses positive and negative, and the loss is taken on the appearance latents, as in the
    authors' code. ``relative`` > 0 replaces the absolute margin by ``relative`` times the mean of the two squared
    distances: the negative must then be farther than the positive by a factor, which spreading all latents apart
    (what meets an absolute margin at initialisation) does not achieve.
    """
    d_pos = ((anchor - positive) ** 2).sum(1)
    d_neg = ((anchor - negative) ** 2).sum(1)
    m = relative * 0.5 * (d_pos + d_neg) if relative > 0 else margin
    return F.relu(d_pos - d_neg + m).mean()


def log_ratio_loss(latents: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Log-ratio loss (Kim et al., "Deep Metric Learning Beyond Binary Supervision", CVPR 2019): for every anchor a
    and every pair (i, j) of other items, (log |za - zi|^2 / |za - zj|^2  -  log D_ai / D_aj)^2, averaged.

    ``latents`` is N x L, ``target`` the N x N appearance distances between the same N photos. Why beside the
    triplet loss: a triplet only says the one nearest photo is nearer than one far photo, so the photos between
    (a day photo's overcast neighbours, say) are never placed; the log ratios ask the latents to keep the
    distance's whole ordering, from every pair in the batch, and do not depend on the latents' overall scale.
    """
    n = latents.shape[0]
    if n < 3:
        return latents.new_zeros(())
    z = latents.float()
    dz = ((z[:, None] - z[None]) ** 2).sum(-1)
    log_z = torch.log(dz + eps)
    log_t = torch.log(target.to(z).clamp(min=0.0) + eps)
    # every (a, i, j) with i, j != a and i != j: the difference of log distances from a
    diff = (log_z[:, :, None] - log_z[:, None, :]) - (log_t[:, :, None] - log_t[:, None, :])
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    valid = ~(eye[:, :, None] | eye[:, None, :] | eye[None, :, :])
    return (diff[valid] ** 2).mean()


def lsgan_d_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Discriminator LSGAN loss: mean (D(real) - 1)^2 + mean D(fake)^2, summed over scales."""
    total = real_logits[0].new_zeros((), dtype=torch.float32)
    for r, f in zip(real_logits, fake_logits):
        total = total + ((r.float() - 1) ** 2).mean() + (f.float() ** 2).mean()
    return total


def lsgan_g_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Generator LSGAN loss: mean (D(fake) - 1)^2, summed over scales."""
    total = fake_logits[0].new_zeros((), dtype=torch.float32)
    for f in fake_logits:
        total = total + ((f.float() - 1) ** 2).mean()
    return total


def l1_loss(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute difference, optionally only where ``mask`` (N x 1 x H x W, bool/float) is set."""
    diff = (output.float() - target.float()).abs()
    if mask is None:
        return diff.mean()
    m = mask.float().expand_as(diff)
    return (diff * m).sum() / m.sum().clamp_min(1.0)


def colour_statistics_loss(output: torch.Tensor, target: torch.Tensor, pool: int = 8) -> torch.Tensor:
    """Mean absolute difference of per-channel colour statistics: image mean and std, and the low-pass image.

    Why: in a photo collection most of what a look changes is colour at low spatial frequency (the sky's hue, the
    facade's warmth, how dark night is). Per-pixel L1 and the perceptual loss spend their gradient on edges and
    texture the rerenderer cannot yet resolve on a small budget; this term asks directly for the colour the latent
    can explain, so the appearance path learns first. ``pool`` is the side of the averaging window of the
    low-pass term (regional colour: sky versus facade), clamped to the image size.
    """
    o, t = output.float(), target.float()
    mean_o, mean_t = o.mean((2, 3)), t.mean((2, 3))
    std_o, std_t = o.std((2, 3)), t.std((2, 3))
    k = max(1, min(int(pool), o.shape[-1], o.shape[-2]))
    low = (F.avg_pool2d(o, k) - F.avg_pool2d(t, k)).abs().mean()
    return (mean_o - mean_t).abs().mean() + (std_o - std_t).abs().mean() + low


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over the latent, averaged over the batch (BicycleGAN's prior)."""
    return (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)).mean()


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore: Sequence[int]) -> torch.Tensor:
    """Cross entropy of a semantic prediction, ignoring pixels whose label is in ``ignore`` (transient, unknown).

    Why: the semantic predictor S guesses a *plausible* labelling from the deep buffer; people and cars in a photo
    cannot be predicted from geometry, so the paper masks the loss on them.
    """
    target = labels.long().clone()
    drop = torch.zeros_like(target, dtype=torch.bool)
    for c in ignore:
        drop |= target == int(c)
    drop |= target >= logits.shape[1]
    target[drop] = -100
    if bool((~drop).sum() == 0):
        return logits.sum() * 0.0  # nothing to learn from this batch, but keep the graph connected
    return F.cross_entropy(logits.float(), target, ignore_index=-100)
