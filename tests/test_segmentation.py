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


def test_segmenting_flushes_subnormal_floats_and_keeps_the_labels(shared_dir, segmenter):
    """The real network labels inside the flushed mode (x86's subnormal microcode is several times slower), gives
    the labels it gives with subnormals kept, and the thread's mode is torch's default again afterwards."""
    with Image.open(shared_dir / "data" / "sacre_coeur" / "sacre_coeur_A.jpg") as im:
        im.thumbnail((320, 320))
        photo = np.asarray(im.convert("RGB"))
    subnormal = torch.tensor([1e-40], dtype=torch.float32)
    seen = []
    predict = segmenter._predict

    def spy(image):
        seen.append(float(subnormal * 1.5))
        return predict(image)

    kept = predict(photo)
    segmenter._predict = spy
    try:
        flushed = segmenter.segment(photo)
    finally:
        del segmenter._predict
    if torch.set_flush_denormal(False):  # a CPU that can flush at all (x86 with SSE3)
        assert seen == [0.0]
    assert float(subnormal * 1.5) > 0, "the mode is restored after segment()"
    assert (flushed == kept).mean() > 0.999


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


# --- the ADE20K scene parser (MIT CSAIL mobilenetv2dilated-c1_deepsup) ------------------------------------------

def _ade20k_files(folder: Path, net=None, winner: str | None = None) -> Path:
    """Weights in the authors' file layout, made here with the same architecture (their files are not shipped)."""
    from rerender.training.segmentation.ade20k_labels import ADE20K_NAMES
    from rerender.training.segmentation.ade20k_net import SceneParser

    torch.manual_seed(0)
    net = net or SceneParser()
    if winner is not None:  # a head that votes for one ADE20K class everywhere
        with torch.no_grad():
            net.decoder.conv_last.weight.zero_()
            net.decoder.conv_last.bias.fill_(-5.0)
            net.decoder.conv_last.bias[ADE20K_NAMES.index(winner)] = 5.0
    folder.mkdir(parents=True, exist_ok=True)
    enc = {k: v for k, v in net.encoder.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(enc, folder / "encoder_epoch_20.pth")  # as if saved before BatchNorm counted batches
    torch.save(net.decoder.state_dict(), folder / "decoder_epoch_20.pth")
    return folder


def test_ade20k_weights_load_strictly_and_keep_the_checkpoint_names(tmp_path):
    from rerender.training.segmentation.ade20k_segmenter import Ade20kSegmenter, build_scene_parser

    folder = _ade20k_files(tmp_path / "ade")
    enc = torch.load(folder / "encoder_epoch_20.pth", weights_only=True)
    dec = torch.load(folder / "decoder_epoch_20.pth", weights_only=True)
    assert "features.17.conv.6.weight" in enc and "features.1.conv.3.weight" in enc and len(enc) > 200
    assert {"cbr.0.weight", "conv_last.weight", "conv_last_deepsup.bias"} <= set(dec)
    net = build_scene_parser(enc, dec)
    assert all(torch.equal(net.encoder.state_dict()[k], v) for k, v in enc.items())
    # output stride 8 (dilated, not strided, last stages), logits back at the input size
    feats = net.encoder(torch.zeros(1, 3, 64, 96))
    assert feats[-1].shape == (1, 320, 8, 12) and feats[-2].shape == (1, 160, 8, 12)
    seg = Ade20kSegmenter(folder, short_side=64, max_side=128)
    assert seg.logits(np.zeros((48, 80, 3), np.uint8)).shape == (1, 150, 48, 80)

    bad = dict(dec)
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(SegmentationError, match="do not fit the decoder"):
        build_scene_parser(enc, bad)
    with pytest.raises(SegmentationError, match="do not fit the encoder"):
        build_scene_parser({k: v for k, v in enc.items() if "features.3." not in k}, dec)
    with pytest.raises(SegmentationError, match="do not fit the decoder"):
        build_scene_parser(enc, {**dec, "conv_last.weight": torch.zeros(19, 80, 1, 1)})


@pytest.mark.parametrize("ade_class, landmark, transient", [("sculpture", "statue", False),
                                                             ("tower", "tower", False),
                                                             ("fountain", "fountain", False),
                                                             ("car", "vehicle", True),
                                                             ("person", "person", True),
                                                             ("microwave", "object", False)])
def test_ade20k_classes_fold_onto_the_landmark_table(tmp_path, ade_class, landmark, transient):
    from rerender.bridge.classes import LANDMARK_CLASSES
    from rerender.training.segmentation.ade20k_segmenter import Ade20kSegmenter

    seg = Ade20kSegmenter(_ade20k_files(tmp_path / "ade", winner=ade_class), short_side=64, max_side=96)
    ids = seg.segment(np.full((40, 60, 3), 128, np.uint8))
    assert seg.classes is LANDMARK_CLASSES and ids.shape == (40, 60)
    assert (ids == LANDMARK_CLASSES.id_of(landmark)).all()
    assert LANDMARK_CLASSES[LANDMARK_CLASSES.id_of(landmark)].transient is transient


def test_landmark_table_and_fold_are_complete():
    from rerender.bridge.classes import LANDMARK_CLASSES
    from rerender.training.segmentation.ade20k_labels import ADE20K_NAMES, landmark_mapping

    mapping = landmark_mapping(LANDMARK_CLASSES)
    assert len(ADE20K_NAMES) == len(set(ADE20K_NAMES)) == len(mapping) == 150
    assert {LANDMARK_CLASSES[i].name for i in mapping} == {c.name for c in LANDMARK_CLASSES}  # every row used
    assert {c.name for c in LANDMARK_CLASSES if c.transient} == {"person", "vehicle", "animal"}
    for static in ("building", "tower", "statue", "monument", "fountain", "fence", "sky"):
        assert not LANDMARK_CLASSES[LANDMARK_CLASSES.id_of(static)].transient
    assert len({c.color for c in LANDMARK_CLASSES}) == len(LANDMARK_CLASSES)


def test_ade20k_is_the_default_where_its_weights_are(tmp_path, monkeypatch, espnet_dir):
    from rerender.training.segmentation import choose_segmenter, load_segmenter
    from rerender.training.segmentation.ade20k_segmenter import Ade20kSegmenter

    monkeypatch.setenv("RERENDER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "segmentation").mkdir(parents=True)
    assert choose_segmenter()[0] == "espnet_p2_q8"  # no ADE20K weights anywhere: the fallback, with the reason
    assert "falling back to ESPNet" in choose_segmenter()[1]
    assert choose_segmenter(espnet_dir)[0] == "espnet_p2_q8"
    _ade20k_files(tmp_path / "cache" / "segmentation" / "ade20k-mobilenetv2dilated-c1_deepsup")
    assert choose_segmenter()[0] == "ade20k"
    assert isinstance(load_segmenter(), Ade20kSegmenter)
    assert isinstance(load_segmenter(espnet_dir), EspnetSegmenter)  # an explicit ESPNet path still wins
    assert isinstance(load_segmenter(tmp_path / "cache" / "segmentation"), Ade20kSegmenter)


def test_missing_ade20k_weights_say_where_to_get_them(tmp_path, monkeypatch):
    from rerender.training.segmentation.ade20k_segmenter import resolve_ade20k_weights

    monkeypatch.setenv("RERENDER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SegmentationError, match="sceneparsing.csail.mit.edu.*publish no checksums"):
        resolve_ade20k_weights()
    with pytest.raises(SegmentationError, match="two SHA-256"):
        resolve_ade20k_weights(sha256="abc")
