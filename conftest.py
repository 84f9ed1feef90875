"""Collects README.md and docs/*.md for pytest: every code block in them is a test (tests/markdown.py).

Sybil comes with the dev extra. In an environment without it, the pages are one failing test each that
says what to install, and every other test still runs.
"""

import pytest
from tests.markdown import pages

try:
    sybil = pages()
except ModuleNotFoundError as error:
    if error.name != "sybil":
        raise

    class _Unrun(pytest.Item):
        def runtest(self) -> None:
            raise RuntimeError("the code blocks of this page run with Sybil, which is not installed here: "
                               "pip install -e '.[dev]' (or pip install sybil)")

    class _Page(pytest.File):
        def collect(self):
            yield _Unrun.from_parent(self, name="code blocks")

    def pytest_collect_file(file_path, parent):
        if file_path.suffix == ".md" and (file_path.name == "README.md" or file_path.parent.name == "docs"):
            return _Page.from_parent(parent, path=file_path)
        return None
else:
    pytest_collect_file = sybil.pytest()
