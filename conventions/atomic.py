"""Writing user-visible files safely: temp file beside the target, fsync, rename; honest errors.

Every file the engine writes (recordings, exports, checkpoints, eval JSON, plots, saved worlds) goes
through here, so that (docs/architecture.md, "Files the engine writes"):
- a target is either untouched or complete: the data goes to a hidden temp file in the same folder
  (same file system, so `os.replace` is atomic) and is renamed over the target only once written;
- a failure (read-only folder, missing permission, disk full, file-size limit, broken pipe) is one
  `UserError` naming the path and the cause, never a traceback, and the temp file is removed;
- temp files that an earlier, killed run left behind (kill -9 gives no chance to clean) are removed
  the next time a write to the same target succeeds;
- an output never replaces an input of the same run (`check_output_path`).

`tempfile.mkstemp`/`mkdtemp` create private (0600/0700) entries; a file a user asked for gets the
same permissions as any file they create, so the mode is reset from the process umask.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from conventions.errors import UserError

FILE_MODE = 0o666
DIR_MODE = 0o777
TEMP_SUFFIX = ".tmp"
_MKSTEMP_RANDOM = "?" * 8
"""`tempfile` names its entries prefix + 8 random characters + suffix: the stale-temp pattern."""
TEMP_NAME_GLOB = _MKSTEMP_RANDOM + TEMP_SUFFIX
"""The tail of every temp file name this module makes (`.<target name>.` comes before it)."""

_ERRNO_TEXT: dict[int, str] = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit of this process or file system)",
    errno.EPIPE: "broken pipe (the reader went away)",
    errno.ENOENT: "a folder on the path does not exist",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def describe_os_error(exc: BaseException) -> str:
    """A short human cause for an I/O failure (errno first, the system's text otherwise)."""
    code = getattr(exc, "errno", None)
    if code in _ERRNO_TEXT:
        return _ERRNO_TEXT[code]
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def output_error(path: str | os.PathLike, exc: BaseException, what: str = "cannot write") -> UserError:
    """The one error message for a failed write: `PATH: cannot write (cause)`."""
    return UserError(f"{path}: {what} ({describe_os_error(exc)})")


def temp_file_beside(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """An empty hidden temp file in `path`'s folder, with the user's default file permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, FILE_MODE & ~_umask())
    return Path(tmp)


def temp_dir_beside(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """An empty hidden temp folder next to `path` with the user's default folder permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent))
    os.chmod(tmp, DIR_MODE & ~_umask())
    return tmp


def stale_temps(path: Path, suffix: str = TEMP_SUFFIX) -> list[Path]:
    """Temp entries of earlier writes to `path` (named as `temp_file_beside` names them)."""
    pattern = os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.{_MKSTEMP_RANDOM}{suffix}")
    return [Path(p) for p in glob.glob(pattern)]


def remove_stale_temps(path: Path, suffix: str = TEMP_SUFFIX, keep: Iterable[Path] = ()) -> None:
    """Remove temp files or folders that killed runs left beside `path` (best effort: never raises)."""
    kept = {Path(p) for p in keep}
    for stale in stale_temps(path, suffix):
        if stale in kept:
            continue
        try:
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        except OSError:
            pass  # another process may own it; leaving it is harmless


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = TEMP_SUFFIX,
                 what: str = "cannot write") -> Path:
    """Call `write(tmp)` to fill a temp file beside `path`, fsync it and rename it over `path`.

    Any I/O failure becomes one UserError naming `path`; the temp file is removed on every exit path
    (exceptions, Ctrl-C, the SIGTERM handler of the command line). Returns `path`.
    """
    path = Path(path)
    try:
        tmp = temp_file_beside(path, suffix)
    except OSError as exc:
        raise output_error(path, exc, what) from None
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(path, exc, what) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remove_stale_temps(path, suffix)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "cannot write") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), what=what)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "cannot write") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what=what)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                      flag: str = "--out", label: str | os.PathLike | None = None) -> Path:
    """Refuse an output that is one of this run's inputs (or inside an input folder), before any work.

    Also refuses, up front, a place that cannot be written (a read-only or missing-permission folder),
    so a long run does not fail at its end: a probe file is created and removed in the nearest
    existing folder of the path. Messages name `label` (default: the path).
    """
    out = Path(path)
    shown = Path(label) if label is not None else out
    resolved = out.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given)
        if _same_file(out, source) or resolved == source.resolve():
            raise UserError(f"{shown}: {flag} is also an input of this run ({source}); choose another name")
        if source.is_dir() and source.resolve() in resolved.parents:
            raise UserError(f"{shown}: {flag} lies inside the input folder {source}; choose a place outside it")
    probe_dir = resolved.parent
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UserError(f"{shown}: {probe_dir} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".worldmodel-probe.", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(shown, exc) from None
    return out


MAX_NAMES_SHOWN = 3
"""How many foreign file names an error about a folder lists."""


def check_output_folder(folder: str | os.PathLike, ours: Callable[[Path], bool], flag: str = "--out") -> Path:
    """A folder an output may fill: new, or holding only entries `ours` recognises as this program's
    (an earlier export, a saved world, the shards of an interrupted run). Anything else there is
    refused, not replaced, before any work is done; the place must also be writable."""
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise UserError(f"{folder}: exists and is not a folder; choose a new or empty folder for {flag}")
        foreign = sorted(entry.name for entry in folder.iterdir() if not ours(entry))
        if foreign:
            shown = ", ".join(foreign[:MAX_NAMES_SHOWN]) + (" ..." if len(foreign) > MAX_NAMES_SHOWN else "")
            raise UserError(f"{folder}: the folder is not empty and holds files this program did not write "
                            f"({shown}); choose a new or empty folder for {flag}")
    check_output_path(folder / ".probe", flag=flag, label=folder)
    return folder
