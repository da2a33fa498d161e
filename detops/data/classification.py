"""The seed's three image-classification layouts, without silent data loss.

1. Folder per class (``root/cat/1.jpg``): :func:`folder_per_class_dataset` returns
   torchvision's :class:`~torchvision.datasets.ImageFolder` (not rewritten) after checking
   that no image sits loose in ``root``, where ImageFolder would skip it; hidden folders
   (``.ipynb_checkpoints``) are not classes.
2. One ``labels.txt`` with ``filename label`` per line: :class:`LabelFileDataset`.
3. One label file per image (``labels/001.txt`` holding ``0``, or ``1 0 1``):
   :class:`PerImageLabelDataset`.

Shared rules (the seed broke each of them silently):

- Samples are sorted by their path relative to the image folder: deterministic order.
- Image extensions match case-insensitively (``.JPG`` counts), the same list as
  torchvision's ``IMG_EXTENSIONS``.
- A malformed line raises ``ValueError`` naming the file and the line number.
- A label for a missing image, or an image with no label, raises ``ValueError`` listing them.
- A path that leaves the image folder (``..``, an absolute path, a symlink pointing out)
  raises ``ValueError``.
- A dataset without images raises ``ValueError``; a label file that is not UTF-8 text
  raises ``ValueError`` naming it.
- Every image file must open with PIL: its header is read when the dataset is built
  (cheap, no pixels decoded), and files whose header PIL cannot read raise ``ValueError``
  listing them. Damage past the header (a truncated JPEG) shows only when the pixels are
  decoded: then ``dataset[i]`` raises :class:`~detops.data.UnreadableImageError` (a
  ``ValueError``) naming the file, chained from PIL's error.

So the layout, the labels and every image header are checked when the dataset is built,
and errors surface before training starts; only the pixels are read later.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .._checks import check_bool
from ._images import load_rgb, raise_if_unreadable
from ._paths import bracketed_listing, checked_relative_path, is_inside

__all__ = [
    "IMAGE_EXTENSIONS",
    "folder_per_class_dataset",
    "LabelFileDataset",
    "PerImageLabelDataset",
    "is_image_file",
]

IMAGE_EXTENSIONS: tuple[str, ...] = tuple(IMG_EXTENSIONS)
_SEPARATOR = re.compile(r"\s*,\s*|\s+")
# A label file's line: the label is the last field, so a filename may hold spaces.
_NAME_AND_LABEL = re.compile(r"(?P<name>.+?)(?:\s*,\s*|\s+)(?P<label>[+-]?\d+)")
_INTEGER = re.compile(r"[+-]?\d+")


def is_image_file(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` ends with an image extension, case-insensitively (``.JPG`` counts)."""
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


def _raise_if_disagree(prefix: str, problems: dict[str, list[str]]) -> None:
    """Raise one ValueError listing every non-empty group of mismatched names."""
    parts = [f"{what} {bracketed_listing(names)}" for what, names in problems.items() if names]
    if parts:
        raise ValueError(f"{prefix}: " + "; ".join(parts))


def _require_dir(op: str, name: str, path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{op}: {name} must be a path (str or os.PathLike), got {type(path).__name__}"
        )
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{op}: {name} must be an existing directory, got {str(folder)!r}")
    return folder


def _scan(op: str, root: Path, keep: Callable[[str], bool]) -> list[str]:
    """Sorted POSIX paths relative to ``root`` of the files ``keep`` accepts (recursive).

    Symlinked folders are followed (as ImageFolder does) unless they lead to one of their
    own ancestors (a loop). Raises when a kept file or a followed folder resolves outside ``root``.
    """
    root_real = os.path.realpath(root)
    found = []
    escaping = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        folder_real = os.path.realpath(folder)
        rel_folder = PurePosixPath(Path(folder).relative_to(root).as_posix())
        if not is_inside(root_real, folder_real):
            escaping.append(f"{rel_folder}/")
            dirs[:] = []
            continue
        if folder != str(root):
            parent_real = os.path.realpath(os.path.dirname(folder))
            if os.path.commonpath([folder_real, parent_real]) == folder_real:
                dirs[:] = []  # a link to an ancestor: following it would never end
                continue
        for name in files:
            if not keep(name):
                continue
            full = os.path.join(folder, name)
            rel = str(rel_folder / name)
            if not is_inside(root_real, full):
                escaping.append(rel)
                continue
            found.append(rel)
    if escaping:
        raise ValueError(
            f"{op}: files must stay inside {str(root)!r}, got links pointing outside: "
            f"{bracketed_listing(sorted(escaping))}"
        )
    return sorted(found)


