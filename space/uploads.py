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

from training.batch.sources import ZIP_ERRORS, picture_members, read_member
from xai.errors import UserError
from xai.io import MAX_BYTES


class UploadError(UserError, ValueError):
    """Files that cannot make a category; the message says which limit or file, in plain words."""


def _clean(name: str) -> str:
    stem = Path(name.replace("\\", "/")).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem)[-80:] or "picture"


Plan = list[tuple[Path, list[zipfile.ZipInfo] | None]]  # each upload, with its picture members when a zip


def gather(files: list, dest: Path, max_pictures: int, max_bytes: int, what: str = "good pictures",
           job: str = "fit") -> list[Path]:
    """Copy the pictures of `files` (paths; zips are expanded) into `dest`; UploadError past a cap or for a zip
    that cannot be read. Returns the copies in the order given. Every zip entry counts toward a cap on entries
    (pictures or not), and each zip is opened once, so a zip of a million empty entries costs one refusal."""
    if isinstance(files, (str, Path)):
        files = [files]
    if not isinstance(files, (list, tuple)) or not all(isinstance(f, (str, Path)) for f in files):
        raise UploadError(f"Send the {what} as a list of files.")
    if len(files) > max_pictures:
        raise UploadError(f"Too many {what}: at most {max_pictures} in one {job}.")
    paths = list(dict.fromkeys(Path(f) for f in files))  # the same file listed twice counts once
    return _copy(_plan(paths, max_pictures, max_bytes, what, job), dest)


def _plan(paths: list[Path], max_pictures: int, max_bytes: int, what: str, job: str) -> Plan:
    """What to copy from each upload, refused at the first cap it passes (entries, pictures, bytes)."""
    plan: Plan = []
    total = n_pictures = n_entries = 0
    for path in paths:
        if not path.is_file():
            raise UploadError(f"{_clean(path.name)} was not received.")
        if zipfile.is_zipfile(path):
            members, n_entries = _zip_members(path, n_entries, max_pictures)
            total += sum(m.file_size for m in members)
            n_pictures += len(members)
            plan.append((path, members))
        else:
            total += path.stat().st_size
            n_pictures += 1
            plan.append((path, None))
        if n_pictures > max_pictures:
            raise UploadError(f"Too many {what}: at most {max_pictures} in one {job}.")
        if total > max_bytes:
            raise UploadError(f"The {what} add up to more than {max_bytes // 2**20} MB; send fewer or smaller ones.")
    if not n_pictures:
        raise UploadError(f"No {what} were found (send image files, or a zip of .png/.jpg files).")
    return plan


def _zip_members(path: Path, n_entries: int, max_pictures: int) -> tuple[list[zipfile.ZipInfo], int]:
    """A zip's picture members and the entries counted so far with its own; refused past the entry cap or for a
    member over MAX_BYTES."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except ZIP_ERRORS:
        raise UploadError(f"{_clean(path.name)} is not a readable zip file.") from None
    n_entries += len(infos)
    if n_entries > max_entries(max_pictures):
        raise UploadError(f"The zip files hold more than {max_entries(max_pictures)} entries; send only "
                          f"the pictures (at most {max_pictures}).")
    members = picture_members(infos)
    for member in members:
        if member.file_size > MAX_BYTES:
            raise UploadError(f"{_clean(path.name)}: {_clean(member.filename)} is larger than "
                              f"{MAX_BYTES // 2**20} MB.")
    return members, n_entries


def _copy(plan: Plan, dest: Path) -> list[Path]:
    """The planned pictures copied into `dest`, numbered in order."""
    dest.mkdir(parents=True, exist_ok=True)
    copies: list[Path] = []

    def target(name: str) -> Path:
        copies.append(dest / f"{len(copies):03d}_{_clean(name)}")
        return copies[-1]

    for path, members in plan:
        if members is None:
            shutil.copyfile(path, target(path.name))
            continue
        try:
            with zipfile.ZipFile(path) as archive:
                for member in members:
                    target(member.filename).write_bytes(read_member(archive, member))  # bounded by its declared size
        except ZIP_ERRORS:
            # encrypted members, unknown compression, corrupt data: one message, no server paths
            raise UploadError(f"{_clean(path.name)}: a picture in it could not be unpacked (encrypted, corrupt or "
                              "an unusual compression).") from None
    return copies


def max_entries(max_pictures: int) -> int:
    """Entries (of any kind) all zips of one fit may hold together."""
    return 4 * max_pictures + 100
