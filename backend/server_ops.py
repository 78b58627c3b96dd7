"""The server's operations as one table: name, parameters, arrays, whether it needs a model, and what computes it.

Adding an op means adding a row to ``OP_TABLE`` (and its name to ``bridge.protocol.OPS``, which a test keeps equal
to the table). Two kinds of rows:
  * answered by the I/O thread (``answer``): hello, echo, stats, appearances. They never touch the device, so they
    stay fast while it is busy;
  * computed by the device worker (``prepare`` + ``compute``): rerender, encode, segment. ``prepare`` is the host
    work on one request (wire arrays -> validated inputs), run on the worker's host thread while the previous
    batch computes; ``compute`` runs one batch of prepared requests of the same ``batch_key`` on the device.

Unknown parameters and unknown arrays are refused per op (``bad_params``): a typo never passes silently, and a
request cannot make the server hold arrays it will never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from rerender.bridge.errors import CODE_BAD_PARAMS, ProtocolError
from rerender.bridge import protocol
from rerender.bridge.protocol import BUFFER_ARRAYS, Message, buffer_from_wire, check_latent

if TYPE_CHECKING:  # pragma: no cover
    from .server import Server


@dataclass(frozen=True)
class Param:
    """One request parameter: its default and the values it may take."""

    name: str
    default: Any
    choices: tuple = ()
    kind: type = object
    bounds: tuple[int, int] | None = None  # inclusive range of an int parameter

    def check(self, op: str, value: Any) -> Any:
        if self.kind is bool and not isinstance(value, bool):
            raise ProtocolError(CODE_BAD_PARAMS, f"{op}: {self.name!r} must be true or false, got {value!r}")
        if self.bounds is not None and (isinstance(value, bool) or not isinstance(value, int)
                                        or not self.bounds[0] <= value <= self.bounds[1]):
            raise ProtocolError(CODE_BAD_PARAMS, f"{op}: {self.name!r} must be an integer from {self.bounds[0]} "
                                                 f"to {self.bounds[1]}, got {str(value)[:40]!r}")
        if self.choices and value not in self.choices:
            raise ProtocolError(CODE_BAD_PARAMS, f"{op}: {self.name!r} must be one of {list(self.choices)}, "
                                                 f"got {str(value)[:40]!r}")
        return value


@dataclass(frozen=True)
class OpSpec:
    """A row of the op table."""

    name: str
    needs_model: bool
    params: tuple[Param, ...] | None = ()        # None = any (echo)
    arrays: frozenset[str] | None = frozenset()  # names a request may carry; None = any (echo)
    answer: Callable[["Server", Message, list], list] | None = None           # I/O thread: -> reply frames
    prepare: Callable[[Any, dict[str, np.ndarray], int | None], Any] | None = None  # host work on one request
    compute: Callable[[Any, list[Any], dict[str, Any]], "Computed"] | None = None  # one batch
    batch_params: tuple[str, ...] = field(default=())  # params that must agree within a batch

    @property
    def on_worker(self) -> bool:
        return self.compute is not None

    def check(self, message: Message) -> dict[str, Any]:
        """The request's params with defaults filled in; ProtocolError(bad_params) for unknown or invalid ones."""
        if self.params is None:
            return dict(message.params)
        known = {p.name: p for p in self.params}
        unknown = set(message.params) - set(known)
        if unknown:
            raise ProtocolError(CODE_BAD_PARAMS, f"op {self.name!r} does not take parameters {sorted(unknown)}; "
                                                 f"it takes {sorted(known) or 'none'}")
        if self.arrays is not None:
            extra = set(message.arrays) - self.arrays
            if extra:
                raise ProtocolError(CODE_BAD_PARAMS, f"op {self.name!r} does not read arrays {sorted(extra)}; it "
                                                     f"takes {sorted(self.arrays) or 'none'}: send only those")
        return {name: p.check(self.name, message.params.get(name, p.default)) for name, p in known.items()}


# One batch's reply arrays (one dict per request), and the stage timings in ms when the runtime measured them
# itself (decode, encode, forward, output); None lets the server's stage clock measure them.
Computed = tuple[list[dict[str, np.ndarray]], "dict[str, float] | None"]


