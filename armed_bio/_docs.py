"""Docstring processing: each parameter is documented once, where it is defined.

A user-facing model passes most of its arguments on to its module. The module's docstring
documents them; :func:`module_parameters` copies those entries into the model's docstring in
place of a ``{module_parameters}`` placeholder, so ``help(ArmedRNA)`` shows them all and no
description is written twice.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable

_SECTION = re.compile(r"^(\w[\w ]*)\n-{3,}$", re.MULTILINE)
PLACEHOLDER = "{module_parameters}"


def parameter_entries(doc: str | None) -> dict[str, str]:
    """The entries of a numpy-style ``Parameters`` section, keyed by their name line.

    Each value is the entry's text (name line and indented description), dedented.
    """
    text = inspect.cleandoc(doc or "")
    sections = list(_SECTION.finditer(text))
    for i, section in enumerate(sections):
        if section.group(1) != "Parameters":
            continue
        end = sections[i + 1].start() if i + 1 < len(sections) else len(text)
        body = text[section.end() : end].strip("\n")
        entries: dict[str, str] = {}
        name = None
        for line in body.splitlines():
            if line and not line[0].isspace():
                name = line.strip()
                entries[name] = line
            elif name is not None:
                entries[name] += "\n" + line
        return {k: v.rstrip() for k, v in entries.items()}
    return {}


def module_parameters(source: type, skip: Iterable[str] = ()) -> Callable[[type], type]:
    """Class decorator: put ``source``'s documented parameters in place of the placeholder.

    Parameters
    ----------
    source
        The class whose ``Parameters`` section documents the relayed arguments.
    skip
        Names the decorated class sets itself (documented there, or derived from the data);
        an entry is left out when every name on its line is skipped.
    """
    skipped = set(skip)

    def decorate(cls: type) -> type:
        doc = cls.__doc__ or ""
        if PLACEHOLDER not in doc:
            raise ValueError(f"{cls.__name__}'s docstring has no {PLACEHOLDER} placeholder.")
        line = next(li for li in doc.splitlines() if PLACEHOLDER in li)
        indent = line[: len(line) - len(line.lstrip())]
        kept = [
            entry
            for names, entry in parameter_entries(source.__doc__).items()
            if not {n.strip() for n in names.split(",")} <= skipped
        ]
        block = "\n".join(
            "\n".join(indent + row if row else row for row in entry.splitlines()) for entry in kept
        )
        cls.__doc__ = doc.replace(indent + PLACEHOLDER, block)
        return cls

    return decorate
