"""Rules for names: model keys, class names, provider names and titles.

A name is shown in messages, sent to the remote and written into the dataset digest's
``class<TAB>digest`` lines: an empty one fails only at apply (after the model was
created), and a control character splits a one-line message or a digest line.
"""

from __future__ import annotations

import re

# Control characters (Unicode category Cc: C0, DEL and C1), and the line and paragraph
# separators (Zl, Zp) that str.splitlines also breaks on. A regex: a spec may list 100k samples.
_SPLITTING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(text: str) -> bool:
    """True if ``text`` holds a control character or a line/paragraph separator."""
    return _SPLITTING.search(text) is not None


def name_problem(what: str, name: str) -> str | None:
    """What is wrong with ``name`` as a ``what`` ("class name", ...), or None."""
    if not name:
        return f"{what} must not be empty"
    if not name.strip():
        return f"{what} must not be only whitespace"
    bad = _SPLITTING.search(name)
    if bad is not None:
        return f"{what} must not contain control characters (found U+{ord(bad.group()):04X})"
    return None