# ----------------------------------------------------------------------------------------- host work (prepare)
def _prepare_rerender(runtime: Any, arrays: dict[str, np.ndarray], latent_size: int | None) -> Any:
    if "latent" not in arrays:
        raise ProtocolError(CODE_BAD_PARAMS, "rerender needs a 'latent' array (float32, latent_size)")
    latent = check_latent(arrays["latent"], latent_size)
    if _wire_path(runtime):  # checked here, decoded on the device by the runtime
        return protocol.check_wire_buffer(arrays), latent
    return buffer_from_wire(arrays), latent


def _wire_path(runtime: Any) -> bool:
    """Whether the runtime takes the wire arrays as they arrived (decoding them on its device)."""
    return hasattr(runtime, "rerender_wire") and hasattr(protocol, "check_wire_buffer")


def _prepare_encode(runtime: Any, arrays: dict[str, np.ndarray], latent_size: int | None) -> Any:
    """(buffer, photo), or (buffer, photo, init) when the request carries candidate starts for the fit."""
    photo = arrays.get("photo")
    if photo is None or photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise ProtocolError(CODE_BAD_PARAMS, "encode needs a 'photo' array, uint8 sRGB H x W x 3")
    buffer = buffer_from_wire(arrays)
    if photo.shape[:2] != buffer.shape:
        raise ProtocolError(CODE_BAD_PARAMS, f"the photo is {photo.shape[:2]} but its deep buffer is "
                                             f"{buffer.shape}; render the buffer at the photo's size")
    if "init" in arrays:
        return buffer, np.array(photo), check_init(arrays["init"], latent_size)
    return buffer, np.array(photo)


MAX_INIT_LATENTS = 64  # candidate starts one encode request may carry (one forward pass each)


def check_init(init: np.ndarray, latent_size: int | None) -> np.ndarray:
    """The ``init`` array of an encode request as float32 N x latent_size, or ProtocolError(bad_params).

    Why N rows: a chained fit sends its best latent so far (N = 1); a caller may also offer several starts (gallery
    looks, say) and the fit continues from the one with the lowest photo loss."""
    a = np.asarray(init)
    want = f"float32 1 x {latent_size or 'latent_size'} or N x {latent_size or 'latent_size'} (N <= {MAX_INIT_LATENTS})"
    if a.dtype not in (np.float32, np.float16) or a.ndim not in (1, 2):
        raise ProtocolError(CODE_BAD_PARAMS, f"encode: 'init' must be {want}, got {a.dtype}{list(a.shape)}")
    a = np.array(a.reshape(1, -1) if a.ndim == 1 else a, dtype=np.float32)
    if (latent_size is not None and a.shape[1] != latent_size) or not 1 <= a.shape[0] <= MAX_INIT_LATENTS:
        raise ProtocolError(CODE_BAD_PARAMS, f"encode: 'init' must be {want}, got {list(np.shape(init))}: the "
                                             f"model's latent size is {latent_size} (ask `hello`)")
    if not np.isfinite(a).all():
        raise ProtocolError(CODE_BAD_PARAMS, "encode: 'init' contains NaN or infinity; send finite latents")
    return a


def _prepare_segment(runtime: Any, arrays: dict[str, np.ndarray], latent_size: int | None) -> Any:
    return buffer_from_wire(arrays)


# --------------------------------------------------------------------------------------- device work (compute)
def _compute_rerender(runtime: Any, inputs: list[Any], params: dict[str, Any]) -> Computed:
    latents = np.stack([z for _, z in inputs])
    if isinstance(inputs[0][0], dict):  # wire arrays: the runtime decodes, encodes, runs and times it all
        result = runtime.rerender_wire([w for w, _ in inputs], latents, output=params["output"],
                                       fill_labels=params["fill_labels"])
        if params["fill_labels"]:
            return [{"image": im, "labels": lab} for im, lab in zip(result.images, result.labels)], \
                result.timings_ms
        return [{"image": im} for im in result.images], result.timings_ms
    buffers = [b for b, _ in inputs]
    if params["fill_labels"]:  # S predicts the labels no point gives; the reply says what was used
        buffers = runtime.fill_labels(buffers)
    # float16 is the network's own float output, not the 8-bit image divided by 255
    images = np.asarray(runtime.rerender(buffers, latents, output=params["output"]))
    if params["fill_labels"]:
        return [{"image": im, "labels": b.label} for im, b in zip(images, buffers)], None
    return [{"image": im} for im in images], None


