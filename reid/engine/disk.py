"""Room on the disk: free space before a write, and telling a full disk from other write failures.

torch's and safetensors' writers do not always say "No space left": a full disk can surface as
``basic_ios::clear: iostream error`` or ``unexpected pos``. A failed write ran out of room when an
``ENOSPC``/``EDQUOT``/``EFBIG`` is anywhere in its exception chain, when its message says so, when
it left a file as large as the file-size limit (``ulimit -f``), or when the filesystem has (almost)
no free space left right after it.
"""

from __future__ import annotations

import errno
import resource
import shutil
from pathlib import Path

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NEARLY_FULL = 1 << 20  # bytes: what a filesystem that just refused a write may still report free


def free_bytes(path: Path) -> int:
    """Free bytes (for an unprivileged writer) on the filesystem that holds ``path`` or would."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def is_disk_full(exc: BaseException, where: Path) -> bool:
    return full_reason(exc, where) is not None


def full_reason(exc: BaseException, where: Path) -> str | None:
    """How a failed write ran out of room (``no space left on the disk``, ``the file size limit
    (ulimit -f) was reached``), or None when it failed for another reason."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno == errno.EFBIG:
            return "the file size limit (ulimit -f) was reached"
        if isinstance(link, OSError) and link.errno in FULL_ERRNOS:
            return "no space left on the disk" if link.errno == errno.ENOSPC else "the disk quota is exhausted"
        text = str(link).lower()
        if "no space left" in text:
            return "no space left on the disk"
        if "quota exceeded" in text:
            return "the disk quota is exhausted"
        if "file too large" in text:
            return "the file size limit (ulimit -f) was reached"
        link = link.__cause__ or link.__context__
    if _file_at_size_limit(Path(where)):
        return "the file size limit (ulimit -f) was reached"
    try:
        return "no space left on the disk" if free_bytes(where) < _NEARLY_FULL else None
    except OSError:
        return None


def _file_at_size_limit(where: Path) -> bool:
    """A file under ``where`` as large as RLIMIT_FSIZE allows (torch's writer then only says
    ``unexpected pos``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY or not where.is_dir():
        return False
    return any(p.is_file() and p.stat().st_size >= soft for p in where.rglob("*"))


def size_text(num_bytes: int) -> str:
    """``123456789 bytes (118 MiB)``: exact for scripts, rounded for people."""
    value, unit = float(num_bytes), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{num_bytes} bytes ({value:.0f} {unit})" if unit != "B" else f"{num_bytes} bytes"