def _read_label_text(op: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{op}: {path} must be UTF-8 text, got undecodable bytes: {err}") from err


class _ImageFolderWithoutHiddenClasses(ImageFolder):
    """ImageFolder whose classes leave out hidden folders (names starting with ``.``)."""

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        entries = [entry for entry in os.scandir(directory) if entry.is_dir()]
        classes = sorted(entry.name for entry in entries if not entry.name.startswith("."))
        if not classes:
            hidden = sorted(entry.name for entry in entries if entry.name.startswith("."))
            left_out = f" (hidden folders are not classes: {bracketed_listing(hidden)})"
            raise FileNotFoundError(
                f"folder_per_class_dataset: found no class folder in {str(directory)!r}"
                + (left_out if hidden else "")
            )
        return classes, {name: i for i, name in enumerate(classes)}


def folder_per_class_dataset(
    root: str | os.PathLike[str],
    transform: Callable[[Image.Image], Any] | None = None,
    target_transform: Callable[[int], Any] | None = None,
) -> ImageFolder:
    """The folder-per-class layout (``root/<class name>/<image>``) as torchvision's ImageFolder.

    ImageFolder already sorts classes and files and matches extensions case-insensitively
    (``.JPG`` counts); it raises ``FileNotFoundError`` for a class folder without images.
    The one way it loses data silently, an image placed directly in ``root``, raises here.
    Files whose extension is not an image extension (``notes.txt``) are not samples.
    Hidden folders directly in ``root`` (names starting with ``.``: ``.ipynb_checkpoints``,
    ``.cache``) are not classes, unlike in torchvision's ImageFolder where they would
    shift every label after them; folders inside a class folder are all searched, as
    ImageFolder does. Every image's header is read once here (see the module docstring).

    Args:
        root: the dataset folder, one sub-folder per class; class ``i`` is the ``i``-th
            non-hidden folder name in sorted order.
        transform: applied to the PIL RGB image.
        target_transform: applied to the integer class index.

    Returns:
        ImageFolder: items are ``(image, class_index)``; ``.classes``, ``.class_to_idx``
        and ``.samples`` (sorted ``(path, class_index)`` pairs) as in torchvision. An
        image that fails to decode raises ``ValueError`` naming it.

    Raises:
        ValueError: ``root`` is not a directory, images sit directly in ``root``, or
            images PIL cannot open (listed).
        FileNotFoundError: (torchvision's) no class folder, or a class folder without images.
    """
    op = "folder_per_class_dataset"
    folder = _require_dir(op, "root", root)
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and is_image_file(p.name))
    if loose:
        raise ValueError(
            f"{op}: images must sit in a class sub-folder of {str(folder)!r}, got images "
            f"directly in it: {bracketed_listing(loose)}"
        )
    dataset = _ImageFolderWithoutHiddenClasses(
        str(folder),
        transform=transform,
        target_transform=target_transform,
        loader=functools.partial(load_rgb, op),
    )
    raise_if_unreadable(op, folder, (os.path.relpath(path, folder) for path, _ in dataset.samples))
    return dataset


class _ImageLabelSamples(Dataset):
    """Items ``(transform(RGB image), target_transform(target))`` from ``samples``, a list of
    ``(image path, label)``; the target is the label unless a subclass says otherwise."""

    _op: str
    samples: list[tuple[str, Any]]
    transform: Callable[[Image.Image], Any] | None
    target_transform: Callable[[Any], Any] | None

    def __len__(self) -> int:
        return len(self.samples)

    def _target(self, label: Any) -> Any:
        return label

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, label = self.samples[index]
        image = load_rgb(self._op, path)
        if self.transform is not None:
            image = self.transform(image)
        target = self._target(label)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


