"""MkDocs hook: show the reStructuredText roles of the docstrings as plain code.

Docstrings cite other objects as ``:class:`Name``` or ``:meth:`name``` and end a paragraph
before an example with ``::``; the API pages render them as ``Name``, ``name`` and ``:``.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|exc|data|obj):<code>(~?)([^<]*)</code>")
_LITERAL_BLOCK = re.compile(r"::</p>")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return _LITERAL_BLOCK.sub(":</p>", _ROLE.sub(_role, html))
