"""Griffe extension for the API reference: Sphinx roles in docstrings become code spans.

The docstrings cross-reference with reStructuredText roles (:func:`~torchseq.read_jsonl`,
:meth:`set_epoch`), which Markdown would show literally. ``~`` keeps the last
component of the name, as Sphinx does. Loaded by mkdocs.yml (mkdocstrings' python
handler, ``extensions:``); not part of the package.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|exc|obj|const|term):`(~?)([^`]+)`")


def plain(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(plain, obj.docstring.value)