class LabelFileDataset(_ImageLabelSamples):
    """Images in one folder, labels in one text file: ``filename label`` per line.

    The separator is whitespace or a comma (``001.jpg 0``, ``001.jpg,0``, ``001.jpg, 0``);
    the label is the last field, so a filename may hold spaces (``IMG 001.jpg 0``). Blank
    lines and lines starting with ``#`` are skipped. A filename may name a file in a
    sub-folder (``cats/001.jpg``) but must stay inside ``image_dir``.

    Args:
        image_dir: the image folder (searched recursively for images).
        label_file: the text file of ``filename label`` lines.
        transform: applied to the PIL RGB image.
        target_transform: applied to the integer label.

    Attributes:
        samples (list[tuple[str, int]]): ``(image path, label)``, sorted by the path
            relative to ``image_dir``.
        targets (list[int]): the labels in the same order.

    Raises:
        ValueError: a malformed line (wrong field count, a label that is not a
            non-negative integer, a non-image extension), with file and line number; a
            filename listed twice; a path leaving ``image_dir``; labels naming missing
            images or images without a label (both listed); no images at all; a label
            file that is not UTF-8; images PIL cannot open (listed).
    """

    _op = "LabelFileDataset"

    def __init__(
        self,
        image_dir: str | os.PathLike[str],
        label_file: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
    ) -> None:
        op = self._op
        self.image_dir = _require_dir(op, "image_dir", image_dir)
        self.label_file = Path(label_file)
        if not self.label_file.is_file():
            raise ValueError(f"{op}: label_file must be an existing file, got {str(label_file)!r}")
        self.transform = transform
        self.target_transform = target_transform

        labels: dict[str, int] = {}
        first_line: dict[str, int] = {}
        text = _read_label_text(op, self.label_file)
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{self.label_file}:{lineno}"
            fields = _NAME_AND_LABEL.fullmatch(line)
            listed = fields["name"] if fields else ""
            # (a name without an image extension but with a separator: a field too many)
            extra_field = not is_image_file(listed) and _SEPARATOR.search(listed)
            if fields is None or int(fields["label"]) < 0 or extra_field:
                raise ValueError(
                    f"{op}: {where}: expected 'filename label' (separated by a space or a "
                    f"comma, label a non-negative integer), got {raw!r}"
                )
            name = checked_relative_path(op, self.image_dir, listed, where)
            if not is_image_file(name):
                raise ValueError(
                    f"{op}: {where}: filename must have an image extension "
                    f"{IMAGE_EXTENSIONS} (any case), got {listed!r}"
                )
            label = int(fields["label"])
            if name in labels:
                raise ValueError(
                    f"{op}: {where}: {name!r} is listed twice (first on line {first_line[name]})"
                )
            labels[name] = label
            first_line[name] = lineno

        on_disk = set(_scan(op, self.image_dir, is_image_file))
        missing = sorted(set(labels) - on_disk)
        unlabeled = sorted(on_disk - set(labels))
        _raise_if_disagree(
            f"{op}: {self.label_file} and {str(self.image_dir)!r} disagree",
            {"labels for missing images": missing, "images without a label": unlabeled},
        )
        if not labels:
            raise ValueError(
                f"{op}: {str(self.image_dir)!r} holds no images and {self.label_file} lists "
                f"none; expected at least one image with an extension in {IMAGE_EXTENSIONS}"
            )
        raise_if_unreadable(op, self.image_dir, sorted(labels))
        self.samples = [(str(self.image_dir / name), labels[name]) for name in sorted(labels)]
        self.targets: list[int] = [label for _, label in self.samples]


