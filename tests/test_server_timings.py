"""Where a frame's time goes: every model reply carries its stage timings, the `stats` op summarises them, and
`rerender serve -v` logs them. The op table and the protocol's op list agree."""

from __future__ import annotations

import numpy as np

from rerender.bridge import Client, DeepBuffer, protocol
from support_backend import BackendProcess, free_tcp_address, make_small_bundle

LATENT = 8
STAGES = ("receive", "queue", "decode", "encode", "forward", "output")


def test_replies_carry_stage_timings_stats_summarises_them_and_serve_v_logs_them(tmp_path):
    buffer = DeepBuffer.empty(32, 32)
    buffer.depth[:16] = 3.0
    buffer.mask[:16] = True
    with BackendProcess(make_small_bundle(tmp_path / "bundle"), free_tcp_address(), extra_args=("-v",),
                        log_path=tmp_path / "serve.log") as backend:
        with Client(backend.address, timeout=20) as client:
            requests = [{"op": "rerender", "arrays": {**protocol.buffer_to_wire(buffer),
                                                       "latent": np.zeros(LATENT, np.float32)}}] * 5
            replies = list(client.pipeline(requests, in_flight=5))
            stats = next(client.pipeline([{"op": "stats"}])).params
        log = backend.log()
    for reply in replies:
        timings = reply.params["timings_ms"]
        assert set(STAGES) <= set(timings) and timings["batch"] >= 1
        assert all(timings[s] >= 0 for s in STAGES) and timings["forward"] > 0
    summary = stats["timings"]["rerender"]
    assert summary["count"] == 5
    assert set(STAGES) | {"send", "total"} <= set(summary["ms"])
    assert summary["ms"]["total"]["median"] >= summary["ms"]["forward"]["median"]
    lines = [line for line in log.splitlines() if "op=rerender" in line and "forward" in line]
    assert len(lines) == 5 and all(f"{s} " in lines[0] for s in (*STAGES, "send")) and lines[0].endswith("ms")


def test_the_op_table_is_the_protocol_op_list():
    from rerender.backend.server_ops import OP_TABLE

    assert tuple(OP_TABLE) == protocol.OPS or set(OP_TABLE) == set(protocol.OPS)
    for spec in OP_TABLE.values():
        assert (spec.answer is None) == spec.on_worker  # answered by the I/O thread, or computed by the worker
        assert spec.on_worker == (spec.prepare is not None)
    assert {n for n, s in OP_TABLE.items() if s.needs_model} == {"appearances", "rerender", "encode", "segment"}
