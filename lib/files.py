"""Files the kit writes so that nothing is lost or half-written: atomic writes, checksums, and a folder lock.

- :func:`atomic_write` / :func:`write_json`: write through a temporary sibling (``.<name>.<pid>.tmp``), fsync, then
  ``os.replace``, so a reader or a crash sees the old file or the new one, never a torn one. A kill between the two
  leaves the temporary file; :func:`remove_stale_temps` deletes those when a process takes over the folder.
- A write that fails for want of space or permission (ENOSPC, EROFS, EACCES, EDQUOT) becomes one OSError naming the
  path and the fix (:func:`write_failed`), also when torch.save buries it in a RuntimeError; :func:`check_output` and
  :func:`check_folder` refuse an unwritable ``--out`` before a command does its work.
- :func:`sha256_file`: the checksum data-prep manifests record per shard.
- :func:`read_data_pickle`: a data file in a pickle format (CIFAR-10's batches) parsed by an unpickler that admits
  only numpy arrays and plain containers; any other global (``posix.system``, ``builtins.exec``) raises
  :class:`UnsafePickle` naming it, before anything it names is called. The kit never unpickles arbitrary globals.
- :class:`FolderLock`: one process writes a folder (a training run, a data-prep output) at a time. The lock file
  ``<folder>/run.lock`` records pid, host and the process's start time; a lock whose process is gone (same host),
  or whose heartbeat stopped (another host: the holder touches it every minute), is stale and taken over.

    with FolderLock(out):        # FolderBusy (a FileExistsError) names the holder and the fix
        remove_stale_temps(out)
        write_json(out / "config.json", settings)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

LOCK_NAME = "run.lock"
HEARTBEAT_S = 60.0  # the lock holder touches its lock this often
STALE_AFTER_S = 600.0  # a lock of another host untouched this long belongs to a dead run
TEMP_SUFFIX = ".tmp"


# ---------------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------------
def temp_path(path: Path) -> Path:
    """The temporary sibling a write of ``path`` goes through: hidden, this process's pid, never ``*.h5``/``*.pt``."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary sibling, fsync it, then rename it over ``path`` -> path.

    If ``write`` raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise write_failed(path, err) from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def atomic_write_stream(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """:func:`atomic_write` for writers that take an open binary file (``torch.save``, PIL's ``save``)."""

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            recording = _RecordingFile(f)
            try:
                write(recording)  # type: ignore[arg-type]
            except RuntimeError:
                # torch.save reports a failed write as "RuntimeError: [enforce fail at inline_container.cc] unexpected
                # pos": the OSError the file raised (ENOSPC on a full disk) is the cause to report.
                if recording.error is not None:
                    raise recording.error from None
                raise

    return atomic_write(path, fill)


class _RecordingFile:
    """A binary file that remembers the first OSError its ``write`` raised (everything else passes through)."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


# Why a write failed, and the fix, for the errors a user can fix (other OSErrors keep their own message).
WRITE_ERRORS = {
    errno.ENOSPC: "no space left on device (ENOSPC): free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded (EDQUOT): free some space or write elsewhere",
    errno.EROFS: "read-only file system (EROFS): write elsewhere",
    errno.EACCES: "permission denied (EACCES): write elsewhere or change the folder's permissions",
    errno.EPERM: "operation not permitted (EPERM): write elsewhere or change the folder's permissions",
}


class WriteFailed(OSError):
    """A file could not be written; the message names the path, the reason and the fix (one line)."""


def write_failed(path: Path, err: OSError) -> OSError:
    """``err`` raised while writing ``path`` -> :class:`WriteFailed` naming both when a user can fix it (full disk,
    read-only or forbidden target), else ``err`` itself. The target is untouched either way (atomic writes)."""
    if isinstance(err, WriteFailed) or err.errno not in WRITE_ERRORS:
        return err
    failed = WriteFailed(f"cannot write {path}: {WRITE_ERRORS[err.errno]}; {path.name} was left as it was")
    failed.errno = err.errno
    return failed


def check_output(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder, a parent that is a file, or a
    folder where creating a file fails (read-only, forbidden, full). Creates the missing parent folders."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder; give a file name inside it")
    check_folder(path.parent, flag)
    probe = temp_path(path)
    try:
        open(probe, "wb").close()  # noqa: SIM115 - created and closed at once: can a file be made here?
    except OSError as err:
        raise write_failed(path, err) from err
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return path


def check_folder(folder: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Refuse an output folder that is a file (or sits below one), else create it -> the folder."""
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise NotADirectoryError(
                f"{flag} {folder}: {part} is a file, not a folder; pass a folder (or move the file away)"
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_failed(folder, err) from err
    return folder


def write_json(path: str | os.PathLike[str], value: Any, indent: int | None = 2) -> Path:
    """``value`` as JSON at ``path`` (indented unless ``indent`` is None), atomically."""
    return write_text(path, json.dumps(value, indent=indent, default=str) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """``text`` (UTF-8) at ``path``, atomically."""
    return atomic_write_stream(path, lambda f: f.write(text.encode()))


def open_log(path: str | os.PathLike[str]) -> IO[str]:
    """``path`` opened to append a log to, line by line (its folder made): a log grows as things happen, so it is
    appended rather than replaced whole; a kill or a full disk can cut only its last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", buffering=1)  # noqa: SIM115 (the caller closes it)


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files interrupted writes left in ``folder`` (``.<name>.<pid>.tmp``) -> what was removed.

    Call it only while holding the folder (:class:`FolderLock`): a live writer's temporary file would go too.
    """
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
            if tmp.is_file() and tmp.name.rsplit(".", 2)[-2].isdigit():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as hex (streamed: any size)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Pickled data, parsed without running code
# ---------------------------------------------------------------------------------------------------------
class UnsafePickle(ValueError):
    """A pickled data file names a global beyond numpy arrays and plain containers; ``name`` is it in full."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__(f"{path} pickles the global {name}")
        self.path, self.name = path, name


def _data_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object of every global a pickled numpy array or plain container needs, under both numpy
    module names (``numpy.core``, which NumPy 1 and the Python 2 originals of CIFAR-10 write, and NumPy 2's
    ``numpy._core``). Each only builds arrays, dtypes or containers from its arguments: none runs other code."""
    import numpy as np

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # NumPy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    array_globals = {
        ("multiarray", "_reconstruct"): multiarray._reconstruct,  # ndarray.__reduce__ (pickle protocols 0-4)
        ("multiarray", "scalar"): multiarray.scalar,  # a numpy scalar
        ("numeric", "_frombuffer"): numeric._frombuffer,  # ndarray.__reduce_ex__ (protocol 5)
    }
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for (module, name), value in array_globals.items():
        for package in ("numpy.core", "numpy._core"):
            allowed[f"{package}.{module}", name] = value
    for container in (list, dict, tuple, set, frozenset, bytearray):  # what protocols 0-2 build by calling them
        for module in ("builtins", "__builtin__"):  # __builtin__: Python 2 pickles
            allowed[module, container.__name__] = container
    allowed["_codecs", "encode"] = _latin1_bytes  # how protocols 0-2 write Python 3 bytes
    return allowed


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as pickles of bytes use it (text, "latin1"), and nothing else: no other codec runs."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not how a pickle stores bytes")
    return text.encode("latin1")


class _DataUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are :func:`_data_globals`: it refuses the rest by name, never importing them."""

    def __init__(self, file: IO[bytes], path: Path, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self.path, self.allowed = path, _data_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise UnsafePickle(self.path, f"{module}.{name}")
        return self.allowed[module, name]


def read_data_pickle(path: str | os.PathLike[str], encoding: str = "latin1") -> Any:
    """Parse a pickled data file (numpy arrays, numbers, strings, bytes, lists, dicts) -> its object.

    ``encoding``: how Python 2 strings decode (latin1 keeps every byte, as torchvision reads CIFAR-10). Raises
    :class:`UnsafePickle` for any other global, before it is called; a truncated or non-pickle file raises
    pickle.UnpicklingError / EOFError / ValueError as :func:`pickle.load` does.
    """
    path = Path(path)
    with open(path, "rb") as f:
        return _DataUnpickler(f, path, encoding).load()


# ---------------------------------------------------------------------------------------------------------
# The folder lock
# ---------------------------------------------------------------------------------------------------------
class FolderBusy(FileExistsError):
    """Another live process holds the folder; the message names it and what to do."""


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks since boot, /proc/<pid>/stat field 22), or None if no such
    process. Elsewhere a live pid gives "" (unknown start)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name; starttime is field 22
    except FileNotFoundError:
        return None
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def lock_record() -> dict[str, Any]:
    """This process: pid, host, start (see :func:`process_start`), when it took the lock."""
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "start": process_start(pid),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def stale_reason(record: dict[str, Any], age_s: float) -> str | None:
    """Why a lock ``record`` untouched for ``age_s`` seconds is stale, or None if its holder may be alive."""
    if record.get("host") == socket.gethostname():
        start = process_start(int(record.get("pid", -1)))
        if start is None:
            return f"process {record.get('pid')} is gone"
        if record.get("start") and start and start != record.get("start"):
            return f"process {record.get('pid')} is another process now (pid reused)"
        return None
    if age_s > STALE_AFTER_S:
        return f"its heartbeat stopped {age_s / 60:.0f} minutes ago"
    return None


class FolderLock:
    """Hold ``folder`` for this process (a context manager); see the module docstring.

    A second holder gets :class:`FolderBusy` naming the holder (pid, host, since when) and the fix. A stale lock is
    taken over; ``taken_over`` then says why it was stale, so the caller can tell the user.
    """

    def __init__(self, folder: str | os.PathLike[str], what: str = "run") -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self.record = lock_record()
        self.taken_over: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> FolderLock:
        check_folder(self.folder)  # a file in its place: one line naming it
        for _ in range(3):  # a lost race for a stale lock retries; a live holder refuses at once
            if self._create():
                self._start_heartbeat()
                return self
            self._take_over_or_refuse()
        raise FolderBusy(f"{self.path}: could not take the lock (other processes keep racing for it); retry")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._holder() == self.record:  # never remove a lock another process took over
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.record, f)
        return True

    def _holder(self) -> dict[str, Any] | None:
        """The lock file's record; {} if unreadable (torn by a crash between create and write), None if absent."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _take_over_or_refuse(self) -> None:
        holder = self._holder()
        if holder is None:
            return  # released meanwhile: try again
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return
        reason = stale_reason(holder, age) if holder else "the lock file is empty or torn"
        if reason is None:
            raise FolderBusy(
                f"{self.folder} is in use by another {self.what}: pid {holder.get('pid')} on {holder.get('host')} "
                f"since {holder.get('since')} (lock {self.path}). Wait for it to finish, use another folder, or, if "
                f"that process is dead, delete {self.path}"
            )
        # Move the stale lock aside (atomic: of two racers only one succeeds), then check it was the stale one.
        aside = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        with contextlib.suppress(OSError, ValueError):
            if json.loads(aside.read_text()) != holder:  # another process took it over meanwhile: give it back
                os.rename(aside, self.path)
                return
        aside.unlink(missing_ok=True)
        self.taken_over = reason

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, name=f"lock {self.path}", daemon=True)
        self._thread.start()
