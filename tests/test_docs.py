"""README.md and docs/: every fenced code block is one the harness runs (tests/markdown.py), every
guide is linked from the README, and the README stays short."""

import re
from pathlib import Path

from .markdown import LANGUAGES, ROOT

FENCE = re.compile(r"^```(.*)$", re.MULTILINE)


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_code_block_is_in_a_language_the_tests_run():
    for page in _pages():
        fences = FENCE.findall(page.read_text())
        assert len(fences) % 2 == 0, f"{page.name}: an unclosed code block"
        opening = fences[::2]
        unknown = [lang for lang in opening if lang.strip() not in LANGUAGES]
        assert not unknown, f"{page.name}: code blocks in {unknown} would not run; use one of {LANGUAGES}"


def test_the_readme_is_short_and_links_every_guide():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_links_between_pages_name_files_that_exist():
    for page in _pages():
        for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"
