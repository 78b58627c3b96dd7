"""The row-band threads' one-thread OpenMP setting: per thread, restored, and never torch's global thread count."""

from __future__ import annotations

import threading

import pytest
import torch

from rerender.backend import omp_teams


pytestmark = pytest.mark.skipif(not omp_teams.AVAILABLE, reason="torch does not run on an OpenMP runtime here")


def test_single_omp_thread_is_per_thread_and_restored():
    runtime = omp_teams._RUNTIME
    before, torch_threads = runtime.omp_get_max_threads(), torch.get_num_threads()
    seen: dict[str, int] = {}
    inside, release = threading.Event(), threading.Event()

    def band() -> None:
        seen["band_before"] = runtime.omp_get_max_threads()
        with omp_teams.single_omp_thread():
            seen["band"] = runtime.omp_get_max_threads()
            inside.set()
            release.wait(10)
        seen["band_after"] = runtime.omp_get_max_threads()

    t = threading.Thread(target=band)
    t.start()
    assert inside.wait(10)
    seen["caller_meanwhile"] = runtime.omp_get_max_threads()  # another thread's setting is its own
    release.set()
    t.join(10)
    assert seen["band"] == 1
    assert seen["caller_meanwhile"] == before
    assert seen["band_after"] == seen["band_before"]  # the thread's own setting came back
    assert torch.get_num_threads() == torch_threads  # torch's (and MKL's) global count untouched


def test_the_setting_comes_back_after_an_exception():
    runtime = omp_teams._RUNTIME
    before = runtime.omp_get_max_threads()
    with pytest.raises(RuntimeError):
        with omp_teams.single_omp_thread():
            raise RuntimeError("a band failed")
    assert runtime.omp_get_max_threads() == before
