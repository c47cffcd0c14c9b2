"""Dense models under the `ModelOutput` contract (torchvision's built with weights=None, nothing
downloaded), and the teacher CLI training a segmentation and a detection teacher."""

from __future__ import annotations

import pytest
import torch

from mtkd_env import models
from mtkd_env.teachers import cli as teacher_cli


@pytest.mark.parametrize("name", ["seg_tiny", "lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v2"])
def test_segmentation_models_give_logits_at_the_input_size(name):
    torch.manual_seed(0)
    out = models.build(name, num_classes=6, input_shape=(3, 64, 48)).eval()(torch.randn(2, 3, 64, 48))
    assert out.logits.shape == (2, 6, 64, 48) and out.embedding.shape == out.feature_map.shape[:2]


@pytest.mark.parametrize("name", ["det_tiny", "det_mobilenet_v3_fpn"])
def test_detectors_share_one_grid_and_predict_well_formed_boxes(name):
    torch.manual_seed(0)
    out = models.build(name, num_classes=3, input_shape=(3, 64, 64)).eval()(torch.randn(2, 3, 64, 64))
    locations = out.centers.shape[0]
    assert out.logits.shape == (2, locations, 4) and out.boxes.shape == (2, locations, 4)
    assert locations == out.feature_map.shape[-2] * out.feature_map.shape[-1]
    assert (out.boxes[..., 2:] > out.boxes[..., :2]).all()


@pytest.mark.parametrize("dataset, arch", [("scenes", "seg_tiny"), ("scene_boxes", "det_tiny")])
def test_teacher_cli_trains_a_dense_teacher_scored_by_its_task_metric(tmp_path, dataset, arch):
    cache = tmp_path / "cache"
    kwargs = ["n_train=32", "n_val=16", "n_test=16", "size=16"]
    assert teacher_cli.main(["train", "--dataset", dataset, "--dataset-kwargs", *kwargs, "--arch", arch,
                             "--epochs", "1", "--milestones", "--batch-size", "16", "--device", "cpu",
                             "--cache-dir", str(cache), "--no-show-progress"]) == 0
    meta = torch.load(next(cache.glob("*.pt")), weights_only=True)["meta"]
    assert meta["arch"] == arch and 0.0 <= meta["val_acc"] <= 1.0 and 0.0 <= meta["test_acc"] <= 1.0
