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


# A tracker's numbers ("Issue N", "issue-N", "PEERS #N", "(#N)") say which ticket, not what: the project's own
# text says what (STYLE.md). The files below are left out while others restructure them; each entry says why,
# and the integrator empties the list once they are fixed. An entry whose file has none fails the test too.
TRACKER_ALLOWED: dict[str, str] = {}
TRACKER = re.compile(r"\b(?:issues?|PEERS(?:\.md)?(?: item)?|tickets?|bugs?|PR|pull requests?)[ -]?#?\d+\b"
                     r"|(?<![\w&<])\(?#\d+\b(?!>)", re.IGNORECASE)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".sh"}


def _project_text() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md"]
    for folder in ("src", "tests", "benchmarks", "docs"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file()
                        and "__pycache__" not in p.parts)
    return files


def test_no_tracker_numbers_in_the_projects_text():
    found, allowed_hits = [], set()
    for path in _project_text():
        name = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in TRACKER.finditer(line):
                if name in TRACKER_ALLOWED:
                    allowed_hits.add(name)
                else:
                    found.append(f"{name}:{number}: {match.group(0)!r} in {line.strip()[:100]!r}")
    assert not found, "tracker numbers (say what, not which ticket):\n" + "\n".join(found)
    assert allowed_hits == set(TRACKER_ALLOWED), f"allowed but clean now: {set(TRACKER_ALLOWED) - allowed_hits}"


def test_the_tracker_pattern_finds_what_it_is_for():
    said = [text.replace("N", "19") for text in ("see Issue N", "(issue N, part 2)", "branch issue-N", "PEERS #N",
                                                  "PEERS.md item N", "fixed (#N)", "the ticket #N")]  # not in this file
    assert all(TRACKER.search(text) for text in said), [t for t in said if not TRACKER.search(t)]
    fine = ["<bytes #0>", "# 1 comment", "the issue used", "colour #1f77b4", "PR curve", "ResNet-50 #layers"]
    assert not [t for t in fine if TRACKER.search(t)]
