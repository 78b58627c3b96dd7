""""Match this photo" without Blender: the encode op's ``init`` and ``photo_loss``, and the chained fit of
``bridge/latent_fitting.py`` against a real `rerender serve` of a tiny bundle trained here, over real ZeroMQ.

What must hold: the chained fit ends at a lower photo loss than the encoder's answer (measured again in-process
from the returned latents, not taken from the reply); it reports progress after every link; cancel after the
first link returns that link's latent and sends nothing more; a bad ``init`` is refused ``bad_params`` naming it;
several candidate starts begin from the best; a backend that dies mid-fit ends it with FitInterrupted carrying
what was fitted, one restarted with the same bundle lets the fit go on, one restarted with another model stops it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from rerender.backend.latent_fit import fit_latent, photo_losses
from rerender.backend.runtime import ModelRuntime
from rerender.backend.server_ops import MAX_INIT_LATENTS, check_init
from rerender.bridge import Client
from rerender.bridge.errors import CODE_BAD_PARAMS, InvalidRequest, ProtocolError
from rerender.bridge.latent_fitting import FitInterrupted, fit_photo
from rerender.training.data import load_view, read_manifest

from support_backend import BackendProcess, free_tcp_address, make_small_bundle
from support_dataset import make_trained_film_bundle, one_thread  # noqa: F401  (autouse fixture)

LATENT = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return make_trained_film_bundle(tmp_path_factory.mktemp("match"))


@pytest.fixture(scope="module")
def served(trained):
    with BackendProcess(trained[1], free_tcp_address()) as proc:
        yield proc


@pytest.fixture(scope="module")
def view(trained):
    _, records = read_manifest(trained[0])
    return load_view([r for r in records if r.split == "val"][0])


@pytest.fixture(scope="module")
def runtime(trained):
    return ModelRuntime(trained[1], "cpu")


def encode_count(client: Client) -> int:
    """How many encode requests the backend has answered (its stats)."""
    reply = next(client.pipeline([{"op": "stats"}], in_flight=1))
    return int(reply.params["timings"].get("encode", {}).get("count", 0))


def test_the_chained_fit_lowers_the_photo_loss_below_the_encoders_answer(served, view, runtime):
    seen = []
    with Client(served.address, timeout=20) as client:
        encoded = client.encode(view.photo, view.buffer)
        started = time.monotonic()
        fit = fit_photo(client, view.photo, view.buffer, steps=60, chunk=20, progress=seen.append)
        elapsed = time.monotonic() - started
    assert [p.steps_done for p in seen] == [20, 40, 60] and all(p.steps == 60 for p in seen)
    assert [p.links for p in seen] == [1, 2, 3] and len(fit.link_seconds) == 3
    assert all(a.loss >= b.loss for a, b in zip(seen, seen[1:])), "the best loss so far never goes up"
    assert fit.steps_done == 60 and not fit.cancelled and fit.latent.shape == (LATENT,)

    # the losses are the backend's; check them in-process from the latents themselves (on the buffer as it
    # arrived there: float16 depth)
    measured = photo_losses(runtime, view.photo, _as_sent(view), np.stack([encoded, fit.latent]))
    np.testing.assert_allclose(measured, [fit.initial_loss, fit.final_loss], rtol=1e-4)
    assert measured[1] < measured[0] - 0.02, f"fit {measured[1]:.4f} vs the encoder's answer {measured[0]:.4f}"
    # three links of 20 optimise what one 60-step fit does (only Adam restarts per link)
    single = fit_latent(runtime, view.photo, view.buffer, steps=60)
    assert fit.final_loss <= single.final_loss + 0.01
    print(f"\nchained fit: {fit.line()}; links {[round(s, 3) for s in fit.link_seconds]} s; total {elapsed:.2f} s; "
          f"one 60-step fit in-process: {single.initial_loss:.4f} → {single.final_loss:.4f}")


def test_cancel_after_the_first_link_returns_its_latent_and_sends_no_more(served, view):
    seen = []
    with Client(served.address, timeout=20) as client:
        before = encode_count(client)
        fit = fit_photo(client, view.photo, view.buffer, steps=200, chunk=20, progress=seen.append,
                        cancel=lambda: len(seen) >= 1)
        time.sleep(0.3)
        sent = encode_count(client) - before
    assert fit.cancelled and fit.steps_done == 20 and len(seen) == 1 and sent == 1
    assert fit.latent.shape == (LATENT,) and np.isfinite(fit.latent).all()
    assert fit.final_loss <= fit.initial_loss and "cancelled at 20/200" in fit.line()


def test_cancel_while_a_link_is_at_the_backend_stops_at_once(served, view):
    seen, cancelled_at = [], []

    def cancel() -> bool:  # 0.3 s into the second link (100 steps, about 3 s here)
        if seen and time.monotonic() - seen[0][1] > 0.3:
            cancelled_at.append(time.monotonic())
            return True
        return False

    with Client(served.address, timeout=20) as client:
        fit = fit_photo(client, view.photo, view.buffer, steps=300, chunk=100, cancel=cancel,
                        progress=lambda p: seen.append((p, time.monotonic())))
        stopped = time.monotonic()
        assert client.submitted == ()  # the abandoned link's reply will be dropped
        assert client.hello().model is not None  # and the client is usable at once
    assert fit.cancelled and fit.steps_done == 100 and len(seen) == 1 and len(fit.link_seconds) == 1
    assert stopped - cancelled_at[0] < 0.5, "cancel is asked every 0.1 s while a link computes"


@pytest.mark.parametrize("init, why", [
    (np.zeros(LATENT - 1, np.float32), "latent size"),
    (np.zeros((2, LATENT + 1), np.float32), "latent size"),
    (np.zeros((MAX_INIT_LATENTS + 1, LATENT), np.float32), "N <= 64"),
    (np.zeros((1, 1, LATENT), np.float32), "float32 1 x 8 or N x 8"),
    (np.full((1, LATENT), np.nan, np.float32), "NaN or infinity"),
    (np.full(LATENT, np.inf, np.float16), "NaN or infinity"),
    (np.zeros(LATENT, np.uint8), "float32 1 x 8"),
])
def test_a_bad_init_is_refused_with_a_clear_error(served, view, init, why):
    with Client(served.address, timeout=20) as client:
        arrays = {**_wire(view), "init": init}
        with pytest.raises(InvalidRequest, match=f"'init'.*{why}|{why}.*'init'|'init' contains") as caught:
            next(client.pipeline([{"op": "encode", "params": {"fit_steps": 5}, "arrays": arrays}], in_flight=1))
        assert caught.value.code == CODE_BAD_PARAMS and why in caught.value.message
        if init.dtype.kind == "f":  # fit_photo sends float32 (an integer latent is converted, so it passes)
            with pytest.raises(InvalidRequest, match="'init'"):  # the first link's error is the bridge's own
                fit_photo(client, view.photo, view.buffer, steps=10, chunk=5, init=init)


def test_init_rows_of_the_latent_size_are_accepted():
    assert check_init(np.zeros(LATENT, np.float32), LATENT).shape == (1, LATENT)
    assert check_init(np.zeros((3, LATENT), np.float16), LATENT).dtype == np.float32
    with pytest.raises(ProtocolError, match="1 x 8 or N x 8"):
        check_init(np.zeros((0, LATENT), np.float32), LATENT)


def test_several_candidate_starts_begin_from_the_lowest_loss(served, view, runtime):
    with Client(served.address, timeout=20) as client:
        good = fit_photo(client, view.photo, view.buffer, steps=40, chunk=40).latent
        far = np.random.default_rng(1).normal(0, 4, (19, LATENT)).astype(np.float32)  # more than a batch
        starts = np.concatenate([far, good[None]])
        reply = next(client.pipeline([{"op": "encode", "params": {},
                                       "arrays": {**_wire(view), "init": starts}}], in_flight=1))
    np.testing.assert_array_equal(reply.arrays["latent"], good)  # 0 steps: the best start itself
    loss = photo_losses(runtime, view.photo, _as_sent(view), starts)
    assert int(np.argmin(loss)) == len(starts) - 1
    np.testing.assert_allclose(reply.arrays["photo_loss"], [loss[-1], loss[-1]], rtol=1e-4)
    one_by_one = [photo_losses(runtime, view.photo, _as_sent(view), z[None])[0] for z in starts[[0, 9, 19]]]
    np.testing.assert_allclose(loss[[0, 9, 19]], one_by_one, rtol=1e-5)


def test_a_backend_that_dies_mid_fit_ends_it_with_what_was_fitted(trained, view):
    with BackendProcess(trained[1], free_tcp_address()) as proc:
        with Client(proc.address, timeout=3) as client:
            with pytest.raises(FitInterrupted, match=r"stopped after 20 of 100 steps \(loss .* → .* so far\): "
                                                     r"no backend answered") as caught:
                fit_photo(client, view.photo, view.buffer, steps=100, chunk=20,
                          progress=lambda p: proc.kill() if p.links == 1 else None)
    partial = caught.value.partial
    assert partial.steps_done == 20 and partial.latent.shape == (LATENT,)
    assert partial.final_loss <= partial.initial_loss
    assert caught.value.__cause__ is not None


def test_a_restart_with_the_same_bundle_lets_the_fit_go_on_and_another_model_stops_it(trained, view, tmp_path):
    def restart(proc: BackendProcess, bundle: Path | None = None):
        def on_progress(p) -> None:
            if p.links == 1:
                proc.kill()
                if bundle is not None:
                    proc.command[proc.command.index("--bundle") + 1] = str(bundle)
                proc.start()
        return on_progress

    with BackendProcess(trained[1], free_tcp_address()) as proc:
        with Client(proc.address, timeout=20) as client:
            fit = fit_photo(client, view.photo, view.buffer, steps=40, chunk=20, progress=restart(proc))
        assert fit.steps_done == 40 and fit.final_loss < fit.initial_loss
        other = make_small_bundle(tmp_path / "other", latent_size=LATENT)
        with Client(proc.address, timeout=20) as client:
            with pytest.raises(FitInterrupted, match="after 20 of 40 steps.*another model") as caught:
                fit_photo(client, view.photo, view.buffer, steps=40, chunk=20, progress=restart(proc, other))
    assert caught.value.partial.steps_done == 20


def _wire(view) -> dict[str, np.ndarray]:
    from rerender.bridge.protocol import buffer_to_wire

    return {**buffer_to_wire(view.buffer, send_mask=None), "photo": view.photo}


def _as_sent(view):
    from rerender.bridge.protocol import buffer_from_wire

    return buffer_from_wire(_wire(view))
