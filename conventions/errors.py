"""One exception type for everything a user can get wrong (files, flags, formats).

The CLI catches `UserError` and prints its message as one line, so every message must name the
file (and line) and the problem. Programming errors are not UserErrors and keep their tracebacks.
"""


class UserError(Exception):
    """Bad input from the user: a missing or broken file, a malformed log, a wrong flag."""
