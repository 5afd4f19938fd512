"""One exception type for everything a user can get wrong (files, flags, formats).

The CLI catches `UserError` and prints its message as one line, so every message must name the
file (and line) and the problem. Programming errors are not UserErrors and keep their tracebacks.
"""

import dataclasses


class UserError(Exception):
    """Bad input from the user: a missing or broken file, a malformed log, a wrong flag."""


LONG_VALUE_ITEMS = 8
"""A list or tuple field with more items than this (a vocabulary) is shown by its length."""


def _shown(value: object) -> str:
    if isinstance(value, (list, tuple)) and len(value) > LONG_VALUE_ITEMS:
        return f"{len(value)} items"
    return repr(value)


def config_differences(a: object, b: object, labels: tuple[str, str] | None = None) -> list[str]:
    """The fields in which two configs of one dataclass differ, for an error message: "name A != B",
    or with `labels` "name: label_a A vs label_b B". The one config comparison of the project."""
    out = []
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x != y:
            out.append(f"{f.name}: {labels[0]} {_shown(x)} vs {labels[1]} {_shown(y)}" if labels
                       else f"{f.name} {_shown(x)} != {_shown(y)}")
    return out
