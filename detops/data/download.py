"""Download, verify and safely extract the course's tiny VOC2007 files.

The course hosts three files (:data:`VOC2007_TINY_FILES`). Each one is

1. skipped when already present and verified (idempotent: a second call downloads
   nothing and extracts nothing);
2. otherwise fetched with ``urllib`` into a temporary file next to its destination,
   hashed, and renamed into place only when the hash is accepted (atomic: an interrupted
   download never leaves a partial file under the final name);
3. verified by SHA-256.

About the digests, honestly: this package was written on a machine without internet
access, so the course files' SHA-256 digests are not known here and the table holds
``None``. For a file with no pinned digest the computed digest is recorded in
``dataset_dir/detops_download.json`` and printed in a :class:`UnverifiedDownloadWarning`
(trust on first use): later calls verify against that record and raise on any change. For
the archive, the warning also says whether its MD5 equals torchvision's published MD5 of
the official ``VOCtrainval_06-Nov-2007.tar`` (the course copy may or may not be that exact
file). To pin a digest, put it in the table (or pass your own ``files``); a mismatch
against a pinned digest raises :class:`ChecksumError` with instructions.

The archive is extracted with tarfile's ``data`` filter after every member has been
checked against it first, so nothing is written when any member is unsafe (absolute
path, ``..``, a link leading outside, a device file). Extraction goes into a temporary
folder inside ``dataset_dir`` and each file is renamed into place; a marker file records
the extracted archive's digest so the next call skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

from .._atomic import atomic_path, atomic_write_text

__all__ = [
    "RemoteFile",
    "VOC2007_TINY_FILES",
    "ChecksumError",
    "UnverifiedDownloadWarning",
    "download_voc2007_tiny",
    "safe_extract_tar",
    "sha256_file",
]

_OP = "download_voc2007_tiny"
_BASE_URL = "https://web.eecs.umich.edu/~justincj/data/"
MANIFEST_NAME = "detops_download.json"

#: torchvision's published MD5 of the official VOCtrainval_06-Nov-2007.tar (informational).
OFFICIAL_VOC2007_TRAINVAL_MD5 = "c52e279531787c972589f7e41ab4ae64"


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch. ``sha256=None`` means no pinned digest (trust on first use)."""

    name: str
    url: str
    sha256: str | None = None
    extract: bool = False
    reference_md5: str | None = None


