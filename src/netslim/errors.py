"""An error said in one line, as the command line prints it and as messages that quote an error do."""

from __future__ import annotations


def one_line(e: BaseException) -> str:
    """The first line of the message, and the notes added on the way out (what a failed write kept)."""
    text = str(e).strip() or type(e).__name__
    return "; ".join([text.splitlines()[0], *getattr(e, "__notes__", ())])
