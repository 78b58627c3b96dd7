"""Deep buffers (or their wire arrays) -> network input, and network output -> pixels, in torch on the model's device.

Why lookup tables: every input channel is a function of one small integer per pixel. Wire colors are 8-bit sRGB
(256 values), buffer colors and wire depths are float16 (65536 bit patterns), labels and masks are bytes. So the
float math of :class:`~rerender.backend.encoding.InputEncoding` (``np.power`` for sRGB, divisions for inverse depth,
a palette lookup) is run once per possible value when the tables are built, with the very numpy functions that
define the encoding, and a frame is then one gather per channel: the encoded numbers are bit-identical to the
numpy definition by construction, on any device. Only float32 depth (a training buffer, or a client that sends
float32) takes arithmetic, written so that on the CPU it rounds exactly as numpy does.

Why the mask can be left out: in a buffer that follows the contract, an undrawn pixel has depth +inf, so the mask
is ``isfinite(depth)``; a client may skip sending it (docs/protocol.md).

Replicate padding to the U-Net's multiple is applied to the integer index planes before the gather, which is the
same as padding the encoded planes (the encoding is per pixel) and costs nothing extra.

Why pairs and bands (the server's wire path on the CPU, :meth:`TensorEncoder.encode`): a gather costs per element,
not per byte (torch's ``index_select`` runs on one core). Two neighbouring pixels of an 8-bit plane, read as one
little-endian 16-bit code, index a 65536-entry table of float32 *pairs* (viewed as float64): one gather writes two
pixels, so an 8-bit channel costs half the gathers (a band's interleaved colors are first copied to planes, where a
pixel pair is one 16-bit code to read). The frame is cut into row bands (indices in a small scratch that stays in
cache, then the gathers), spread over the row-band threads, each running its torch ops on one OpenMP thread
(:mod:`.omp_teams`: otherwise every band thread starts a team of all the cores, and two bands side by side were no
faster than one). Output quantisation (:meth:`TensorEncoder.to_uint8`) runs in bands on those threads too: five
in-place passes on cache-resident rows, and the rounding is float32's own (adding 2**23 rounds to the nearest
integer, ties to even, exactly as ``np.rint``), so the 8-bit value is the low byte of the float: no cast pass.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from rerender.bridge.buffers import row_bands
from rerender.bridge.classes import UNKNOWN
from rerender.bridge.colors import linear_to_srgb
from rerender.bridge.protocol import _SRGB8_TO_LINEAR16

from . import omp_teams

if TYPE_CHECKING:
    from .encoding import InputEncoding

_ALL_FLOAT16 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
_CODES16 = np.arange(65536)
_LITTLE_ENDIAN = sys.byteorder == "little"  # the pair tables read two bytes as one little-endian code
BAND_PIXELS = 2**19  # pixels of a row band: 4 bands of 273 rows at 1080p (measured best on 2 cores), 1 at 512²
MAGIC_ROUND = 8388608.0  # 2**23: x + 2**23 (0 <= x < 2**22) rounds x to an integer, ties to even, in float32


def _pair_table(table: np.ndarray) -> np.ndarray:
    """A 256-entry float32 table as a 65536-entry table of float32 pairs viewed as float64: code lo | hi << 8 ->
    (table[lo], table[hi]), the values of two neighbouring pixels (the lower address is the first one)."""
    pairs = np.empty((65536, 2), np.float32)
    pairs[:, 0], pairs[:, 1] = table[_CODES16 & 255], table[_CODES16 >> 8]
    return pairs.view(np.float64).reshape(-1)


def _color16_table() -> np.ndarray:
    """float16 linear color bits -> encoded sRGB channel value; one extra entry (-1) for undrawn pixels."""
    with np.errstate(invalid="ignore"):  # NaN bit patterns encode to NaN, as linear_to_srgb does for them
        return (linear_to_srgb(_ALL_FLOAT16) * 2.0 - 1.0).astype(np.float32)


class TensorEncoder:
    """The tables of one :class:`InputEncoding` on one device, and the gathers that use them."""

    def __init__(self, encoding: "InputEncoding", device: str | torch.device) -> None:
        self.encoding = encoding
        self.device = torch.device(device)
        color16 = _color16_table()
        color8 = color16[_SRGB8_TO_LINEAR16.view(np.uint16)]
        depth16 = encoding.encode_depth(_ALL_FLOAT16)
        if not (color8[0] == color16[0] == -1.0 and depth16[0] == encoding.empty_depth):
            raise AssertionError("undrawn pixels must encode as empty through code 0")
        labels = encoding._label_lut().T  # label_channels x 256
        photo = np.arange(256, dtype=np.uint8).astype(np.float32) / 127.5 - 1.0
        put = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)  # noqa: E731
        self.color16, self.color8, self.depth16, self.photo = put(color16), put(color8), put(depth16), put(photo)
        self.labels = [put(row) for row in labels]
        pairs = lambda a: torch.from_numpy(_pair_table(a)).to(self.device)  # noqa: E731
        self.color8_pairs = pairs(color8)
        self.mask_pairs = pairs(np.array([-1.0, 1.0] + [np.nan] * 254, np.float32))  # drawn 0/1 -> -1/+1
        # pair tables of the label channels only for the palette encoding (3 channels); onehot has up to 255
        self.label_pairs = [pairs(row) for row in labels] if len(labels) <= 4 else None
        self.num_classes = encoding.num_classes
        scalar = lambda v: torch.tensor(np.float32(v), device=self.device)  # noqa: E731
        e = encoding
        self._one, self._far, self._empty = scalar(1.0), scalar(e.far), scalar(e.empty_depth)
        self._inv_far, self._inv_span = scalar(1.0 / e.far), scalar(1.0 / e.near - 1.0 / e.far)
        self._lin_span = scalar(e.far - e.near)

    # ---- checks -------------------------------------------------------------------------------------------------

    def check_labels(self, label: torch.Tensor) -> None:
        """ValueError when a class id is outside the bundle's table (255 = unknown is fine).

        One uint8 add and a max: adding 1 wraps unknown (255) to 0 and class k to k + 1, so the labels are valid
        exactly when the maximum is at most the number of classes; only a bad buffer pays for the histogram that
        names the ids."""
        if not label.numel() or int(torch.add(label, 1).max()) <= self.num_classes:
            return
        counts = torch.bincount(label.reshape(-1), minlength=256)
        bad = counts[self.num_classes:UNKNOWN].nonzero().reshape(-1)
        if bad.numel():
            ids = (bad + self.num_classes).tolist()
            raise ValueError(f"label ids {ids} are outside the bundle's {self.num_classes} classes (and not "
                             f"{UNKNOWN} = unknown): the buffer was labelled with another class table")

    # ---- encoding -----------------------------------------------------------------------------------------------

    def channels(self, with_labels: bool) -> int:
        return self.encoding.channels(with_labels)

    def encode(self, color: torch.Tensor, depth: torch.Tensor, label: torch.Tensor | None,
               mask: torch.Tensor | None, *, with_labels: bool = True, multiple: int = 1,
               photo: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """N x H x W arrays on the device -> float32 N x C x Hp x Wp (Hp, Wp: up to ``multiple``, replicated).

        ``color`` is uint8 sRGB (wire) or float16 linear (a DeepBuffer), N x H x W x 3; ``depth`` float16 or
        float32; ``label`` uint8 (needed when ``with_labels``); ``mask`` bool/uint8, or None to take it from depth.
        ``photo`` (uint8 N x H x W x 3) puts 3 photo channels first, as the appearance encoder takes them.
        ``out`` is reused when it has the right shape (a server's input buffer: no fresh 67 MB per 1080p frame).
        Labels are not checked here (see :meth:`check_labels`): the caller checks them where it is cheapest.
        """
        n, h, w = depth.shape
        hp, wp = h + (-h) % multiple, w + (-w) % multiple
        if color.dtype not in (torch.uint8, torch.float16):
            raise ValueError(f"color must be uint8 sRGB or float16 linear, got {color.dtype}")
        if with_labels and label is None:
            raise ValueError("with_labels needs the label pass")
        first = 0 if photo is None else 3
        shape = (n, first + self.channels(with_labels), hp, wp)
        if out is None or tuple(out.shape) != shape or out.dtype != torch.float32 or out.device != self.device \
                or not out.is_contiguous():
            out = torch.empty(shape, dtype=torch.float32, device=self.device)
        if self.device.type == "cpu" and photo is None and color.dtype == torch.uint8 \
                and depth.dtype == torch.float16 and wp == w and w % 2 == 0 and _LITTLE_ENDIAN:
            for i in range(n):  # CPU only: on a GPU (not measured here) the one-gather-per-channel path below
                self._encode_wire_frame(color[i].contiguous(), depth[i].contiguous(),
                                        None if label is None else label[i].contiguous(),
                                        None if mask is None else mask[i], with_labels, out[i])
            return out
        drawn = torch.isfinite(depth) if mask is None else mask != 0
        masked = _padded(drawn.view(torch.uint8), hp, wp, torch.uint8).bitwise_xor_(1)  # 1 where no point was drawn
        idx = torch.empty((hp, wp), dtype=torch.int64, device=self.device)
        keep = torch.empty((hp, wp), dtype=torch.int64, device=self.device)
        table = self.color8 if color.dtype == torch.uint8 else self.color16
        codes = color if color.dtype == torch.uint8 else color.view(torch.int16)
        for i in range(n):
            plane = out[i]
            if photo is not None:
                for k in range(3):
                    self._gather(self.photo, _pad_into(idx, photo[i, :, :, k]), plane[k])
            # One AND per channel applies the mask and reads int16 bits as unsigned codes: keep is 0xFFFF where a
            # point was drawn, 0 where not, and code 0 (sRGB 0, float16 +0.0) encodes to exactly the empty value
            # of every channel (-1 for color, empty_depth for depth, which is not > 0).
            keep.copy_(masked[i]).sub_(1).bitwise_and_(0xFFFF)
            for k in range(3):
                _pad_into(idx, codes[i, :, :, k]).bitwise_and_(keep)
                self._gather(table, idx, plane[first + k])
            if depth.dtype == torch.float16:  # wire depth: one gather
                _pad_into(idx, depth[i].view(torch.int16)).bitwise_and_(keep)
                self._gather(self.depth16, idx, plane[first + 3])
            else:
                self._depth_arithmetic(depth[i], masked[i], hp, wp, plane[first + 3])
            c = first + 4
            if with_labels:
                _pad_into(idx, label[i])
                for k, lab in enumerate(self.labels):
                    self._gather(lab, idx, plane[c + k])
                c += len(self.labels)
            if self.encoding.mask_channel:
                plane[c].copy_(masked[i]).mul_(-2.0).add_(1.0)  # exactly +1 drawn, -1 empty
        return out

    def _encode_wire_frame(self, color: torch.Tensor, depth: torch.Tensor, label: torch.Tensor | None,
                           mask: torch.Tensor | None, with_labels: bool, out: torch.Tensor) -> None:
        """One frame of wire arrays (uint8 sRGB color, float16 depth; an even width that needs no padding) ->
        ``out`` (C x Hp x W), in row bands; the padding rows are copies of the last encoded row.

        Per band: the drawn plane (from the mask frame, or the depth codes' exponent bits: finite = drawn), then
        int32 indices and gathers, two neighbouring pixels at a time for the 8-bit planes (the pairs of drawn
        bits index the mask channel's pair table, and times 255 they are the byte masks that zero undrawn color
        codes: code 0 encodes as empty), one pixel at a time for the float16 depth codes.
        """
        h, w = depth.shape
        dev = self.device
        pairs16 = out.view(torch.float64)  # C x Hp x W/2: two neighbouring pixels of a plane
        d = 4
        c = d + (len(self.labels) if with_labels else 0)
        dbits = depth.view(torch.int16)

        def band(r0: int, r1: int) -> None:
            drawn = torch.empty((r1 - r0, w), dtype=torch.uint8, device=dev)
            if mask is None:  # finite depth: the exponent bits are not all ones
                torch.ne(torch.bitwise_and(dbits[r0:r1], 0x7C00), 0x7C00, out=drawn.view(torch.bool))
            else:
                m = mask[r0:r1]
                torch.ne(m.view(torch.uint8) if m.dtype == torch.bool else m, 0, out=drawn.view(torch.bool))
            keep = torch.empty((r1 - r0, w // 2), dtype=torch.int32, device=dev)
            keep.copy_(drawn.view(torch.uint16))  # 0x0000, 0x0001, 0x0100 or 0x0101
            if self.encoding.mask_channel:
                self._gather(self.mask_pairs, keep, pairs16[c, r0:r1])
            keep.mul_(255)  # byte masks: 0xFF where drawn
            idx = torch.empty_like(keep)
            didx = torch.empty((r1 - r0, w), dtype=torch.int32, device=dev)
            planar = torch.empty((3, r1 - r0, w), dtype=torch.uint8, device=dev)
            planar.copy_(color[r0:r1].permute(2, 0, 1))  # one pass; then a plane's pixel pairs are its 16-bit codes
            codes = planar.view(torch.uint16)
            for k in range(3):
                idx.copy_(codes[k]).bitwise_and_(keep)
                self._gather(self.color8_pairs, idx, pairs16[k, r0:r1])
            didx.copy_(dbits[r0:r1].view(torch.uint16))
            if mask is not None:  # with a mask frame, a finite depth may still be undrawn: code 0 is empty
                didx.mul_(drawn)
            self._gather(self.depth16, didx, out[3, r0:r1])
            if with_labels and self.label_pairs is not None:
                idx.copy_(label[r0:r1].view(torch.uint16))
                for k, table in enumerate(self.label_pairs):
                    self._gather(table, idx, pairs16[d + k, r0:r1])
            elif with_labels:
                didx.copy_(label[r0:r1])
                for k, table in enumerate(self.labels):
                    self._gather(table, didx, out[d + k, r0:r1])

        run_bands(h, w, band)
        if out.shape[-2] > h:  # replicate padding: the encoding is per pixel, so the last row's encoding repeats
            out[:, h:] = out[:, h - 1:h]

    def encode_photos(self, photo: torch.Tensor) -> torch.Tensor:
        """uint8 sRGB N x H x W x 3 on the device -> float32 N x 3 x H x W in [-1, 1] (``encode_photos``'s numbers)."""
        n, h, w, _ = photo.shape
        out = torch.empty((n, 3, h, w), dtype=torch.float32, device=self.device)
        idx = torch.empty((h, w), dtype=torch.int64, device=self.device)
        for i in range(n):
            for k in range(3):
                self._gather(self.photo, _pad_into(idx, photo[i, :, :, k]), out[i, k])
        return out

    def _depth_arithmetic(self, depth: torch.Tensor, masked: torch.Tensor, hp: int, wp: int,
                          out: torch.Tensor) -> None:
        """float32 depth: numpy's float32 rounding step by step (its python scalars become float32 before each
        op too), so the CPU result is bit-identical to ``InputEncoding.encode_depth``."""
        d = _padded(depth.float(), hp, wp, torch.float32)
        valid = torch.isfinite(d) & (d > 0) & (masked == 0)
        safe = torch.where(valid, d, self._far)
        if self.encoding.depth_mode == "inverse":
            t = torch.div(self._one, safe).sub_(self._inv_far).div_(self._inv_span)
        else:
            t = torch.sub(self._far, safe).div_(self._lin_span)
        t = t.clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)
        torch.where(valid, t, self._empty, out=out)

    @staticmethod
    def _gather(table: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> None:
        """out = table[idx] for one contiguous plane, written in place."""
        torch.index_select(table, 0, idx.view(-1), out=out.view(-1))

    # ---- output -------------------------------------------------------------------------------------------------

    @staticmethod
    def to_uint8(y: torch.Tensor, *, in_place: bool = False) -> torch.Tensor:
        """N x 3 x H x W in [-1, 1] -> uint8 N x H x W x 3 on the same device (exactly ``decode_rgb``).

        ``in_place=True`` lets a float32 ``y`` that is not needed afterwards (the network's output) be overwritten,
        sparing a copy of the frame.
        """
        a = y if (in_place and y.dtype == torch.float32) else y.float().clone() if y.dtype == torch.float32 \
            else y.float()
        n, _, h, w = a.shape
        out = torch.empty((n, h, w, 3), dtype=torch.uint8, device=a.device)
        if a.device.type != "cpu" or a.stride(-1) != 1 or not _LITTLE_ENDIAN:
            a.clamp_(-1.0, 1.0).nan_to_num_(nan=-1.0).add_(1.0).mul_(127.5).round_()  # clamp keeps NaN: -1 here
            out.permute(0, 3, 1, 2).copy_(a)  # whole numbers in [0, 255]: the cast is exact
            return out
        for i in range(n):
            _quantise_frame(a[i], out[i])
        return out

    @staticmethod
    def to_float16(y: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W in [-1, 1] -> float16 sRGB in [0, 1], N x H x W x 3: the network's own values, unquantised."""
        return ((y.float() + 1) / 2).clamp_(0, 1).to(torch.float16).permute(0, 2, 3, 1).contiguous()


def _quantise_frame(a: torch.Tensor, out: torch.Tensor) -> None:
    """float32 3 x H x W (rows contiguous; overwritten) -> uint8 H x W x 3, exactly ``decode_rgb``, in row bands.

    Per value: NaN -> -1, then fl(fl(x + 1) clamped to [0, 2]) * 127.5, which equals the reference's
    fl(clip(x, -1, 1) + 1) * 127.5 because float rounding is monotonic and fl(-1 + 1) = 0, fl(1 + 1) = 2; adding
    2**23 then rounds it to an integer k with ties to even (``np.rint``), and k is the float's low byte.
    """
    h = a.shape[1]

    def band(r0: int, r1: int) -> None:
        v = a[:, r0:r1]
        v.nan_to_num_(nan=-1.0).add_(1.0).clamp_(0.0, 2.0).mul_(127.5).add_(MAGIC_ROUND)
        low = v.view(torch.uint8)[..., ::4]  # 3 x rows x W: the low byte of every float
        torch.stack((low[0], low[1], low[2]), dim=-1, out=out[r0:r1])

    # Elementwise passes: on the band threads when each band gets one OpenMP thread (omp_teams), else in the
    # caller's thread, where torch's own team shares them (oversubscribed band threads were slower).
    run_bands(h, a.shape[-1], band, threads=omp_teams.AVAILABLE)


# ---- row bands -----------------------------------------------------------------------------------------------


def run_bands(rows: int, width: int, work: Callable[[int, int], None], *, threads: bool = True) -> None:
    """``work(r0, r1)`` over row bands of about ``BAND_PIXELS`` pixels covering ``range(rows)``, spread over the
    row-band threads (``bridge.buffers.row_bands``; a 512² frame is one band, run in the caller's thread: every
    torch call costs a few microseconds of dispatch).

    Why bands on threads: a band's scratch indices and output rows stay in cache between its calls, and torch's
    ``index_select`` (the gathers, most of the work) runs on one core, so bands side by side use the others."""
    step = max(8, BAND_PIXELS // max(1, width))
    if not threads or rows <= step:  # one band: torch's own team shares its elementwise passes
        for r0 in range(0, rows, step):
            work(r0, min(r0 + step, rows))
        return
    inference = torch.is_inference_mode_enabled()  # thread-local in torch: the band threads take the caller's

    def in_callers_mode(r0: int, r1: int) -> None:
        with torch.inference_mode(inference), omp_teams.single_omp_thread():  # bands side by side, one core each
            work(r0, r1)

    row_bands(rows, in_callers_mode, band_rows=step)


def _padded(src: torch.Tensor, hp: int, wp: int, dtype: torch.dtype) -> torch.Tensor:
    """``src`` (..., H, W) converted to ``dtype`` and padded to (..., hp, wp) by replicating the last row/column."""
    out = torch.empty((*src.shape[:-2], hp, wp), dtype=dtype, device=src.device)
    return _pad_into(out, src)


def _pad_into(out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Write ``src`` (..., H, W) into the top-left of ``out`` (..., Hp, Wp) and replicate its last row/column."""
    h, w = src.shape[-2:]
    hp, wp = out.shape[-2:]
    out[..., :h, :w] = src
    if hp > h:
        out[..., h:, :w] = out[..., h - 1:h, :w]
    if wp > w:
        out[..., :, w:] = out[..., :, w - 1:w]
    return out


_ENCODERS: dict[tuple[str, str], TensorEncoder] = {}


def encoder_for(encoding: "InputEncoding", device: str | torch.device) -> TensorEncoder:
    """The (cached) tables of ``encoding`` on ``device``; keyed by the encoding's JSON, so an edited encoding gets
    new tables."""
    key = (str(torch.device(device)), json.dumps(encoding.to_json(), sort_keys=True))
    enc = _ENCODERS.get(key)
    if enc is None:
        if len(_ENCODERS) > 16:
            _ENCODERS.clear()
        enc = _ENCODERS[key] = TensorEncoder(encoding, device)
    return enc


def stack_numpy(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """A CPU tensor of N same-shaped arrays; a single array is viewed, not copied."""
    if len(arrays) == 1:
        return as_tensor(arrays[0])[None]
    return torch.from_numpy(np.stack(arrays))


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` that also takes read-only arrays (received wire frames): nothing here writes into its
    inputs, so torch's warning about them is silenced rather than paid for with a copy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(a))


__all__ = ["TensorEncoder", "as_tensor", "encoder_for", "stack_numpy"]
