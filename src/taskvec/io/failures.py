"""Operating-system errors (a full disk, a read-only mount, a file removed mid-merge) as one-line user errors.

A merge writes gigabytes; running out of space or permission is the user's to fix, so it is reported as a
``TaskvecError`` naming the file and what to do, never as a traceback.
"""

import errno

from ..errors import TaskvecError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def cannot_write(path, err: OSError) -> TaskvecError:
    """The error to raise when writing `path` failed with `err`."""
    if err.errno in _NO_SPACE:
        advice = "free some space or choose another output folder"
    elif err.errno in _NOT_ALLOWED:
        advice = "choose an output folder you can write to"
    else:
        advice = "check the disk or choose another output folder"
    return TaskvecError(f"{path}: cannot write ({_reason(err)}); {advice}")


def cannot_read(path, err: OSError) -> TaskvecError:
    """The error to raise when reading an input `path` failed with `err`."""
    return TaskvecError(
        f"{path}: cannot read ({_reason(err)}); the file changed or was removed during the merge? check it and run again"
    )