def _compute_encode(runtime: Any, inputs: list[Any], params: dict[str, Any]) -> Computed:
    """The encoder's latents; with ``fit_steps`` or an ``init``, each optimised against its photo.

    The fit starts from the request's ``init`` (the lowest-loss row) or the encoder's answer, and always pulls
    towards the encoder's answer, so a fit chained over short requests optimises what one long fit would. Fitted
    replies also carry ``photo_loss`` = [loss at the start, loss of the returned latent]."""
    encoded = np.asarray(runtime.encode([item[1] for item in inputs], [item[0] for item in inputs]),
                         dtype=np.float32)
    steps = params.get("fit_steps") or 0
    results = []
    for item, z in zip(inputs, encoded):
        buffer, photo, *init = item
        if not steps and not init:
            results.append({"latent": z})
            continue
        from .latent_fit import fit_latent, photo_losses

        starts = init[0] if init else z[None]
        start = starts[int(np.argmin(photo_losses(runtime, photo, buffer, starts)))] if len(starts) > 1 else starts[0]
        fit = fit_latent(runtime, photo, buffer, steps=steps, init=start, anchor=z)
        results.append({"latent": fit.latent, "photo_loss": np.array([fit.initial_loss, fit.final_loss], np.float32)})
    return results, None


def _compute_segment(runtime: Any, inputs: list[Any], params: dict[str, Any]) -> Computed:
    labels = np.asarray(runtime.segment(inputs), dtype=np.uint8)
    return [{"labels": lab} for lab in labels], None


# --------------------------------------------------------------------------------------- I/O thread answers
def _answer_hello(server: "Server", message: Message, frames: list) -> list:
    return server.reply_hello(message)


def _answer_echo(server: "Server", message: Message, frames: list) -> list:
    return server.reply_echo(message, frames)


def _answer_stats(server: "Server", message: Message, frames: list) -> list:
    return server.reply_stats(message)


def _answer_appearances(server: "Server", message: Message, frames: list) -> list:
    return server.reply_appearances(message)


_BUFFER = frozenset(BUFFER_ARRAYS)
OUTPUTS = ("uint8", "float16")

OP_TABLE: dict[str, OpSpec] = {spec.name: spec for spec in (
    OpSpec("hello", needs_model=False, answer=_answer_hello),
    OpSpec("echo", needs_model=False, params=None, arrays=None, answer=_answer_echo),
    OpSpec("stats", needs_model=False, answer=_answer_stats),
    OpSpec("appearances", needs_model=True, answer=_answer_appearances),
    OpSpec("rerender", needs_model=True,
           params=(Param("output", "uint8", OUTPUTS, str), Param("fill_labels", False, (), bool)),
           arrays=_BUFFER | {"latent"}, prepare=_prepare_rerender, compute=_compute_rerender,
           batch_params=("output", "fill_labels")),
    OpSpec("encode", needs_model=True, arrays=_BUFFER | {"photo", "init"}, prepare=_prepare_encode,
           compute=_compute_encode, params=(Param("fit_steps", 0, (), int, (0, 5000)),),
           batch_params=("fit_steps",)),
    OpSpec("segment", needs_model=True, arrays=_BUFFER, prepare=_prepare_segment, compute=_compute_segment),
)}
"""Every op the server answers. Echo passes any params and arrays through untouched (it measures the transport)."""


def frame_size(arrays: dict[str, np.ndarray]) -> tuple[int, int]:
    """(H, W) of the request's frame (its deep buffer's color, or photo), (0, 0) when it has none."""
    image = arrays.get("color", arrays.get("photo"))
    if image is None or image.ndim < 2:
        return 0, 0
    return int(image.shape[0]), int(image.shape[1])


__all__ = ["MAX_INIT_LATENTS", "OP_TABLE", "OpSpec", "Param", "OUTPUTS", "check_init", "frame_size"]
