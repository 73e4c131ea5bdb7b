"""Persistent, content-addressed cache of preprocessed model inputs.

Training reads each CT once: the model input array is stored as ``.npy``
under a key hashing the *source* (file paths, sizes and modification times,
or the voxel bytes and geometry of a volume, or any description string) and
the :class:`~medai.preprocess.PreprocessParams`. A change to either gives a
new key, so stale entries are never used. Default folder:
``$MEDAI_CACHE_DIR`` or ``~/.cache/medai/inputs``. No torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medai.preprocess import PreprocessParams
from medai.volume import Volume

__all__ = ["InputCache", "default_cache_dir", "path_fingerprint", "volume_fingerprint"]

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$MEDAI_CACHE_DIR`` or ``~/.cache/medai/inputs``."""
    env = os.environ.get("MEDAI_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "medai" / "inputs"


def path_fingerprint(path: str | Path) -> str:
    """Hash of a file or folder tree's names, sizes and modification times (not contents: fast).

    Example:
        >>> import tempfile
        >>> len(path_fingerprint(tempfile.mkdtemp()))
        64
    """
    path = Path(path).resolve()
    digest = hashlib.sha256(str(path).encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(path.parent)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def volume_fingerprint(volume: Volume) -> str:
    """Hash of a volume's voxels and geometry.

    Example:
        >>> v = Volume(np.zeros((2, 2, 2), np.int16), (1.0, 1.0, 1.0))
        >>> volume_fingerprint(v) == volume_fingerprint(v.with_array(np.ones((2, 2, 2), np.int16)))
        False
    """
    digest = hashlib.blake2b(digest_size=32)
    digest.update(np.ascontiguousarray(volume.hu).tobytes())
    digest.update(repr((volume.hu.dtype.str, volume.shape, volume.spacing_mm, volume.origin_mm)).encode())
    digest.update(np.asarray(volume.direction, dtype=np.float64).tobytes())
    return digest.hexdigest()


class InputCache:
    """``.npy`` files keyed by (source fingerprint, preprocessing parameters).

    Example:
        >>> import tempfile
        >>> cache = InputCache(tempfile.mkdtemp())
        >>> a = cache.get_or_compute("src-1", PreprocessParams(), lambda: np.ones((1, 2, 2, 2), np.float32))
        >>> b = cache.get_or_compute("src-1", PreprocessParams(), lambda: np.zeros((1, 2, 2, 2), np.float32))
        >>> float(b.sum())
        8.0
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def key(self, source: str, params: PreprocessParams) -> str:
        """Cache key of a source fingerprint under given parameters."""
        text = json.dumps({"source": source, "params": params.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        """The cached array, or ``None`` when absent or unreadable."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return np.load(path)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cache entry %s: %s", path, exc)
            return None

    def save(self, key: str, array: np.ndarray) -> None:
        """Store an array (atomically: concurrent writers never leave half files)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, array)
        os.replace(tmp, path)

    def get_or_compute(self, source: str, params: PreprocessParams, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Load the array for ``(source, params)`` or compute, store and return it."""
        key = self.key(source, params)
        cached = self.load(key)
        if cached is not None:
            return cached
        array = compute()
        self.save(key, array)
        return array