class PerImageLabelDataset(_ImageLabelSamples):
    """Images in one folder, one label file per image in another: ``labels/<stem>.txt``.

    ``images/a/001.jpg`` pairs with ``labels/a/001.txt``. The label file holds one
    non-blank line: a single integer (``multi_label=False``), or a multi-hot vector of
    0/1 values separated by spaces or commas (``multi_label=True``, e.g. ``1 0 1``), of the
    same length in every file so a DataLoader can stack them.

    Args:
        image_dir: the image folder (searched recursively).
        label_dir: the label folder (``.txt`` files, any case, searched recursively;
            other files are ignored).
        transform: applied to the PIL RGB image.
        target_transform: applied to the target.
        multi_label: read multi-hot vectors instead of single labels (a ``bool``).

    Attributes:
        samples (list[tuple[str, int | tuple[int, ...]]]): ``(image path, label)``,
            sorted by the image path relative to ``image_dir``.
        targets: the labels in the same order.
        num_labels (int | None): the vector length when ``multi_label``.

    Items are ``(image, target)``; the target is an ``int``, or an int64 tensor ``[L]``
    when ``multi_label``.

    Raises:
        TypeError: ``multi_label`` is not a ``bool``.
        ValueError: a malformed label file (file and line number), or one that is not
            UTF-8; multi-hot vectors of different lengths; two images with the same stem
            (``a.jpg``, ``a.png``); images without a label file or label files without an
            image (both listed); no images at all; images PIL cannot open (listed).
    """

    _op = "PerImageLabelDataset"

    def __init__(
        self,
        image_dir: str | os.PathLike[str],
        label_dir: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        multi_label: bool = False,
    ) -> None:
        op = self._op
        self.image_dir = _require_dir(op, "image_dir", image_dir)
        self.label_dir = _require_dir(op, "label_dir", label_dir)
        self.transform = transform
        self.target_transform = target_transform
        self.multi_label = check_bool(op, "multi_label", multi_label)

        images = _scan(op, self.image_dir, is_image_file)
        by_stem: dict[str, str] = {}
        clashes = []
        for rel in images:
            stem = str(PurePosixPath(rel).with_suffix(""))
            if stem in by_stem:
                clashes.append(f"{by_stem[stem]} / {rel}")
            by_stem[stem] = rel
        if clashes:
            raise ValueError(
                f"{op}: each image needs its own label file, got images sharing a stem "
                f"(and so a label file): {bracketed_listing(clashes)}"
            )
        label_files = _scan(op, self.label_dir, lambda name: name.lower().endswith(".txt"))
        label_by_stem = {str(PurePosixPath(rel).with_suffix("")): rel for rel in label_files}
        unlabeled = sorted(by_stem[s] for s in set(by_stem) - set(label_by_stem))
        orphans = sorted(label_by_stem[s] for s in set(label_by_stem) - set(by_stem))
        _raise_if_disagree(
            f"{op}: {str(self.image_dir)!r} and {str(self.label_dir)!r} disagree",
            {"images without a label file": unlabeled, "label files without an image": orphans},
        )
        if not images:
            raise ValueError(
                f"{op}: {str(self.image_dir)!r} holds no images and {str(self.label_dir)!r} "
                f"no label files; expected at least one image with an extension in "
                f"{IMAGE_EXTENSIONS}"
            )
        raise_if_unreadable(op, self.image_dir, images)

        self.samples = []
        lengths: dict[int, str] = {}
        for stem in sorted(by_stem, key=lambda s: by_stem[s]):
            label = self._parse(op, self.label_dir / label_by_stem[stem])
            if isinstance(label, tuple):  # multi_label
                lengths.setdefault(len(label), label_by_stem[stem])
            self.samples.append((str(self.image_dir / by_stem[stem]), label))
        if len(lengths) > 1:
            seen = ", ".join(f"{n} values in {f}" for n, f in sorted(lengths.items()))
            raise ValueError(
                f"{op}: multi-hot label vectors must all have the same length, got {seen}"
            )
        self.num_labels: int | None = next(iter(lengths)) if lengths else None
        self.targets = [label for _, label in self.samples]

    def _parse(self, op: str, path: Path) -> int | tuple[int, ...]:
        lines = [
            (lineno, raw)
            for lineno, raw in enumerate(_read_label_text(op, path).splitlines(), 1)
            if raw.strip()
        ]
        if not lines:
            raise ValueError(f"{op}: {path}:1: expected one line of labels, got an empty file")
        if len(lines) > 1:
            raise ValueError(
                f"{op}: {path}:{lines[1][0]}: expected one line of labels, got a second "
                f"non-blank line {lines[1][1]!r}"
            )
        lineno, raw = lines[0]
        tokens = _SEPARATOR.split(raw.strip())
        where = f"{path}:{lineno}"
        if self.multi_label:
            if not all(t in ("0", "1") for t in tokens):
                raise ValueError(
                    f"{op}: {where}: expected a multi-hot vector of 0/1 values separated by "
                    f"spaces or commas, got {raw!r}"
                )
            return tuple(int(t) for t in tokens)
        if len(tokens) != 1 or not _INTEGER.fullmatch(tokens[0]) or int(tokens[0]) < 0:
            raise ValueError(
                f"{op}: {where}: expected a single non-negative integer label, got {raw!r} "
                "(use multi_label=True for multi-hot vectors)"
            )
        return int(tokens[0])

    def _target(self, label: Any) -> Any:
        return torch.tensor(label, dtype=torch.int64) if self.multi_label else label
