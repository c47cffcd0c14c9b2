"""The dense tasks' on-disk loaders (Cityscapes, ADE20K-style folders, COCO JSON) on generated folders,
and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mtkd_env.data import build_dataset
from mtkd_env.data.disk_data import DatasetNotFoundError
from mtkd_env.runtime.errors import ConfigError


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _rgb(rng, h=12, w=16):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_cityscapes_maps_label_ids_to_train_ids_and_ignores_the_rest(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            _png(tmp_path / "leftImg8bit" / split / "aachen" / f"aachen_{i}_leftImg8bit.png", _rgb(rng))
            ids = np.full((12, 16), 7, dtype=np.uint8)   # road -> 0
            ids[:6, :8] = 26                                # car -> 13
            ids[6:, 8:] = 3                                 # out of roi -> ignored
            _png(tmp_path / "gtFine" / split / "aachen" / f"aachen_{i}_gtFine_labelIds.png", ids)
    splits = build_dataset("cityscapes", data_dir=str(tmp_path), size=[12, 16], n_val=1)
    assert splits.task == "segmentation" and splits.num_classes == 19
    assert splits.train_x.shape == (3, 3, 12, 16) and splits.val_y.shape == (1, 12, 16) and len(splits.test_y) == 2
    y = splits.test_y[0]
    assert y[0, 0] == 13 and y[0, 15] == 0 and y[11, 15] == 255


def test_segfolder_reduces_the_zero_label_and_resizes_nearest(tmp_path):
    rng = np.random.default_rng(1)
    for split in ("training", "validation"):
        for i in range(3):
            _png(tmp_path / "images" / split / f"im{i}.jpg", _rgb(rng, 8, 8))
            lbl = np.zeros((8, 8), dtype=np.uint8)
            lbl[:, 4:] = 3
            _png(tmp_path / "annotations" / split / f"im{i}.png", lbl)
    splits = build_dataset("segfolder", data_dir=str(tmp_path), num_classes=5, size=[16, 16], n_val=1)
    assert splits.train_x.shape == (2, 3, 16, 16)
    assert set(splits.test_y.unique().tolist()) == {2, 255}  # 3 -> 2, 0 ("other") -> ignored


def _coco_tree(root, boxes):
    rng = np.random.default_rng(2)
    for split in ("train2017", "val2017"):
        images = []
        for i in range(3):
            _png(root / split / f"{i:04d}.jpg", _rgb(rng, 20, 40))
            images.append({"id": i + 1, "file_name": f"{i:04d}.jpg", "width": 40, "height": 20})
        anns = [{"id": 10 + k, "image_id": 1, "category_id": cat, "bbox": box, "iscrowd": 0}
                for k, (cat, box) in enumerate(boxes)]
        anns.append({"id": 99, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}))


def test_coco_json_boxes_follow_the_resize_and_categories_become_labels(tmp_path):
    _coco_tree(tmp_path, [(7, [4, 2, 8, 10]), (3, [20, 0, 20, 20])])
    splits = build_dataset("coco", data_dir=str(tmp_path), size=[10, 20], n_val=1)
    assert splits.task == "detection" and splits.num_classes == 2 and splits.test_x.shape == (3, 3, 10, 20)
    y = splits.test_y[0]
    torch.testing.assert_close(y, torch.tensor([[1.0, 2, 1, 6, 6], [0, 10, 0, 20, 10]]))
    assert (splits.test_y[1:, :, 0] == -1).all()  # the crowd box is left out; image 3 has none


@pytest.mark.parametrize("bad, message", [
    ("missing", r"instances_train2017\.json' is missing"),
    ("out", r"box \[30, 0, 20, 20\] is empty or out of the 40x20 image"),
    ("empty_image", r"is not a readable image"),
])
def test_coco_bad_inputs_are_one_line_errors(tmp_path, bad, message):
    _coco_tree(tmp_path, [(3, [30, 0, 20, 20] if bad == "out" else [1, 1, 4, 4])])
    if bad == "missing":
        (tmp_path / "annotations" / "instances_train2017.json").unlink()
    if bad == "empty_image":
        (tmp_path / "train2017" / "0001.jpg").write_bytes(b"")
    with pytest.raises((ConfigError, DatasetNotFoundError), match=message) as exc:
        build_dataset("coco", data_dir=str(tmp_path), size=[10, 20], n_val=1)
    assert "\n" not in str(exc.value)


def test_a_mask_of_another_size_and_a_missing_folder_are_one_line_errors(tmp_path):
    rng = np.random.default_rng(3)
    for split in ("training", "validation"):
        _png(tmp_path / "images" / split / "a.png", _rgb(rng, 8, 8))
        _png(tmp_path / "annotations" / split / "a.png", np.ones((4, 4), dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"a\.png' is 4x4 but its image 'a\.png' is 8x8"):
        build_dataset("segfolder", data_dir=str(tmp_path), num_classes=5, size=[8, 8], n_val=0)
    with pytest.raises(DatasetNotFoundError, match="is not a folder; expected <data_dir>/leftImg8bit"):
        build_dataset("cityscapes", data_dir=str(tmp_path / "nowhere"))
