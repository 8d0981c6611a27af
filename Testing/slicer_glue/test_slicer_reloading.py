"""What the module's Reload reloads: every loaded module of the package, each after what it imports at load time,
so that reloaded modules bind the reloaded classes (checked on a throw-away package and on VentricleSynthLib)."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from VentricleSynthLib.slicer_glue.reloading import reload_order

_FILES = {
    "__init__.py": "",
    "base.py": "class Thing:\n    pass\n",
    "middle.py": "from vsreloadpkg.base import Thing\n\n\nclass Other(Thing):\n    pass\n",
    "sub/__init__.py": "",
    "sub/top.py": textwrap.dedent("""\
        from vsreloadpkg import middle
        from .. import base as base_module
        try:
            import vsreloadpkg.middle as again
        except ImportError:
            again = None


        def later():
            from vsreloadpkg import lazy  # inside a function: not a load-time import
            return lazy
        """),
    "lazy.py": "from vsreloadpkg.sub import top\n",
    "unused.py": "",
}


@pytest.fixture
def package(tmp_path, monkeypatch):
    for rel, text in _FILES.items():
        path = tmp_path / "vsreloadpkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "vsreloadpkg"
    for name in [n for n in sys.modules if n == "vsreloadpkg" or n.startswith("vsreloadpkg.")]:
        del sys.modules[name]


def test_dependencies_first_and_only_loaded_modules(package):
    importlib.import_module("vsreloadpkg.sub.top")
    importlib.import_module("vsreloadpkg.lazy")
    order = reload_order(package)
    assert sorted(order) == ["vsreloadpkg", "vsreloadpkg.base", "vsreloadpkg.lazy", "vsreloadpkg.middle",
                             "vsreloadpkg.sub", "vsreloadpkg.sub.top"]  # "unused" was never imported
    position = {name: i for i, name in enumerate(order)}
    for before, after in (("vsreloadpkg", "vsreloadpkg.base"), ("vsreloadpkg.base", "vsreloadpkg.middle"),
                          ("vsreloadpkg.middle", "vsreloadpkg.sub.top"), ("vsreloadpkg.sub", "vsreloadpkg.sub.top"),
                          ("vsreloadpkg.base", "vsreloadpkg.sub.top"), ("vsreloadpkg.sub.top", "vsreloadpkg.lazy")):
        assert position[before] < position[after], (before, after, order)


def test_reloading_in_that_order_binds_the_new_classes(package):
    top = importlib.import_module("vsreloadpkg.sub.top")
    old_thing = sys.modules["vsreloadpkg.base"].Thing
    for name in reload_order(package):
        importlib.reload(sys.modules[name])
    base, middle = sys.modules["vsreloadpkg.base"], sys.modules["vsreloadpkg.middle"]
    assert base.Thing is not old_thing
    assert middle.Thing is base.Thing and issubclass(middle.Other, base.Thing)
    assert top.middle is middle and top.base_module is base


def test_the_library_order_puts_the_protocol_before_the_task_runner():
    importlib.import_module("VentricleSynthLib.slicer_glue.runs")
    order = reload_order()
    assert order[0] == "VentricleSynthLib"
    assert all(name == "VentricleSynthLib" or name.startswith("VentricleSynthLib.") for name in order)
    for before, after in (("VentricleSynthLib.worker.protocol", "VentricleSynthLib.worker.client"),
                          ("VentricleSynthLib.worker.client", "VentricleSynthLib.slicer_glue.task"),
                          ("VentricleSynthLib.slicer_glue.task", "VentricleSynthLib.slicer_glue.runs"),
                          ("VentricleSynthLib.slicer_glue.mrml", "VentricleSynthLib.slicer_glue.results")):
        assert order.index(before) < order.index(after)
