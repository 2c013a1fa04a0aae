"""Put a complete new directory in the place of an old one, all or nothing.

Linux `renameat2(RENAME_EXCHANGE)` (called through ctypes: Python has no binding) swaps the two
names in one step: at every instant the path holds the whole old tree or the whole new one. Where
the kernel or the filesystem lacks it (ENOSYS, EINVAL), two renames do it: the old directory
aside (`.NAME.qdeploy-old`), the new one in; if the second fails the old one is put back, and if
the process dies between the two, `recover` puts it back on the next run.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

AT_FDCWD = -100
RENAME_EXCHANGE = 1 << 1
_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


def _load_renameat2():
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_RENAMEAT2 = _load_renameat2()


def aside(target: Path) -> Path:
    """Where the two-rename fallback keeps the old directory while it swaps."""
    return target.with_name(f".{target.name}.qdeploy-old")


def swap_in(new: Path, target: Path) -> Path:
    """Replace directory `target` by directory `new` (same parent); return where the old tree is
    now (for the caller to remove). On any error `target` still holds the old tree."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(AT_FDCWD, os.fsencode(new), AT_FDCWD, os.fsencode(target), RENAME_EXCHANGE) == 0:
            return new
        err = ctypes.get_errno()
        if err not in _UNSUPPORTED:
            raise OSError(err, os.strerror(err), str(target))
    old = aside(target)
    if old.is_dir() and not old.is_symlink():  # left by an earlier run that could not remove it
        shutil.rmtree(old)
    elif os.path.lexists(old):
        old.unlink()
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    return old


def recover(target: Path) -> bool:
    """Put back an old tree a killed two-rename swap left aside; True if it did."""
    old = aside(target)
    if not os.path.lexists(target) and old.is_dir() and not old.is_symlink():
        os.rename(old, target)
        return True
    return False
