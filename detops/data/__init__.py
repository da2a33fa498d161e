"""Datasets and their file formats.

- Classification (the course code's three layouts): :func:`folder_per_class_dataset`
  (torchvision's ImageFolder), :class:`LabelFileDataset` (``labels.txt``),
  :class:`PerImageLabelDataset` (one label file per image).
- Detection: :class:`VOC2007DetectionTiny` (the course's JSON format, optional verified
  download) and :func:`make_synthetic_detection_dataset` (the same format, no download).
"""

from ._images import UnreadableImageError
from .classification import (
    IMAGE_EXTENSIONS,
    LabelFileDataset,
    PerImageLabelDataset,
    folder_per_class_dataset,
    is_image_file,
)
from .download import (
    VOC2007_TINY_FILES,
    ChecksumError,
    RemoteFile,
    UnverifiedDownloadWarning,
    download_voc2007_tiny,
    safe_extract_tar,
)
from .synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_COLORS,
    make_synthetic_detection_dataset,
    synthetic_image,
    synthetic_shape_mask,
)
from .voc import IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES, VOC2007DetectionTiny

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_COLORS",
    "VOC2007_TINY_FILES",
    "VOC_CLASSES",
    "ChecksumError",
    "LabelFileDataset",
    "PerImageLabelDataset",
    "RemoteFile",
    "UnreadableImageError",
    "UnverifiedDownloadWarning",
    "VOC2007DetectionTiny",
    "download_voc2007_tiny",
    "folder_per_class_dataset",
    "is_image_file",
    "make_synthetic_detection_dataset",
    "safe_extract_tar",
    "synthetic_image",
    "synthetic_shape_mask",
]
