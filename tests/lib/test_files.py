"""lib.files: atomic writes leave no torn file, and the folder lock refuses a live holder but not a dead one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lib import files
from lib.files import FolderBusy, FolderLock


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = files.write_json(tmp_path / "a.json", {"v": 1})

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"v": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint.pt.123.tmp").write_text("x")
    (tmp_path / ".shard.h5.77.tmp").write_text("x")
    (tmp_path / "notes.tmp").write_text("mine")  # not the kit's naming: kept
    (tmp_path / ".hidden.tmp").write_text("mine")
    removed = files.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".checkpoint.pt.123.tmp", ".shard.h5.77.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp", "notes.tmp"]


def write_lock(folder: Path, **record: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / files.LOCK_NAME).write_text(json.dumps(record))
    return folder / files.LOCK_NAME


def test_a_live_holder_is_refused_a_dead_one_taken_over(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "30"]) as holder:
        write_lock(tmp_path, pid=holder.pid, host=socket.gethostname(), start=files.process_start(holder.pid))
        with pytest.raises(FolderBusy, match=f"in use by another run: pid {holder.pid} on {socket.gethostname()}"):
            FolderLock(tmp_path).acquire()
        holder.kill()  # kill -9: the holder never removes its lock
    with FolderLock(tmp_path) as lock:
        assert lock.taken_over == f"process {holder.pid} is gone"
        assert json.loads((tmp_path / files.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / files.LOCK_NAME).exists()


def test_a_reused_pid_or_a_silent_other_host_is_stale(tmp_path: Path) -> None:
    # Our own pid with another start time: the process that wrote the lock is gone and the pid was reused.
    write_lock(tmp_path / "a", pid=os.getpid(), host=socket.gethostname(), start="1")
    with FolderLock(tmp_path / "a") as lock:
        assert "pid reused" in lock.taken_over
    # Another host: alive while its heartbeat (the file's mtime) is recent, stale once it stopped.
    path = write_lock(tmp_path / "b", pid=1, host="node-elsewhere", start="5")
    with pytest.raises(FolderBusy, match="node-elsewhere"):
        FolderLock(tmp_path / "b").acquire()
    old = time.time() - files.STALE_AFTER_S - 60
    os.utime(path, (old, old))
    with FolderLock(tmp_path / "b") as lock:
        assert "heartbeat stopped" in lock.taken_over


def test_a_torn_lock_file_is_stale(tmp_path: Path) -> None:
    (tmp_path / files.LOCK_NAME).write_text("")  # killed between creating and writing the lock
    with FolderLock(tmp_path) as lock:
        assert lock.taken_over == "the lock file is empty or torn"


def test_the_holder_keeps_its_lock_fresh(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(files, "HEARTBEAT_S", 0.05)
    with FolderLock(tmp_path):
        path = tmp_path / files.LOCK_NAME
        os.utime(path, (0, 0))
        time.sleep(0.5)
        assert path.stat().st_mtime > time.time() - 5
