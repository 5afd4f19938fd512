"""Temp-file-then-rename helpers shared by recordings, screenshots and replay exports.

`tempfile.mkstemp`/`mkdtemp` create private (0600/0700) entries; a recording or a video a user
asked for should get the same permissions as any file they create, so the mode is reset from the
process umask before the rename makes it visible.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FILE_MODE = 0o666
DIR_MODE = 0o777


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_file_beside(path: Path, suffix: str) -> Path:
    """An empty hidden temp file in `path`'s folder (same file system, so os.replace is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, FILE_MODE & ~_umask())
    return Path(tmp)


def temp_dir_beside(path: Path) -> Path:
    """An empty hidden temp folder next to `path` with the user's default folder permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, DIR_MODE & ~_umask())
    return tmp
