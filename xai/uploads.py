"""The pictures of one /fit: several uploaded files or zips of them, copied into the category's folder within caps
on how many and how many bytes (zip members counted by their uncompressed size, before anything is unpacked).

Names from a zip are never used as paths: every picture is written as `NNN_<cleaned name>` inside the folder, so
`../` or absolute member names cannot reach anywhere else. Each file is decoded later by xai.io like any upload.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

from xai.io import MAX_BYTES

PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


class UploadError(ValueError):
    """Files that cannot make a category; the message says which limit or file, in plain words."""


def _clean(name: str) -> str:
    stem = Path(name.replace("\\", "/")).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem)[-80:] or "picture"


def _is_picture_member(info: zipfile.ZipInfo) -> bool:
    name = info.filename.replace("\\", "/")
    hidden = any((part.startswith(".") and part not in (".", "..")) or part == "__MACOSX" for part in name.split("/"))
    return not info.is_dir() and not hidden and Path(name).suffix.lower() in PICTURE_SUFFIXES


def gather(files: list, dest: Path, max_pictures: int, max_bytes: int, what: str = "good pictures") -> list[Path]:
    """Copy the pictures of `files` (paths; zips are expanded) into `dest`; UploadError past a cap or for a zip
    that cannot be read. Returns the copies in the order given."""
    if isinstance(files, (str, Path)):
        files = [files]
    if not isinstance(files, (list, tuple)) or not all(isinstance(f, (str, Path)) for f in files):
        raise UploadError(f"Send the {what} as a list of files.")
    entries: list[tuple[str, Path, zipfile.ZipInfo | None]] = []  # (name, file, member)
    total = 0
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise UploadError(f"{path.name} was not received.")
        if zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as archive:
                    members = [m for m in archive.infolist() if _is_picture_member(m)]
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise UploadError(f"{path.name} is not a readable zip file ({exc}).") from None
            for member in members:
                if member.file_size > MAX_BYTES:
                    raise UploadError(f"{path.name}: {_clean(member.filename)} is larger than "
                                      f"{MAX_BYTES // 2**20} MB.")
                total += member.file_size
                entries.append((member.filename, path, member))
        else:
            total += path.stat().st_size
            entries.append((path.name, path, None))
        if len(entries) > max_pictures:
            raise UploadError(f"Too many {what}: at most {max_pictures} in one fit.")
        if total > max_bytes:
            raise UploadError(f"The {what} add up to more than {max_bytes // 2**20} MB; send fewer or smaller ones.")
    if not entries:
        raise UploadError(f"No {what} were found (send image files, or a zip of .png/.jpg files).")
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for i, (name, path, member) in enumerate(entries):
        target = dest / f"{i:03d}_{_clean(name)}"
        if member is None:
            shutil.copyfile(path, target)
        else:
            try:
                with zipfile.ZipFile(path) as archive, archive.open(member) as src, open(target, "wb") as out:
                    out.write(src.read(member.file_size + 1)[:MAX_BYTES + 1])  # the declared size bounds the read
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise UploadError(f"{path.name}: {_clean(name)} could not be unpacked ({exc}).") from None
        copies.append(target)
    return copies
