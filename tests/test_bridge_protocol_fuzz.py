"""Coverage-guided fuzzing of the protocol decoder (atheris, from the dev extra) for a bounded time.

The harness is tests/fuzz_protocol_decoder.py; its seed corpus (valid messages of every op and the shapes that
once crashed the server) is tests/fuzz_corpus/protocol. New inputs go to a temporary folder, so the repository's
corpus never changes during a test run. A crash (anything but a ProtocolError out of the decoder and the
deep-buffer checks) makes libFuzzer exit non-zero and print the input.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SECONDS = 25


@pytest.mark.slow
def test_protocol_decoder_survives_coverage_guided_fuzzing(tmp_path):
    seeds = HERE / "fuzz_corpus" / "protocol"
    assert len(list(seeds.glob("*.bin"))) >= 9
    # libFuzzer reads its RSS as getrusage's peak, and Linux carries the parent's peak into a child across
    # fork + exec: a pytest process that grew to 2.4 GB in earlier tests made the child "out of memory" at its
    # first input. The limit is therefore 2 GiB above this process's peak.
    rss_limit_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + 2048
    run = subprocess.run([sys.executable, str(HERE / "fuzz_protocol_decoder.py"), f"-max_total_time={SECONDS}",
                          "-seed=20261201", "-timeout=10", f"-rss_limit_mb={rss_limit_mb}", "-print_final_stats=1",
                          f"-artifact_prefix={tmp_path}/",
                          str(tmp_path), str(seeds)], capture_output=True, text=True, timeout=SECONDS + 120)
    output = run.stdout + run.stderr
    assert "No module named 'atheris'" not in output, "install the dev extra: pip install -e '.[dev]'"
    assert run.returncode == 0, output[-4000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert done, output[-2000:]
    runs = int(done.group(1))
    assert runs >= 20_000, f"only {runs} inputs in {SECONDS} s: the harness is too slow to fuzz anything"
    print(f"atheris: {runs} inputs in {done.group(2)} s, {len(list(tmp_path.iterdir()))} new corpus entries")


def test_the_seed_corpus_decodes_as_the_harness_expects():
    sys.path.insert(0, str(HERE))
    try:
        import fuzz_protocol_decoder as harness
    except ImportError as exc:  # atheris missing
        pytest.fail(f"{exc}: install the dev extra: pip install -e '.[dev]'")
    finally:
        sys.path.remove(str(HERE))
    from rerender.bridge import ProtocolError, protocol

    seeds = HERE / "fuzz_corpus" / "protocol"
    assert {p.stem for p in seeds.glob("*.bin")} == set(harness.seeds())
    refused = {"zero_dim_huge": "too_large", "bool_frame": "bad_array"}  # (as requests)
    ops = set()
    for path in sorted(seeds.glob("*.bin")):
        harness.one_input(path.read_bytes())  # no seed crashes the harness
        frames = harness.split(path.read_bytes())
        if path.stem in refused:
            with pytest.raises(ProtocolError) as info:
                protocol.decode(frames, harness.LIMITS)
            assert info.value.code == refused[path.stem], path
        else:
            ops.add(protocol.decode(frames, harness.LIMITS).op)
    assert ops == {"hello", "echo", "rerender", "encode", "segment"}
