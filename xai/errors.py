"""The one base of every failure whose message is meant for a person: what the Space shows a caller and what the
command lines print as one line. Anything else is a bug, and reaches a caller only as an error id."""

from __future__ import annotations

import re


class UserError(Exception):
    """A request or input that cannot be served; the message says why in plain words and what to do."""


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"(),;:]+/)*([^\s'\"(),;:/]+)")


def redact(text: str) -> str:
    """`text` with every absolute path cut to its last part ("/srv/bundles/x/bundle.json" -> "bundle.json")."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1), text)
