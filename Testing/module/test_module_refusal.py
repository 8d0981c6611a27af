"""Supported Slicers (audit 1): the module file loads under every Python it may meet — this suite also runs under
Slicer 5.8's Python 3.9 and 5.10/5.12's Python 3.12 (`make test`) — and on a Slicer older than 5.10 its panel is
one message, its Logic refuses with the same message, and its self-test returns without a traceback."""

from __future__ import annotations

import logging

import pytest

from VentricleSynthLib.slicer_glue import compatibility


@pytest.mark.parametrize("version", [(5, 8), (5, 6)])
def test_an_older_slicer_gets_one_message_instead_of_the_panel(load_module, version, caplog):
    module, _settings = load_module(version)
    assert module.REFUSAL and "needs 3D Slicer 5.10 or later" in module.REFUSAL
    assert f"this is Slicer {version[0]}.{version[1]}" in module.REFUSAL
    widget = module.VentricleSynthWidget()
    loaded = []
    module.slicer.util.loadUI = lambda path: loaded.append(path)
    with caplog.at_level(logging.WARNING):
        widget.setup()  # no traceback: the panel is the message
    assert [label.text for label in widget.layout.widgets] == [module.REFUSAL] and not loaded
    assert module.REFUSAL in caplog.text
    widget.enter()
    with pytest.raises(RuntimeError, match="needs 3D Slicer 5.10"):
        module.VentricleSynthLogic().generate(40.0)
    test = module.VentricleSynthTest()
    test.delayDisplay = lambda text: None
    test.runTest()  # logs why it did not run and returns (Reload and Test calls runTest directly)


@pytest.mark.parametrize("version", [(5, 10), (5, 12), None])
def test_supported_slicers_and_scripts_are_not_refused(load_module, version):
    module, _settings = load_module(version)
    assert module.REFUSAL is None
    assert compatibility.refusal(version) is None


def test_the_refusal_names_both_versions():
    message = compatibility.refusal((5, 8), (3, 9))
    assert "Slicer 5.8 (Python 3.9)" in message and "5.10 or later (Python 3.12)" in message
