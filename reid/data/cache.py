"""Where prepared data lives: the cache directory, the dataset root, and atomic directory writes.

Everything derived from a dataset (the synthetic images, the arrow tables, a vocabulary built for
the data) is written under the cache directory: ``data.cache_dir``, else ``$REID_CACHE``, else
``~/.cache/reid``. Writes go to a temporary sibling directory that is renamed into place, so two
processes (or two nodes on a shared file system) building the same entry cannot corrupt it: the
first rename wins and the loser discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from reid.config import DataConfig
from reid.errors import DataError


def cache_root(cfg: DataConfig) -> Path:
    """The cache directory (created on first use)."""
    root = cfg.cache_dir or os.environ.get("REID_CACHE") or str(Path.home() / ".cache" / "reid")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_root(cfg: DataConfig) -> Path:
    """The dataset directory: ``cfg.root`` if set, else the synthetic dataset (generated once)."""
    if cfg.root:
        root = Path(cfg.root).expanduser()
        if not root.is_dir():
            raise DataError(f"{root}: data.root does not exist or is not a directory")
        return root.resolve()
    from reid.data import synth  # imported here: only the synthetic default needs the renderer

    syn = cfg.synthetic
    out = synthetic_dir(cfg)
    synth.generate(out, syn.num_ids, seed=syn.seed, image_size=tuple(syn.image_size))
    return out.resolve()


def synthetic_dir(cfg: DataConfig) -> Path:
    """Where the synthetic dataset of ``cfg.synthetic`` is generated (``data.root`` empty)."""
    syn = cfg.synthetic
    height, width = syn.image_size
    return cache_root(cfg) / f"synthetic-n{syn.num_ids}-s{syn.seed}-{height}x{width}"


def fingerprint(parts: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able description (cache keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` then rename ``tmp_dir`` to ``final``; an existing ``final`` wins."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():  # a real failure, not a lost race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