#: The course's files. The digests are unknown (see the module docstring): ``None``.
VOC2007_TINY_FILES: tuple[RemoteFile, ...] = (
    RemoteFile(
        "VOCtrainval_06-Nov-2007.tar",
        _BASE_URL + "VOCtrainval_06-Nov-2007.tar",
        sha256=None,
        extract=True,
        reference_md5=OFFICIAL_VOC2007_TRAINVAL_MD5,
    ),
    RemoteFile("voc07_train.json", _BASE_URL + "voc07_train.json", sha256=None),
    RemoteFile("voc07_val.json", _BASE_URL + "voc07_val.json", sha256=None),
)


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the pinned or recorded digest."""


class UnverifiedDownloadWarning(UserWarning):
    """A file was accepted without a pinned digest; its computed digest was recorded."""


@overload
def sha256_file(path: str | os.PathLike[str], *, md5: Literal[False] = False) -> str: ...
@overload
def sha256_file(path: str | os.PathLike[str], *, md5: Literal[True]) -> tuple[str, str]: ...
def sha256_file(path: str | os.PathLike[str], *, md5: bool = False) -> str | tuple[str, str]:
    """Hex SHA-256 of a file (and its MD5 when ``md5=True``), read in 1 MiB chunks."""
    sha = hashlib.sha256()
    other = hashlib.md5(usedforsecurity=False) if md5 else None
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
            if other is not None:
                other.update(chunk)
    return (sha.hexdigest(), other.hexdigest()) if other is not None else sha.hexdigest()


def _fetch_url(url: str, destination: Path) -> None:
    """Stream ``url`` into ``destination`` (the default fetcher; tests replace it)."""
    request = urllib.request.Request(url, headers={"User-Agent": "detops"})
    with urllib.request.urlopen(request, timeout=60) as response, open(destination, "wb") as out:
        total = response.headers.get("Content-Length")
        try:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                desc=destination.name.split(".tmp")[0].lstrip("."),
            )
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
        try:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()


def _load_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise ValueError(
            f"{_OP}: {path} is not valid JSON ({err}); delete it to re-record the digests"
        ) from err
    return data if isinstance(data, dict) else {}


def _mismatch(
    target: Path, spec: RemoteFile, expected: str, got: str, pinned: bool
) -> ChecksumError:
    source = (
        "the digest pinned in detops.data.download.VOC2007_TINY_FILES"
        if pinned
        else f"the digest recorded in {target.parent / MANIFEST_NAME} when it was first downloaded"
    )
    return ChecksumError(
        f"{_OP}: {target} has sha256 {got}, expected {expected} ({source}). The file is "
        f"corrupt, incomplete or not the one published at {spec.url}. Delete it and run again "
        "with download=True; if you have checked the new file yourself, "
        + ("update the pinned digest." if pinned else f"delete {MANIFEST_NAME} to re-record it.")
    )


def _warn_unverified(target: Path, spec: RemoteFile, digest: str, md5: str) -> None:
    note = ""
    if spec.reference_md5 is not None:
        same = md5 == spec.reference_md5
        note = (
            f" Its MD5 {md5} {'matches' if same else 'does NOT match'} torchvision's published "
            f"MD5 of the official archive ({spec.reference_md5})."
        )
    warnings.warn(
        f"{_OP}: no pinned sha256 for {spec.name}; accepted {target} with computed sha256 "
        f"{digest} and recorded it in {target.parent / MANIFEST_NAME} (later runs verify "
        f"against it).{note} Check the digest against a trusted source and pin it in "
        "detops.data.download.VOC2007_TINY_FILES.",
        UnverifiedDownloadWarning,
        stacklevel=3,
    )


def download_voc2007_tiny(
    dataset_dir: str | os.PathLike[str],
    *,
    files: Sequence[RemoteFile] | None = None,
    fetch: Callable[[str, Path], None] | None = None,
) -> dict[str, str]:
    """Fetch, verify and extract the course's VOC2007 files into ``dataset_dir``.

    Args:
        dataset_dir: destination folder (created). After the call it holds
            ``voc07_train.json``, ``voc07_val.json``, the archive and its extracted
            ``VOCdevkit/``.
        files: what to fetch; :data:`VOC2007_TINY_FILES` when ``None``.
        fetch: ``fetch(url, destination_path)`` writes the URL's bytes to the path; the
            ``urllib`` fetcher when ``None``. Tests pass a fake; nothing else should.

    Returns:
        dict[str, str]: file name -> its SHA-256 (as verified or recorded).

    Raises:
        ChecksumError: a file differs from its pinned or recorded digest (nothing is
            renamed into place for a fresh download).
        RuntimeError: the download failed (says where to put a file fetched by hand).
        ValueError: the archive holds an unsafe member (nothing is extracted).
    """
    root = Path(dataset_dir)
    root.mkdir(parents=True, exist_ok=True)
    files = VOC2007_TINY_FILES if files is None else tuple(files)
    fetch = _fetch_url if fetch is None else fetch
    manifest_path = root / MANIFEST_NAME
    manifest = _load_manifest(manifest_path)
    digests: dict[str, str] = {}

    for spec in files:
        target = root / spec.name
        recorded = manifest.get(spec.name, {}).get("sha256")
        expected = spec.sha256 or recorded
        pinned = spec.sha256 is not None
        if target.is_file():
            digest, md5 = sha256_file(target, md5=True)
            if expected is not None and digest != expected:
                raise _mismatch(target, spec, expected, digest, pinned)
        else:
            with atomic_path(target) as tmp:
                try:
                    fetch(spec.url, tmp)
                except (urllib.error.URLError, OSError, TimeoutError) as err:
                    raise RuntimeError(
                        f"{_OP}: could not download {spec.url} ({err}). Without network access, "
                        f"download it elsewhere and place it at {target}, then run again; it "
                        "will be verified (or its digest recorded)."
                    ) from err
                digest, md5 = sha256_file(tmp, md5=True)
                if expected is not None and digest != expected:
                    raise _mismatch(target, spec, expected, digest, pinned)
        if expected is None:
            _warn_unverified(target, spec, digest, md5)
        digests[spec.name] = digest
        if manifest.get(spec.name, {}).get("sha256") != digest:
            manifest[spec.name] = {"sha256": digest, "url": spec.url, "pinned": pinned}
            atomic_write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))

    for spec in files:
        if not spec.extract:
            continue
        marker = root / f".{spec.name}.extracted"
        if marker.is_file() and marker.read_text().strip() == digests[spec.name]:
            continue
        safe_extract_tar(root / spec.name, root)
        atomic_write_text(marker, digests[spec.name] + "\n")
    return digests


def _unsafe_member(member: tarfile.TarInfo, dest_real: str) -> str:
    """Why ``member`` may not be extracted into ``dest_real`` (the rules of PEP 706's data
    filter, for Pythons that lack it), or "" when it may."""

    def inside(path: str) -> bool:
        real = os.path.realpath(path)
        return real == dest_real or real.startswith(dest_real + os.sep)

    target = os.path.join(dest_real, member.name)
    if not inside(target):
        return "outside the destination"
    if member.isdev() or not (
        member.isfile() or member.isdir() or member.islnk() or member.issym()
    ):
        return "a device, FIFO or other special file"
    if member.issym():
        if os.path.isabs(member.linkname):
            return "a symlink to an absolute path"
        if not inside(os.path.join(os.path.dirname(target), member.linkname)):
            return "a symlink leading outside the destination"
    if member.islnk() and not inside(os.path.join(dest_real, member.linkname)):
        return "a hard link leading outside the destination"
    return ""


def safe_extract_tar(
    archive: str | os.PathLike[str], destination: str | os.PathLike[str]
) -> list[str]:
    """Extract ``archive`` into ``destination``; refuse if any member is unsafe.

    Every member is first checked with :func:`tarfile.data_filter` (no absolute paths, no
    ``..``, no links leading outside ``destination``, no device files); if any fails,
    ``ValueError`` lists them and nothing is written. Members are extracted with
    ``filter="data"`` into a temporary folder inside ``destination`` and then renamed
    into place file by file, so no file appears half-written; existing files of the same
    name are replaced, other files are left alone. On a Python without the extraction
    filters of PEP 706 (before 3.10.12 / 3.11.4) the same rules are checked here, and the
    members are extracted without their owners, modes or times.

    Returns:
        list[str]: the extracted members' names.
    """
    op = "safe_extract_tar"
    filters = hasattr(tarfile, "data_filter")
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    dest_real = os.path.realpath(destination)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        problems = []
        for member in members:
            if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
                # The data filter would strip the slash; an absolute name has no place in
                # a dataset archive, so it is refused outright.
                problems.append(f"{member.name!r} (absolute path)")
                continue
            if not filters:
                reason = _unsafe_member(member, dest_real)
                if reason:
                    problems.append(f"{member.name!r} ({reason})")
                continue
            try:
                tarfile.data_filter(member, dest_real)
            except tarfile.FilterError as err:
                problems.append(f"{member.name!r} ({type(err).__name__}: {err})")
        if problems:
            raise ValueError(
                f"{op}: refusing to extract {archive}: {len(problems)} member(s) would land "
                f"outside {str(destination)!r} or are unsafe: {'; '.join(problems[:10])}"
            )
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=destination))
        try:
            if filters:
                tar.extractall(staging, filter="data")
            else:
                for member in members:
                    tar.extract(member, staging, set_attrs=False)
            for folder, dirs, names in os.walk(staging):
                rel = Path(folder).relative_to(staging)
                (destination / rel).mkdir(parents=True, exist_ok=True)
                for name in names + [d for d in dirs if (Path(folder) / d).is_symlink()]:
                    os.replace(Path(folder) / name, destination / rel / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [member.name for member in members]
