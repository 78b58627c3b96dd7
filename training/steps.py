"""The step function of every training phase (training/phases.py names them), mixed into ``Trainer``.

Each ``step_*`` takes one batch, updates the networks its phase trains (``Phase.trains``) and returns the losses to
log. They share the tensor helpers below (inputs, crops, autocast, one optimiser update, the discriminator's step,
the reconstruction loss). All randomness comes from ``self.gen``, which the trainer re-seeds before every step.
The attributes they use (networks, EMA copies, optimisers, config, data) are set up by ``Trainer.__init__``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import losses
from .data import collate, photos_tensor
from .distributed import all_reduce_gradients
from .loader import device_inputs
from .phases import TrainingError


class PhaseSteps:
    """The phases' step functions and their tensor helpers (a mixin: ``Trainer`` holds the state)."""

    # ---- tensors -------------------------------------------------------------------------------------------------

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(photos N x 3, R's input N x C with the photo's segmentation as labels, S's input) at load_size."""
        return device_inputs(batch, self.encoding, self.device, self.bundle_config.use_semantics)

    def _crop_windows(self, n: int) -> list[tuple[int, int]]:
        span = self.config.load_size - self.config.crop_size + 1
        offs = torch.randint(0, span, (n, 2), generator=self.gen)
        return [(int(a), int(b)) for a, b in offs]

    def _crop(self, t: torch.Tensor, windows: list[tuple[int, int]]) -> torch.Tensor:
        s = self.config.crop_size
        return torch.stack([t[i, :, y:y + s, x:x + s] for i, (y, x) in enumerate(windows)])

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp) if self.device.type == "cuda" \
            else torch.autocast("cpu", enabled=False)

    def _encode(self, encoder: nn.Module, photo: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return encoder(torch.cat([photo, x], dim=1))

    def _update(self, loss: torch.Tensor, names: tuple[str, ...], modules: tuple[nn.Module, ...]) -> None:
        for n in names:
            self.opt[n].zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(modules, self.ctx)
        for n in names:
            self.opt[n].step()

    def _gan_d_step(self, real: list[tuple[torch.Tensor, torch.Tensor]],
                    fake: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        self.D.requires_grad_(True)
        with self._autocast():
            loss = sum(losses.lsgan_d_loss(self.D(ri, rc), self.D(fi.detach(), fc))
                       for (ri, rc), (fi, fc) in zip(real, fake))
        self._update(loss, ("D",), (self.D,))
        self.D.requires_grad_(False)
        return float(loss.detach())

    def _reconstruction(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        vgg = losses.perceptual_loss(self.vgg, out, target, self.feature_weights, self.feature_scale) \
            if c.w_vgg > 0 else out.new_zeros(())
        l1 = losses.l1_loss(out, target)
        total = c.w_vgg * vgg + c.w_l1 * l1
        parts = {"vgg": float(vgg.detach()), "l1": float(l1.detach())}
        if c.w_colour > 0:
            colour = losses.colour_statistics_loss(out, target)
            total = total + c.w_colour * colour
            parts["colour"] = float(colour.detach())
        return total, parts

    # ---- phases --------------------------------------------------------------------------------------------------

    def _prepare_style_distances(self) -> None:
        """Style (Gram) distances between all training photos, computed once and cached in the run folder."""
        if self.style_distances is not None:
            return
        path = self.out / "style_distances.pt"
        names = self.train_set.names
        if path.is_file():
            cached = torch.load(path, weights_only=True)
            if cached["names"] == names and cached["style_size"] == self.config.style_size \
                    and cached.get("features") == self.vgg.weights_name \
                    and cached.get("colour_weight", 0.0) == self.config.style_colour_weight:
                self.style_distances = cached["distances"]
                return
        from tqdm import tqdm
        size = min(self.config.style_size, self.config.load_size)
        start = (self.config.load_size - size) // 2
        grams: list[list[torch.Tensor]] = []
        hists: list[torch.Tensor] = []
        n, chunk = len(self.train_set), 16
        for i in tqdm(range(0, n, chunk), desc="style distances", disable=not self.progress, leave=False):
            photos = np.stack([self.train_set[j]["photo"][start:start + size, start:start + size]
                               for j in range(i, min(n, i + chunk))])
            grams.append([g.cpu() for g in losses.style_grams(self.vgg, photos_tensor(photos).to(self.device))])
            if self.config.style_colour_weight > 0:  # the paper's distance needs no histograms
                hists.append(losses.colour_histograms(torch.from_numpy(photos)))
        stacked = [torch.cat([g[j] for g in grams]) for j in range(len(grams[0]))]
        self.style_distances = losses.appearance_distances(
            losses.pairwise_style_distances(stacked), torch.cat(hists) if hists else None,
            self.config.style_colour_weight)
        if self.ctx.is_main:
            _atomic_save({"names": names, "style_size": self.config.style_size, "features": self.vgg.weights_name,
                          "colour_weight": self.config.style_colour_weight, "distances": self.style_distances}, path)

    def triplets(self, anchors: list[int]) -> tuple[list[int], list[int]]:
        """For each anchor: a positive among its k nearest, a negative among its k farthest (style distance).

        With ``triplet_mining`` "hard", the negative is the far photo whose latent (as last encoded, see
        ``_latent_bank``) is nearest the anchor's, and the positive the near photo whose latent is farthest;
        photos not yet encoded are drawn at random as in the paper.
        """
        d = self.style_distances
        assert d is not None
        n = d.shape[0]
        if n < 3:
            raise TrainingError(f"appearance pretraining needs at least 3 training photos, the dataset has {n}")
        k_near = max(1, min(self.config.triplet_k_near, n - 2))
        k_far = max(1, min(self.config.triplet_k_far, n - 1 - k_near))
        bank = getattr(self, "_latent_bank", None) if self.config.triplet_mining == "hard" else None
        pos, neg = [], []
        for a in anchors:
            row = d[a].clone()
            row[a] = float("inf")
            order = torch.argsort(row, stable=True).tolist()  # nearest first, the anchor itself last
            near, far = order[:k_near], order[:-1][-k_far:]
            p = near[int(torch.randint(len(near), (1,), generator=self.gen))]
            q = far[int(torch.randint(len(far), (1,), generator=self.gen))]
            if bank is not None and bank[1][a]:
                z, seen = bank
                near_seen = [j for j in near if seen[j]]
                far_seen = [j for j in far if seen[j]]
                if near_seen:
                    p = max(near_seen, key=lambda j: float(((z[j] - z[a]) ** 2).sum()))
                if far_seen:
                    q = min(far_seen, key=lambda j: float(((z[j] - z[a]) ** 2).sum()))
            pos.append(p)
            neg.append(q)
        return pos, neg

    def _remember_latents(self, indices: list[int], latents: torch.Tensor) -> None:
        """Keep the latest latent of every photo stage 1 encodes (for hard mining; no extra encoder passes)."""
        if self.config.triplet_mining != "hard":
            return
        n = len(self.train_set)
        if getattr(self, "_latent_bank", None) is None:
            self._latent_bank = (torch.zeros(n, latents.shape[1]), torch.zeros(n, dtype=torch.bool))
        z, seen = self._latent_bank
        z[indices] = latents.detach().float().cpu()
        seen[indices] = True

    @torch.no_grad()
    def _latents_of_all_photos(self) -> torch.Tensor:
        """The encoder's latent of every training photo (its centre square, eval mode), N x latent_size."""
        assert self.E is not None
        self.E.eval()
        latents = []
        for i in range(0, len(self.train_set), 16):
            photo, x, _ = self._inputs(collate([self.train_set[j] for j in range(i, min(len(self.train_set), i + 16))]))
            with self._autocast():
                latents.append(self.E.latent(torch.cat([photo, x], dim=1)).float())
        return torch.cat(latents)

    @torch.no_grad()
    def _standardise_latents(self) -> None:
        """Before stage 2's first step: R standardises latents by those of every training photo (once per run)."""
        if not getattr(self.R, "latent_standardised", False) or self.E is None:
            return
        if getattr(self, "_latents_standardised", False) or self.phase_step > 0:
            return  # set already (the statistics are R's buffers: checkpointed, and copied into the EMA copy)
        z = self._latents_of_all_photos()
        for net in (self.R, self.ema_R.module):
            net.set_latent_statistics(z)
        self._latents_standardised = True

    def step_appearance(self, batch: dict[str, Any]) -> dict[str, float]:
        """Stage 1: Ea alone, triplet loss on latents; positives/negatives chosen by the cached style distance."""
        assert self.E is not None
        pos, neg = self.triplets([int(i) for i in batch["index"]])
        others = collate([self.train_set[i] for i in pos + neg])
        self.E.train()
        photo, x, _ = self._inputs(batch)
        photo_o, x_o, _ = self._inputs(others)
        n = len(pos)
        with self._autocast():
            za = self._encode(self.E, photo, x)[0]
            zo = self._encode(self.E, photo_o, x_o)[0]
            loss = losses.triplet_loss(za, zo[:n], zo[n:], self.config.triplet_margin,
                                       relative=self.config.triplet_relative_margin)
            parts = {"triplet": float(loss.detach())}
            if self.config.w_log_ratio > 0:
                # each photo once: two windows of one photo are apart in latent space but at distance 0
                order = [int(i) for i in batch["index"]] + pos + neg
                first = sorted({i: k for k, i in reversed(list(enumerate(order)))}.values())
                idx = torch.tensor([order[k] for k in first])
                ratio = losses.log_ratio_loss(torch.cat([za, zo])[first], self.style_distances[idx][:, idx])
                loss = loss + self.config.w_log_ratio * ratio
                parts["log_ratio"] = float(ratio.detach())
        self._remember_latents([int(i) for i in batch["index"]] + pos + neg, torch.cat([za, zo]))
        self._update(loss, ("E",), (self.E,))
        self.ema_E.update(self.E)
        return parts

    def step_finetune(self, batch: dict[str, Any]) -> dict[str, float]:
        """Stage 3: the rerender step with Ea trained too, at its lower learning rate."""
        return self.step_rerender(batch, finetune=True)

    def step_rerender(self, batch: dict[str, Any], finetune: bool = False) -> dict[str, float]:
        """Stage 2 (Ea frozen) / stage 3 (Ea finetuned) / the I2I and +Sem baselines (no Ea): R and D on crops."""
        c = self.config
        photo, x, _ = self._inputs(batch)
        windows = self._crop_windows(photo.shape[0])
        x_crop, y_crop = self._crop(x, windows), self._crop(photo, windows)
        self.R.train()
        train_e = finetune and self.E is not None
        with self._autocast():
            z = None
            if self.E is not None:
                self.E.train(train_e)
                self.E.requires_grad_(train_e)
                with torch.set_grad_enabled(train_e):
                    z = self.E.latent(torch.cat([photo, x], dim=1))
            out = self.R(x_crop, z)
        use_gan = c.w_gan > 0  # w_gan 0: pure reconstruction (tests, ablations) without the discriminator's cost
        d_loss = self._gan_d_step([(y_crop, x_crop)], [(out, x_crop)]) if use_gan else 0.0
        with self._autocast():
            g_gan = losses.lsgan_g_loss(self.D(out, x_crop)) if use_gan else out.new_zeros(())
            rec, parts = self._reconstruction(out, y_crop)
            g_loss = c.w_gan * g_gan + rec
        names, modules = ("R",), (self.R,)
        if train_e:
            names, modules = ("R", "E_finetune"), (self.R, self.E)
        self._update(g_loss, names, modules)
        self.ema_R.update(self.R)
        if train_e:
            self.ema_E.update(self.E)
        return {"g": float(g_loss.detach()), "g_gan": float(g_gan.detach()), "d": d_loss, **parts}

    def step_bicycle(self, batch: dict[str, Any]) -> dict[str, float]:
        """+Sem+BaseApp: BicycleGAN (cVAE-GAN + cLR-GAN) with Ea seeing photo + buffer and a cross-cycle term.

        Pairs each item with the next one in the batch as the second view (I2, B2). Ea sees whole images for the
        posterior; the latent regression and cross-cycle encode crops, since R produces crops.
        """
        c = self.config
        assert self.E is not None
        photo, x, _ = self._inputs(batch)
        n = photo.shape[0]
        windows = self._crop_windows(n)
        x1, y1 = self._crop(x, windows), self._crop(photo, windows)
        perm = [(i + 1) % n for i in range(n)]
        x2, y2 = x1[perm], y1[perm]
        self.R.train(), self.E.train()
        self.E.requires_grad_(True)
        with self._autocast():
            mu, logvar = self._encode(self.E, photo, x)
            eps = torch.randn(mu.shape, generator=self.gen).to(mu.device, mu.dtype)
            z1 = mu + eps * torch.exp(0.5 * logvar)
            recon = self.R(x1, z1)  # cVAE-GAN
            z_rand = torch.randn(mu.shape, generator=self.gen).to(mu.device, mu.dtype)
            fake_rand = self.R(x1, z_rand)  # cLR-GAN
            transfer = self.R(x2, z1)  # appearance of view 1 on view 2
        d_loss = self._gan_d_step([(y1, x1), (y1, x1), (y2, x2)],
                                  [(recon, x1), (fake_rand, x1), (transfer, x2)])
        with self._autocast():
            g_gan = (losses.lsgan_g_loss(self.D(recon, x1)) + losses.lsgan_g_loss(self.D(fake_rand, x1))
                     + losses.lsgan_g_loss(self.D(transfer, x2)))
            rec, parts = self._reconstruction(recon, y1)
            kl = losses.kl_divergence(mu.float(), logvar.float())
            z_cycle = self.E.latent(torch.cat([transfer, x2], dim=1))
            cross = self.R(x1, z_cycle)
            cross_rec, _ = self._reconstruction(cross, y1)
            g_loss = c.w_gan * g_gan + rec + c.w_kl * kl + c.w_cross_cycle * cross_rec
        self._update(g_loss, ("R", "E"), (self.R, self.E))
        # latent regression (cLR-GAN): only R is pushed to make z recoverable, as in BicycleGAN
        with self._autocast():
            self.E.requires_grad_(False)
            z_back = self.E.latent(torch.cat([self.R(x1, z_rand), x1], dim=1))
            latent_loss = c.w_latent * (z_back.float() - z_rand.float()).abs().mean()
        self._update(latent_loss, ("R",), (self.R,))
        self.E.requires_grad_(True)
        self.ema_R.update(self.R)
        self.ema_E.update(self.E)
        return {"g": float(g_loss.detach()), "g_gan": float(g_gan.detach()), "d": d_loss, "kl": float(kl.detach()),
                "cross": float(cross_rec.detach()), "latent": float(latent_loss.detach()), **parts}

    def step_semantic(self, batch: dict[str, Any]) -> dict[str, float]:
        """S(B) -> the photo's labels, cross entropy masked on transient classes and unknown pixels."""
        _, _, x_plain = self._inputs(batch)
        labels = torch.from_numpy(np.ascontiguousarray(batch["segmentation"])).long()[:, None].float()
        windows = self._crop_windows(x_plain.shape[0])
        x_crop = self._crop(x_plain, windows)
        y_crop = self._crop(labels.to(self.device), windows)[:, 0].long()
        self.S.train()
        ignore = (*self.train_set.classes.transient_ids, 255)
        with self._autocast():
            loss = losses.masked_cross_entropy(self.S(x_crop), y_crop, ignore)
        self._update(loss, ("S",), (self.S,))
        return {"semantic_ce": float(loss.detach())}


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


__all__ = ["PhaseSteps"]
