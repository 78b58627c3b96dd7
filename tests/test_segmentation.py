"""The ESPNet segmenter: real weights (strict load), real Sacré-Cœur photos, and the plug-in interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rerender.bridge.classes import DEFAULT_CLASSES, UNKNOWN, ClassTable, SemanticClass
from rerender.training.segmentation import RemappedSegmenter, SegmentationError, Segmenter, resolve_weights
from rerender.training.segmentation.espnet import ESPNet, ESPNetC
from rerender.training.segmentation.espnet_segmenter import EspnetSegmenter, build_network


@pytest.fixture(scope="module")
def espnet_dir(shared_dir: Path) -> Path:
    d = shared_dir / "models" / "espnet"
    if not (d / "espnet_p2_q8_cityscapes.pth").is_file():
        pytest.skip(f"ESPNet weights not found in {d} (they come from github.com/sacmehta/ESPNet)")
    return d


@pytest.fixture(scope="module")
def segmenter(espnet_dir: Path) -> EspnetSegmenter:
    return EspnetSegmenter(espnet_dir, max_side=384)


@pytest.mark.parametrize("checkpoint, cls", [("espnet_p2_q8", ESPNet), ("espnetc_p2_q8", ESPNetC)])
def test_real_checkpoints_load_with_strict_key_matching(espnet_dir, checkpoint, cls):
    from rerender.training.segmentation import CHECKPOINTS

    ckpt = CHECKPOINTS[checkpoint]
    state = torch.load(espnet_dir / ckpt.filename, map_location="cpu", weights_only=True)
    net = build_network(ckpt.architecture, state)
    assert isinstance(net, cls)
    # the 2018 files predate BatchNorm's num_batches_tracked buffer (torch fills it in); every other key must match
    own = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(own) == set(state)
    assert len(state) > 100
    assert all(torch.equal(own[k], state[k]) for k in state)


def test_output_resolution_of_both_variants():
    x = torch.zeros(1, 3, 64, 96)
    assert ESPNet().eval()(x).shape == (1, 20, 64, 96)      # full ESPNet: input resolution
    assert ESPNetC().eval()(x).shape == (1, 20, 8, 12)      # ESPNet-C: 1/8


def test_wrong_weights_are_refused_clearly(tmp_path):
    bad = tmp_path / "espnet_p2_q8_cityscapes.pth"
    torch.save(ESPNetC().state_dict(), bad)  # encoder weights where the full network is expected
    with pytest.raises(SegmentationError, match="do not fit espnet"):
        EspnetSegmenter(bad)
    with pytest.raises(SegmentationError, match="not found"):
        resolve_weights(tmp_path / "missing.pth")


def test_sacre_coeur_is_mostly_sky_and_building(shared_dir, segmenter):
    photos = sorted((shared_dir / "data" / "sacre_coeur").glob("*.jpg"))[:6]
    assert photos, "no Sacré-Cœur photos"
    counts = np.zeros(256, np.int64)
    for p in photos:
        with Image.open(p) as im:
            im.thumbnail((480, 480))
            ids = segmenter.segment(np.asarray(im.convert("RGB")))
        assert ids.shape == (im.height, im.width) and ids.dtype == np.uint8
        counts += np.bincount(ids.ravel(), minlength=256)
    frac = counts / counts.sum()
    known = np.argsort(frac[:len(DEFAULT_CLASSES)])[::-1]
    top2 = {DEFAULT_CLASSES[int(i)].name for i in known[:2]}
    assert top2 == {"building", "sky"}, f"dominant classes {top2}"
    assert frac[DEFAULT_CLASSES.id_of("building")] > 0.3
    assert frac[DEFAULT_CLASSES.id_of("sky")] > 0.1
    road_car = frac[DEFAULT_CLASSES.id_of("road")] + frac[DEFAULT_CLASSES.id_of("car")]
    assert road_car < 0.1


def test_bad_photo_input_is_refused(segmenter):
    with pytest.raises(SegmentationError, match="uint8 H x W x 3"):
        segmenter.segment(np.zeros((32, 32), np.uint8))
    with pytest.raises(SegmentationError, match="uint8 H x W x 3"):
        segmenter.segment(np.zeros((32, 32, 3), np.float32))


class _HalfAndHalf(Segmenter):
    """A stand-in 'ADE20K' model: class 2 ('sky' in its table) on the top half, 7 ('tree') below."""

    classes = ClassTable([SemanticClass(i, f"ade{i}", (i, i, i), False) for i in range(150)])
    name = "half"

    def _predict(self, photo):
        out = np.full(photo.shape[:2], 7, np.uint8)
        out[: photo.shape[0] // 2] = 2
        return out


def test_another_label_space_plugs_in_through_a_mapping():
    seg = RemappedSegmenter(_HalfAndHalf(), {2: DEFAULT_CLASSES.id_of("sky"), 7: DEFAULT_CLASSES.id_of("vegetation")},
                            DEFAULT_CLASSES)
    ids = seg.segment(np.zeros((20, 30, 3), np.uint8))
    assert (ids[:10] == DEFAULT_CLASSES.id_of("sky")).all()
    assert (ids[10:] == DEFAULT_CLASSES.id_of("vegetation")).all()
    unmapped = RemappedSegmenter(_HalfAndHalf(), {2: 10}, DEFAULT_CLASSES).segment(np.zeros((20, 30, 3), np.uint8))
    assert (unmapped[10:] == UNKNOWN).all()
