"""Atomic, versioned index directories.

An index directory holds generations (``gen-*``) and a ``CURRENT`` file naming the live one.
A new generation is written in full, synced, and only then published by atomically replacing
``CURRENT``; a crash or Ctrl-C mid-write leaves the previous generation in use. Loading never
executes code: JSON, Parquet and ``.npy`` arrays read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from reranker.errors import IndexCorruptError, IndexExistsError, IndexNotFoundError

CURRENT = "CURRENT"
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def exists(directory: str | Path) -> bool:
    return (Path(directory) / CURRENT).is_file()


class Generation:
    """A generation being written. Use as a context manager; it is published on clean exit."""

    def __init__(self, directory: str | Path, *, overwrite: bool = False) -> None:
        self.root = Path(directory)
        if exists(self.root) and not overwrite:
            raise IndexExistsError(
                f"an index already exists at {self.root}; pass --overwrite to replace it"
            )
        if self.root.exists() and not self.root.is_dir():
            raise IndexExistsError(f"{self.root} exists and is not a directory")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.name = f"gen-{stamp}-{uuid.uuid4().hex[:8]}"
        self.path = self.root / self.name

    def __enter__(self) -> Generation:
        self.path.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        self._publish()

    def write_manifest(self, manifest: dict) -> None:
        files = {}
        for p in sorted(self.path.rglob("*")):  # one level of folders (e.g. a model's files)
            if p.is_file() and p.name != MANIFEST:
                name = p.relative_to(self.path).as_posix()
                files[name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        manifest = dict(manifest, files=files)
        (self.path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))

    def _publish(self) -> None:
        for p in self.path.rglob("*"):
            _fsync(p)
        _fsync(self.path)
        tmp = self.root / f".{CURRENT}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(self.name + "\n")
        _fsync(tmp)
        os.replace(tmp, self.root / CURRENT)
        _fsync(self.root)
        for old in self.root.iterdir():  # earlier generations and leftovers of crashed writes
            if old.name != self.name and (old.name.startswith("gen-") or old.name.startswith(".")):
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)


def open_current(directory: str | Path, *, verify: bool = True) -> tuple[Path, dict]:
    """Return the live generation's path and its manifest, checking file sizes and checksums."""
    root = Path(directory)
    pointer = root / CURRENT
    if not pointer.is_file():
        raise IndexNotFoundError(
            f"no index at {root}; build one with: reranker index CATALOG --index-dir {root}"
        )
    gen = root / pointer.read_text().strip()
    if not gen.is_dir() or "/" in pointer.read_text().strip():
        raise IndexCorruptError(f"index at {root} is corrupt: {CURRENT} names a missing generation")
    try:
        manifest = json.loads((gen / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(
            f"index at {root} is corrupt: cannot read {MANIFEST} ({exc})"
        ) from None
    for name, meta in manifest.get("files", {}).items():
        if name.startswith("/") or ".." in name.split("/"):
            raise IndexCorruptError(f"index at {root} is corrupt: {name!r} is outside it")
        p = gen / name
        if not p.is_file():
            raise IndexCorruptError(f"index at {root} is corrupt: {name} is missing")
        if p.stat().st_size != meta["bytes"] or (verify and sha256_file(p) != meta["sha256"]):
            raise IndexCorruptError(
                f"index at {root} is corrupt: {name} does not match its checksum; rebuild the index"
            )
    return gen, manifest


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
