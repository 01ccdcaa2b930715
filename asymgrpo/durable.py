"""Writes that survive a crash or a power loss: whole files and folders appear, or nothing does.

A rename is atomic, but only durable once both the renamed data and the folder holding the
new name have reached the disk: each helper fsyncs the data before the rename and the parent
folder after it. Without that, a power loss can leave a checkpoint folder under its final
name with truncated files in it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush one file's or one folder's contents (a folder's: its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_dir(tmp: Path, final: Path) -> Path:
    """Move the fully written folder ``tmp`` to ``final`` (replacing it), durably.

    Every file under ``tmp`` and every folder in it is fsync'd, then the rename, then the
    parent folder, so ``final`` is never seen with partial contents.
    """
    for folder, _, files in os.walk(tmp):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_path(final.parent)
    return final


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably (a temporary file, fsync, rename, fsync)."""
    tmp = path.with_name(f".tmp_{path.name}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_path(path.parent)


def append_line(path: Path, line: str) -> None:
    """Append one line with a single write, flushed to the disk (a crash can tear only this line)."""
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
