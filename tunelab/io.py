"""Atomic file writes and folder swaps: a reader (or a crash) never sees a half-written file or folder.

Files and folders made here get the permissions a plain `open()` / `mkdir` would give (0666 / 0777 minus
the umask): `tempfile` makes them owner-only (0600 / 0700), which would hide a shared run from a team.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
RENAME_EXCHANGE = 2  # <linux/fs.h>: swap two existing paths in one step


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status, kernel >= 4.7).

    The fallback (set and restore) briefly leaves umask 0 for other threads, e.g. TensorBoard's writer.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def nearest_existing(path: str | Path) -> Path:
    """`path` itself if it exists, else its closest parent that does (where a new file or folder would go)."""
    path = Path(path).absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def not_a_folder(path: str | Path) -> str | None:
    """Why `path` cannot be (or become) a folder, in the words of an error after the path: "is a file", or "is
    under X, which is a file" when a file stands on the way; None when it is a folder or can be made as one."""
    existing = nearest_existing(path)
    if existing.is_dir():
        return None
    return "is a file" if existing == Path(path).absolute() else f"is under {existing}, which is a file"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp made it 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one step with Linux renameat2(RENAME_EXCHANGE); False where unsupported.

    Unsupported: no `renameat2` in the C library (not Linux/glibc >= 2.28), or a filesystem that refuses
    the flag (EINVAL, e.g. some network filesystems; ENOSYS/ENOTSUP on old kernels). Other errors raise.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def atomic_replace_dir(tmp_dir: str | Path, final_dir: str | Path) -> None:
    """Move a fully written `tmp_dir` into place as `final_dir`, replacing an old one, then delete the old.

    On Linux the two folders are swapped in one step (renameat2 RENAME_EXCHANGE): a reader sees the old
    folder or the new one, never none. Where the C library or the filesystem refuses the swap, the old folder
    is renamed away and the new one renamed in: between the two renames `final_dir` does not exist (the old
    one is back in place if the second rename fails). Without an old folder one rename is atomic anyway.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if not final_dir.exists():
        os.replace(tmp_dir, final_dir)
    elif exchange_paths(tmp_dir, final_dir):
        # tmp_dir now holds the old folder; the new one is in place, so failing to delete the old is no failure
        shutil.rmtree(tmp_dir, ignore_errors=True)
    else:
        old = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.old-"))
        os.replace(final_dir, old)  # renaming a folder over an empty folder replaces it
        try:
            os.replace(tmp_dir, final_dir)
        except BaseException:
            os.replace(old, final_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final_dir.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a crash right after it keeps it); best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def follow_umask(folder: str | Path) -> None:
    """Give the files and folders under `folder` the permissions that plain open() / mkdir give.

    Libraries write owner-only files (safetensors' save_file makes 0600 whatever the umask). Files with
    more than one hard link are left alone: they share the mode of the base model files they link to.
    """
    mask = current_umask()
    for path in (Path(folder), *Path(folder).rglob("*")):
        if path.is_symlink():
            continue
        st = path.stat()
        wanted = (0o777 if path.is_dir() else 0o666) & ~mask
        if (st.st_mode & 0o777) != wanted and (path.is_dir() or st.st_nlink == 1):
            path.chmod(wanted)


def staging_dir(final_dir: str | Path) -> Path:
    """A fresh empty folder `.NAME.staging-XXXX` beside `final_dir`, to write into before `atomic_replace_dir`.

    Beside it, so that the final rename stays on one filesystem; hidden, so that listings skip it.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.staging-"))
    path.chmod(0o777 & ~current_umask())  # mkdtemp made it 0700
    return path


@contextlib.contextmanager
def staged_dir(final_dir: str | Path) -> Iterator[Path]:
    """`with staged_dir(final) as tmp:` write the folder's files into `tmp`; when the block ends they get plain
    permissions (`follow_umask`) and `tmp` replaces `final` (`atomic_replace_dir`). On any failure, Ctrl-C
    included, the staging folder is removed and `final` stays as it was.
    """
    tmp = staging_dir(final_dir)
    try:
        yield tmp
        follow_umask(tmp)
        atomic_replace_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
