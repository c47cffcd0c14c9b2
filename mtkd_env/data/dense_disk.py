"""On-disk datasets of the dense tasks, read into memory at a fixed size (nothing is downloaded).

- `cityscapes` (segmentation): `data_dir/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png` and
  `data_dir/gtFine/{train,val}/<city>/*_gtFine_labelIds.png`; the label ids become the 19 train ids
  of the benchmark (the others `IGNORE_INDEX`, 255); Cityscapes' val split is the test split.
- `segfolder` (segmentation, ADE20K's layout): `data_dir/images/{training,validation}/*.jpg|png`
  and `data_dir/annotations/{training,validation}/<same stem>.png` of class ids;
  `reduce_zero_label` (ADE20K: 0 = "other") maps 0 to 255 and k to k - 1.
- `coco` (detection): `data_dir/annotations/instances_{train,val}2017.json` (COCO JSON) and the
  images in `data_dir/{train,val}2017/`; categories become labels 0..C-1 in id order, crowd boxes
  are left out, boxes follow the resize; val2017 is the test split.

Every image is resized to `size` (H, W) (bilinear; masks nearest) and normalised with the
ImageNet mean/std; `n_val` training images (seeded by `data_seed`) are held out as the env's
validation split; `limit` keeps the first N files of each split (quick runs). A missing folder
is a `DatasetNotFoundError`, an unreadable or empty image or a mask of another size a one-line
`ConfigError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime.errors import ConfigError
from .disk_data import IMAGENET_MEAN, IMAGENET_STD, DatasetNotFoundError, _holdout
from .tensor_data import DatasetSplits

__all__ = ["cityscapes", "segfolder", "coco", "CITYSCAPES_TRAIN_IDS"]

IGNORE = 255  # mtkd_env.tasks.segmentation.IGNORE_INDEX (the data floor sits below the tasks)

CITYSCAPES_TRAIN_IDS: Dict[int, int] = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                        24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
"""Cityscapes label id -> train id (the 19 evaluated classes); every other id is ignored."""

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _size(size) -> Tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or any(not isinstance(v, int) or isinstance(v, bool) or v < 8 for v in size)):
        raise ConfigError(f"size: expected [H, W] of integers >= 8, got {size!r}")
    return int(size[0]), int(size[1])


def _folder(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise DatasetNotFoundError(f"{str(path)!r} is not a folder; expected {layout}")
    return path


def _read(path: Path, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert(mode) if mode == "RGB" else img)
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"{str(path)!r} is not a readable image ({type(exc).__name__})") from None
    if arr.size == 0:
        raise ConfigError(f"{str(path)!r} is an empty image")
    return arr


def _image(path: Path, size: Tuple[int, int]) -> torch.Tensor:
    x = torch.from_numpy(_read(path, "RGB").copy()).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def _mask(path: Path, image_path: Path, size: Tuple[int, int], lut: Optional[np.ndarray]) -> torch.Tensor:
    m = _read(path, "L")
    if m.ndim != 2:
        raise ConfigError(f"{str(path)!r}: a label PNG must have one channel of class ids, got shape {m.shape}")
    from PIL import Image

    with Image.open(image_path) as img:
        if img.size != (m.shape[1], m.shape[0]):
            raise ConfigError(f"{str(path)!r} is {m.shape[1]}x{m.shape[0]} but its image {image_path.name!r} is "
                              f"{img.size[0]}x{img.size[1]}")
    ids = torch.from_numpy((lut[m] if lut is not None else m).astype(np.int64))
    return F.interpolate(ids[None, None].float(), size=size, mode="nearest")[0, 0].long()


def _splits(name: str, task: str, train: Tuple[torch.Tensor, torch.Tensor], test: Tuple[torch.Tensor, torch.Tensor],
            n_val: int, seed: int, num_classes: int) -> DatasetSplits:
    tr, va = _holdout(len(train[0]), n_val, seed)
    tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)
    return DatasetSplits(name, train[0][tr_t], train[1][tr_t], train[0][va_t], train[1][va_t], test[0], test[1],
                         num_classes, task=task)


def _check_limit(limit: Optional[int]) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"limit: expected a positive integer (files per split) or null, got {limit!r}")


def _limit(paths: List[Path], limit: Optional[int]) -> List[Path]:
    _check_limit(limit)
    return paths[:limit] if limit else paths


# --- segmentation ---------------------------------------------------------------------------
def _segmentation_split(pairs: Sequence[Tuple[Path, Path]], size, lut, where: str):
    if not pairs:
        raise DatasetNotFoundError(f"{where}: no image with a label PNG found")
    x = torch.stack([_image(img, size) for img, _ in pairs])
    y = torch.stack([_mask(lbl, img, size, lut) for img, lbl in pairs])
    return x, y


def cityscapes(data_dir: Optional[str] = None, seed: int = 0, size=(128, 256), n_val: int = 300,
               limit: Optional[int] = None) -> DatasetSplits:
    """Cityscapes fine annotations (19 classes), see the module docstring."""
    layout = "<data_dir>/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/*_labelIds.png"
    root = _folder(Path(data_dir or "."), layout)
    size = _size(size)
    lut = np.full(256, IGNORE, dtype=np.int64)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    parts = []
    for split in ("train", "val"):
        images = _limit(sorted(_folder(root / "leftImg8bit" / split, layout).glob("*/*_leftImg8bit.png")), limit)
        pairs = []
        for img in images:
            lbl = root / "gtFine" / split / img.parent.name / img.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            if not lbl.is_file():
                raise DatasetNotFoundError(f"cityscapes: {str(img)!r} has no label file {str(lbl)!r}")
            pairs.append((img, lbl))
        parts.append(_segmentation_split(pairs, size, lut, f"cityscapes {split}"))
    return _splits("cityscapes", "segmentation", parts[0], parts[1], n_val, seed, len(CITYSCAPES_TRAIN_IDS))


def segfolder(data_dir: Optional[str] = None, seed: int = 0, num_classes: int = 150, size=(128, 128),
              n_val: int = 200, reduce_zero_label: bool = True, limit: Optional[int] = None) -> DatasetSplits:
    """Images and label PNGs in the ADE20K layout, see the module docstring."""
    layout = "<data_dir>/images/{training,validation}/*.jpg and <data_dir>/annotations/{training,validation}/*.png"
    root = _folder(Path(data_dir or "."), layout)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 2 <= num_classes <= 255:
        raise ConfigError(f"segfolder: num_classes must be an integer in [2, 255], got {num_classes!r}")
    size = _size(size)
    lut = np.arange(256, dtype=np.int64)
    if reduce_zero_label:
        lut = np.where(lut == 0, IGNORE, lut - 1)
        lut[255] = IGNORE
    parts = []
    for split in ("training", "validation"):
        images = _limit(sorted(p for p in _folder(root / "images" / split, layout).iterdir()
                               if p.suffix.lower() in _IMAGE_SUFFIXES), limit)
        pairs = []
        for img in images:
            lbl = root / "annotations" / split / f"{img.stem}.png"
            if not lbl.is_file():
                raise DatasetNotFoundError(f"segfolder: {str(img)!r} has no label PNG {str(lbl)!r}")
            pairs.append((img, lbl))
        parts.append(_segmentation_split(pairs, size, lut, f"segfolder {split}"))
    return _splits("segfolder", "segmentation", parts[0], parts[1], n_val, seed, num_classes)


# --- detection ------------------------------------------------------------------------------
def _coco_split(root: Path, split: str, size: Tuple[int, int], limit: Optional[int], categories: Optional[List[int]]):
    ann_path = root / "annotations" / f"instances_{split}.json"
    if not ann_path.is_file():
        raise DatasetNotFoundError(f"coco: {str(ann_path)!r} is missing; expected <data_dir>/annotations/"
                                   f"instances_{{train,val}}2017.json and the images in <data_dir>/{{train,val}}2017/")
    try:
        data = json.loads(ann_path.read_text())
        images = sorted(data["images"], key=lambda im: im["id"])
        annotations, cats = data["annotations"], sorted(c["id"] for c in data["categories"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"coco: {str(ann_path)!r} is not COCO instances JSON ({type(exc).__name__}: {exc})"
                          .splitlines()[0]) from None
    categories = categories or cats
    label_of = {c: i for i, c in enumerate(categories)}
    images = images[:limit] if limit else images
    per_image: Dict[int, list] = {im["id"]: [] for im in images}
    for a in annotations:
        if a.get("iscrowd", 0) or a["image_id"] not in per_image:
            continue
        if a["category_id"] not in label_of:
            raise ConfigError(f"coco: annotation {a.get('id')} has category {a['category_id']}, not one of the "
                              f"train split's categories")
        per_image[a["image_id"]].append(a)
    xs, rows = [], []
    for im in images:
        path = root / split / im["file_name"]
        xs.append(_image(path, size))
        w, h = float(im["width"]), float(im["height"])
        sx, sy = size[1] / w, size[0] / h
        boxes = []
        for a in per_image[im["id"]]:
            bx, by, bw, bh = (float(v) for v in a["bbox"])
            if bw <= 0 or bh <= 0 or bx < 0 or by < 0 or bx + bw > w + 1e-3 or by + bh > h + 1e-3:
                raise ConfigError(f"coco: annotation {a.get('id')} box {a['bbox']} is empty or out of the "
                                  f"{im['width']}x{im['height']} image {im['file_name']!r}")
            boxes.append([label_of[a["category_id"]], bx * sx, by * sy, min((bx + bw) * sx, size[1]),
                          min((by + bh) * sy, size[0])])
        rows.append(boxes)
    k = max(1, max(len(r) for r in rows)) if rows else 1
    y = torch.full((len(rows), k, 5), -1.0)
    for i, r in enumerate(rows):
        if r:
            y[i, :len(r)] = torch.tensor(r)
    if not xs:
        raise DatasetNotFoundError(f"coco: {str(ann_path)!r} lists no image")
    return (torch.stack(xs), y), categories


def coco(data_dir: Optional[str] = None, seed: int = 0, size=(320, 320), n_val: int = 500,
         limit: Optional[int] = None) -> DatasetSplits:
    """COCO-2017 instances (boxes), see the module docstring."""
    root = _folder(Path(data_dir or "."), "<data_dir>/annotations/instances_{train,val}2017.json and "
                                          "<data_dir>/{train,val}2017/*.jpg")
    size = _size(size)
    _check_limit(limit)
    train, categories = _coco_split(root, "train2017", size, limit, None)
    test, _ = _coco_split(root, "val2017", size, limit, categories)
    k = max(train[1].shape[1], test[1].shape[1])
    pad = lambda y: torch.cat([y, torch.full((len(y), k - y.shape[1], 5), -1.0)], 1)  # noqa: E731
    return _splits("coco", "detection", (train[0], pad(train[1])), (test[0], pad(test[1])), n_val, seed,
                   len(categories))
