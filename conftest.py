"""Collects README.md and docs/*.md for pytest: every code block in them is a test (tests/markdown.py)."""

from tests.markdown import pages

pytest_collect_file = pages().pytest()
