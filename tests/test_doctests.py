"""The ``>>>`` examples in the dsb modules are tests: pytest runs them as such
(``--doctest-modules`` with ``dsb`` in ``testpaths``, see pyproject.toml), each module's
examples as one item, ``dsb/<path>.py::<module>``. This file checks that they stay tests:
the configuration still collects them, and every example written is one doctest finds.

An example that needs files from outside the project (the Kaggle zips, a user's TIFF) is
written as a plain code block (``::``), not as ``>>>``; every ``>>>`` example runs.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import dsb


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(dsb.__path__, "dsb."):
        origin = importlib.util.find_spec(info.name).origin
        if origin and origin.endswith(".py") and ">>>" in Path(origin).read_text(encoding="utf-8"):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_pytest_runs_the_examples_of_the_dsb_modules(pytestconfig):
    assert pytestconfig.getoption("doctestmodules"), "pyproject.toml's addopts lost --doctest-modules"
    assert "dsb" in pytestconfig.getini("testpaths"), "pyproject.toml's testpaths lost dsb"
    assert len(MODULES) >= 20  # 23 when this test was written


@pytest.mark.parametrize("name", MODULES)
def test_every_example_is_one_doctest_finds(name):
    """A ``>>>`` where doctest does not look (a comment, a private function of another
    module, a string that is not a docstring) would never run: doctest must find as many
    examples as the module's source has prompts."""
    module = importlib.import_module(name)
    found = sum(len(test.examples) for test in doctest.DocTestFinder().find(module))
    source = Path(module.__file__).read_text(encoding="utf-8")
    prompts = sum(1 for line in source.splitlines() if line.lstrip().startswith(">>> "))
    assert found == prompts > 0, (name, found, prompts)
