"""Output files: the umask's mode, temps of killed writers removed (never a live writer's), one
writer per run directory (``lock_dir``, tested across processes), and only new or regular files
replaced (a symlink followed)."""
import os
import socket
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

import factorch as fc
from factorch.files import (DirectoryLocked, atomic_write_bytes, atomic_write_text, check_writable, lock_dir,
                            remove_stale_temps)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="modes, pids and flock are POSIX")


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_files_get_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text("x", tmp_path / "table.md")
    fc.save(fc.models.create("lenet5", in_channels=1), tmp_path / "m.pt")
    assert _mode(tmp_path / "table.md") == _mode(tmp_path / "m.pt") == 0o666 & ~mask


def test_overwriting_keeps_the_file_mode(tmp_path, umask):
    path = tmp_path / "results.csv"
    path.write_text("old")
    path.chmod(0o644)
    umask(0o077)
    atomic_write_text("new", path)
    assert path.read_text() == "new" and _mode(path) == 0o644


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temps_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".m.pt.pid{dead}.abcd1234.tmp"
        writing = tmp_path / f".m.pt.pid{live.pid}.efgh5678.tmp"  # a live writer's: never touched
        other = tmp_path / f".other.pt.pid{dead}.abcd1234.tmp"  # another target's: its next write cleans it
        keep = [tmp_path / ".m.pt.q1w2e3r4.tmp", tmp_path / "notes.txt"]  # not ours
        for p in [stale, writing, other, *keep]:
            p.write_bytes(b"partial")
        fc.save(fc.models.create("lenet5", in_channels=1), tmp_path / "m.pt")
        assert not stale.exists() and writing.exists() and other.exists() and all(p.exists() for p in keep)
        assert remove_stale_temps(tmp_path) == [other] and writing.exists()
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temps(tmp_path) == [writing]


HOLDER = textwrap.dedent("""
    import sys, time
    from factorch.files import lock_dir
    with lock_dir(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()  # hold it until told (or killed)
    print("released", flush=True)
""")


def _holder(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_dir_refuses_a_second_process_and_frees_on_exit(tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        with pytest.raises(DirectoryLocked, match=rf"another factorch process \(pid {holder.pid}\) is writing "
                                                  rf"into '{run_dir}'"):
            with lock_dir(run_dir):
                pass
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
    finally:
        holder.wait(timeout=60)
    with lock_dir(run_dir):  # released cleanly
        pass


def test_lock_dir_is_freed_by_kill_9_and_cleans_the_killed_writers_temps(tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    temp = run_dir / f".checkpoint.pt.pid{holder.pid}.zzzz9999.tmp"
    temp.write_bytes(b"half a checkpoint")
    with pytest.raises(DirectoryLocked):
        with lock_dir(run_dir):
            pass
    assert temp.exists()  # its writer is alive
    holder.kill()
    holder.wait(timeout=60)
    with lock_dir(run_dir) as held:
        assert held == run_dir and not temp.exists()
        # nested in this process it is held too: the same directory cannot be entered twice
        with pytest.raises(DirectoryLocked, match=rf"pid {os.getpid()}"):
            with lock_dir(run_dir):
                pass


def _writers(tmp_path):
    """Every way factorch writes a file: a checkpoint, a text table, exported bytes."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    return {"fc.save": lambda p: fc.save(model, p), "text": lambda p: atomic_write_text("x", p),
            "bytes": lambda p: atomic_write_bytes(b"x", p)}


@pytest.mark.parametrize("writer", ["fc.save", "text", "bytes"])
def test_only_regular_files_are_replaced(tmp_path, writer):
    write = _writers(tmp_path)[writer]
    fifo, folder = tmp_path / "fifo", tmp_path / "folder"
    os.mkfifo(fifo)
    folder.mkdir()
    specials = {fifo: "a FIFO", folder: "a directory"}
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
        specials[tmp_path / "null"] = "a character device"
    except (PermissionError, OSError):
        pass  # not root: FIFO and directory still cover the rule
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    specials[tmp_path / "sock"] = "a socket"
    try:
        for path, kind in specials.items():
            before = os.lstat(path)
            with pytest.raises(ValueError, match=rf"cannot write '.*{path.name}': it is {kind}, not a regular file"):
                write(path)
            after = os.lstat(path)
            assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)  # untouched
            with pytest.raises(ValueError, match=f"it is {kind}"):
                check_writable(path)  # the CLI's early check says the same before any work
    finally:
        sock.close()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_symlink_is_followed_and_stays_a_link(tmp_path):
    real, link = tmp_path / "run3.pt", tmp_path / "latest.pt"
    real.write_bytes(b"old")
    link.symlink_to(real)
    atomic_write_text("new", link)
    assert link.is_symlink() and real.read_text() == "new"
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to-fifo").symlink_to(tmp_path / "fifo")
    with pytest.raises(ValueError, match=r"it is a FIFO \(the symlink .*to-fifo' points to .*fifo'\)"):
        atomic_write_text("x", tmp_path / "to-fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "new.txt")
    atomic_write_text("made", tmp_path / "dangling")  # a link to a file not there yet: the file is made
    assert (tmp_path / "new.txt").read_text() == "made" and (tmp_path / "dangling").is_symlink()


def test_cli_export_refuses_a_device_node(tmp_path, capsys):
    from factorch.cli.main import run

    os.mkfifo(tmp_path / "out")
    assert run(["export", "--model", "lenet5", "--in-channels", "1", "--format", "torchscript",
                "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it is a FIFO, not a regular file" in err[0]
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out").st_mode)
