"""Module-scoped fixtures for add-on tests against a real backend: import them into a test module with
``from support_addon import addon, backend  # noqa: F401`` (pytest finds fixtures by name in the module)."""

from __future__ import annotations

import pytest

from support_backend import BackendProcess, free_tcp_address, make_small_bundle


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """A real `rerender serve` on a small freshly initialised bundle, for the whole test module."""
    bundle = make_small_bundle(tmp_path_factory.mktemp("bundle"))
    with BackendProcess(bundle, free_tcp_address()) as proc:
        yield proc


@pytest.fixture(scope="module")
def addon(backend):
    """The add-on enabled exactly as docs/addon.md says, pointed at the served bundle."""
    import addon_utils
    import bpy

    module = addon_utils.enable("rerender.addon", default_set=True)
    assert module is not None, "addon_utils.enable('rerender.addon') failed (see the log above)"
    prefs = bpy.context.preferences.addons["rerender.addon"].preferences
    prefs.address = backend.address
    prefs.timeout = 20.0
    yield module
    addon_utils.disable("rerender.addon", default_set=True)
