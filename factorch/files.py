"""Safe file writing: every file factorch writes (checkpoints, exported models, tables, figures,
logs) goes through this module.

* ``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_save`` write to a temporary file in
  the target's directory, then rename it into place, so a crash never leaves a half-written file;
  the file gets the mode a plain ``open(path, "w")`` would give (an existing file's mode, else
  0666 less the umask), and temps of writers killed mid-write are removed.
* Only a new or a regular file is ever replaced: a directory, device, FIFO or socket at the output
  path is refused (``destination``); a symlink there is followed (the file it points to is
  replaced, the link stays).
* ``lock_dir`` keeps a second process from writing into the same run directory.

A failed write is one ``OSError`` naming the file and what the system said.
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch


class OutputPathError(ValueError):
    """An output path factorch will not write to (its directory is missing, ...)."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file next to ``path``, then rename it into place."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file (a table, a CSV, a log) the same way: whole or not at all."""
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` (e.g. an exported model) the same way: whole or not at all."""
    _atomic_write(path, lambda f: f.write(data))


def append_text(text: str, path: str | os.PathLike) -> None:
    """Append ``text`` to a log (``metrics.jsonl``): a line is whole or, after a crash, the log is
    rewritten from the checkpoint (``training.run``); like every write, only to a regular file."""
    target = destination(path)
    try:
        with open(target, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise _write_error(Path(path), e) from None


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` as a Path if factorch may write it (callers check before long work): its directory
    exists and it is nothing or a regular file (``destination``)."""
    destination(path)
    return Path(path)


def destination(path: str | os.PathLike) -> Path:
    """The file an atomic write of ``path`` replaces: ``path`` itself, or where a symlink there
    points (a symlink is followed, as ``open(path, "w")`` would, and stays a link). Only a regular
    file is ever replaced: a directory, device, FIFO or socket at the destination is refused with
    one ``OutputPathError`` (renaming a file over ``/dev/null`` would destroy the device node)."""
    given = Path(path)
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    via = f" (the symlink {str(given)!r} points to {str(target)!r})" if target != given else ""
    if not target.parent.is_dir():
        raise OutputPathError(f"cannot write {str(given)!r}: directory {str(target.parent)!r} does not exist{via}")
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as e:
        raise _write_error(given, e) from None
    if not stat.S_ISREG(mode):
        raise OutputPathError(f"cannot write {str(given)!r}: it is {_kind(mode)}{via}, not a regular file; factorch "
                              "writes only new or regular files")
    return target


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """``write(f)`` into a temp file next to ``path`` (named with this process's pid, so temps of
    killed writers can be told apart and removed), then rename it into place with the mode a
    plain ``open(path, "w")`` gives: an existing file's mode, else 0666 less the umask. Only a
    new or regular file is written (``destination``: a symlink is followed)."""
    given, path = Path(path), destination(path)
    remove_stale_temps(path.parent, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # e.g. a read-only directory: name the file asked for, not the temp
        raise _write_error(given, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, _mode_for(path))  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(e)
        if cause is None or isinstance(e, KeyboardInterrupt):
            raise
        raise _write_error(given, cause) from e


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (``/proc/self/status``);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# .NAME.pid<PID>.<mkstemp's 8 random characters>.tmp
_TEMP = re.compile(r"^\.(?P<name>.+)\.pid(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temps(directory: str | os.PathLike, name: Optional[str] = None) -> list[Path]:
    """Remove the temp files that writers killed mid-write left in ``directory`` (those of
    ``name`` only, if given): only those whose writer process is gone, never a live writer's.
    Returns the paths removed."""
    if os.name != "posix":  # process liveness by os.kill(pid, 0) is POSIX
        return []
    removed = []
    for entry in Path(directory).iterdir():
        found = _TEMP.match(entry.name)
        if found and (name is None or found["name"] == name) and not _alive(int(found["pid"])):
            try:
                entry.unlink()
                removed.append(entry)
            except FileNotFoundError:  # another process cleaned it first
                pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: exists? (no signal is sent)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, OSError):
        return False
    return True


class DirectoryLocked(RuntimeError):
    """Another process is writing into the directory (``lock_dir``)."""


LOCK_FILE = ".factorch.lock"


@contextlib.contextmanager
def lock_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the directory ``path`` (created if needed) for this process while writing into it.

    An exclusive ``flock`` on ``path/.factorch.lock``, which holds the holder's pid: a second
    process gets ``DirectoryLocked("another factorch process (pid N) is writing into DIR")``. The
    OS drops the lock when the holder exits, however it dies (kill -9 included), so no stale
    lock survives a crash. Once held, temp files of killed writers in the directory are removed.
    POSIX only (fcntl); elsewhere the directory is not locked.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield directory
        return
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise DirectoryLocked(f"another factorch process (pid {holder}) is writing into {str(directory)!r}; "
                                  "wait for it to finish or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        remove_stale_temps(directory)
        try:
            yield directory
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _os_error(e: BaseException) -> Optional[OSError]:
    """The OSError behind ``e``: torch.save reports a failed write of its file object as
    ``RuntimeError: [enforce fail at inline_container.cc:...]`` with the OSError as context."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _write_error(path: Path, cause: OSError) -> OSError:
    """One line naming the file and what the system said (e.g. "no space left on device")."""
    reason = cause.strerror or str(cause)
    error = OSError(f"cannot write {str(path)!r}: {reason[:1].lower()}{reason[1:]}")
    error.errno = cause.errno
    return error
