"""torchvision's detectors in the detection task: their own losses (against torchvision's forward),
training on generated scene boxes, the binary KL of the sigmoid heads against a hand computation,
zero KD for a student equal to its teachers, Faster R-CNN's feature-only KD, the per-image
statistics, an episode through gym.make, and the one-line errors of pools that mix layouts."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import mtkd_env
from mtkd_env import EnvConfig, models
from mtkd_env.data import build_dataset
from mtkd_env.models.tv_detection import FAMILIES, image_targets
from mtkd_env.runtime.errors import ConfigError
from mtkd_env.tasks import get_task

TINY = {"n_train": 64, "n_val": 32, "n_test": 32, "size": 32}


@pytest.fixture(scope="module")
def scenes():
    return build_dataset("scene_boxes", seed=0, **TINY)


def _build(name: str, seed: int = 0, classes: int = 4):
    torch.manual_seed(seed)
    return models.build(name, num_classes=classes, input_shape=(3, 32, 32))


@pytest.mark.parametrize("name", ["det_fcos_tiny", "det_retinanet_tiny"])
def test_image_losses_are_torchvisions_own_loss(scenes, name):
    model = _build(name).train()
    model.detector.backbone.eval()  # BN statistics of its own batch would make a lone image's features differ
    x, y = scenes.train_x[:4], scenes.train_y[:4]
    out = model(x)
    losses = FAMILIES[out.family].image_losses(out, y)
    targets = image_targets(out, y)
    tol = dict(rtol=1e-5, atol=1e-6)  # float32, the same operations in another batch layout
    for i in range(4):  # each image: torchvision's forward on it alone
        torch.testing.assert_close(losses[i], sum(model.detector([x[i]], [targets[i]]).values()), **tol)
    if name == "det_retinanet_tiny":  # RetinaNet normalises per image: the mean is its batch loss
        torch.testing.assert_close(losses.mean(), sum(model.detector(list(x), targets).values()), **tol)


@pytest.mark.parametrize("name, lr", [("det_fcos_tiny", 0.01), ("det_retinanet_tiny", 0.05),
                                      ("det_fasterrcnn_tiny", 0.05)])
def test_loss_is_finite_and_decreases_on_scene_boxes(scenes, name, lr):
    model, task = _build(name).train(), get_task("detection")
    x, y = scenes.train_x[:16], scenes.train_y[:16]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = task.supervised_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses


def test_binary_kl_matches_a_hand_computation_and_is_zero_for_equal_outputs(scenes):
    task, temp = get_task("detection"), 2.0
    x, y = scenes.train_x[:3], scenes.train_y[:3]
    with torch.no_grad():
        t_outs = [_build("det_fcos_cnn", seed=s).eval()(x) for s in (1, 2)]
    s_out = _build("det_fcos_tiny", seed=3).train()(x)
    teacher = task.teacher_stats(t_outs, y, temp)
    projected = [o.feature_map.clone() for o in t_outs]  # a perfect imitation: feature MSE 0
    batch = task.measure(x, y, None, t_outs, teacher, s_out, projected, temp, keep_maps=False)
    for name in ("kl", "feat_mse", "cos", "teacher_ce", "teacher_correct", "teacher_entropy"):
        assert getattr(batch, name).shape == (3, 2), name
    assert batch.student_ce.shape == (3,) and batch.teacher_logits.shape == (2, 3, 4)
    kl = torch.zeros(3, 2, dtype=torch.float64)
    q = torch.sigmoid(s_out.logits.detach().double() / temp)                            # (B, L, C)
    for m, o in enumerate(t_outs):
        p = torch.sigmoid(o.logits.double() / temp)
        kl[:, m] = temp ** 2 * (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1).mean(-1)
    torch.testing.assert_close(batch.kl.double(), kl, rtol=1e-4, atol=1e-6)            # float32 outputs
    assert float(batch.feat_mse.detach().abs().max()) == 0.0 and batch.kl.requires_grad
    same = task.measure(x, y, None, t_outs, teacher, t_outs[0], None, temp, keep_maps=False)
    assert float(same.kl[:, 0].detach().abs().max()) == 0.0 and float(same.kl[:, 1].detach().min()) > 0.0
    torch.testing.assert_close(same.student_ce, teacher.ce[:, 0])


def test_faster_rcnn_pools_distil_the_fpn_features_only(scenes):
    task = get_task("detection")
    x, y = scenes.train_x[:2], scenes.train_y[:2]
    with torch.no_grad():
        t_outs = [_build("det_fasterrcnn_cnn", seed=s).eval()(x) for s in (1, 2)]
    s_out = _build("det_fasterrcnn_tiny", seed=3).train()(x)
    teacher = task.teacher_stats(t_outs, y, 4.0)
    projected = [torch.zeros_like(o.feature_map) for o in t_outs]
    batch = task.measure(x, y, None, t_outs, teacher, s_out, projected, 4.0, keep_maps=False)
    assert float(batch.kl.abs().max()) == 0.0 and batch.kl.shape == (2, 2)
    assert float(batch.feat_mse.detach().min()) > 0.0 and batch.student_ce.requires_grad
    assert teacher.ce.shape == teacher.entropy.shape == teacher.correct.shape == (2, 2)
    torch.rand(7)  # another global RNG state: the sampled anchors and proposals must not depend on it
    torch.testing.assert_close(task.teacher_stats(t_outs, y, 4.0).ce, teacher.ce, rtol=0, atol=0)


@pytest.mark.parametrize("teachers, student, message", [
    (["det_fcos_cnn", "det_retinanet_tiny"], "det_fcos_tiny", r"different anchor layouts \(\['fcos \(85 anchors"),
    (["det_fcos_cnn"], "det_fasterrcnn_tiny", r"or Faster R-CNN for every model"),
    (["det_tiny"], "det_fcos_tiny", r"must all be one kind of detector"),
])
def test_pools_that_mix_layouts_are_one_line_errors(scenes, teachers, student, message):
    task = get_task("detection")
    x, y = scenes.train_x[:2], scenes.train_y[:2]
    with torch.no_grad():
        t_outs = [_build(t).eval()(x) for t in teachers]
    with pytest.raises(ConfigError, match=message) as exc:
        task.measure(x, y, None, t_outs, task.teacher_stats(t_outs, y, 1.0), _build(student)(x), None, 1.0, False)
    assert "\n" not in str(exc.value)


def test_an_episode_of_torchvision_fcos_runs_through_gym_make(teacher_cache):
    config = EnvConfig(task="detection", dataset="scene_boxes", dataset_kwargs=dict(TINY),
                       teachers=["det_fcos_cnn", "det_fcos_tiny"], student="det_fcos_tiny", granularity="sample",
                       teacher_cache_dir=teacher_cache, teacher_epochs=1, max_steps=3, batch_size=16, probe_size=16,
                       eval_batch_size=32, show_progress=False, device="cpu")
    env = gym.make(mtkd_env.ENV_ID, config=config)
    env.reset(seed=0)
    batch = env.unwrapped.engine.batch
    for name in ("kl", "cos", "teacher_ce", "teacher_correct", "teacher_entropy", "feat_mse"):
        assert getattr(batch, name).shape == (16, 2), name
    steps, done = 0, False
    while not done:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps, done = steps + 1, terminated or truncated
        assert np.isfinite(reward)
    assert steps == 3 and 0.0 <= info["final_test_acc"] <= 1.0  # COCO mAP of the postprocessed detections


@pytest.mark.parametrize("family", ["fcos", "retinanet"])
def test_paper_scale_one_stage_students_share_their_teachers_anchors(family):
    x, outs = torch.zeros(1, 3, 64, 64), []
    for name in (f"det_{family}_resnet50_fpn", f"det_{family}_mobilenet_v3_fpn"):
        with torch.no_grad():
            outs.append(models.build(name, num_classes=3, input_shape=(3, 64, 64)).eval()(x))
    assert outs[0].logits.shape == outs[1].logits.shape
    assert torch.equal(outs[0].parts.anchors[0], outs[1].parts.anchors[0])


def test_the_paper_faster_rcnn_config_runs_feature_kd_only(teacher_cache):
    """configs/paper_coco_frcnn.yaml on small generated scenes with untrained teachers."""
    from pathlib import Path

    paper = EnvConfig.from_file(Path(__file__).parents[3] / "configs" / "paper_coco_frcnn.yaml")
    assert paper.student == "det_fasterrcnn_mobilenet_v3_fpn" and paper.feature_kd
    cfg = paper.replace(dataset="scene_boxes", data_dir=None, dataset_kwargs={"n_train": 8, "n_val": 4, "n_test": 4,
                                                                              "size": 32},
                        teachers=[f"{t}=random" for t in paper.teachers], max_steps=2, batch_size=2, probe_size=2,
                        eval_batch_size=4, device="cpu", teacher_cache_dir=teacher_cache, show_progress=False)
    env = gym.make(mtkd_env.ENV_ID, config=cfg)
    env.reset(seed=0)
    batch = env.unwrapped.engine.batch
    assert float(batch.kl.abs().max()) == 0.0 and batch.feat_mse.shape == (2, 2)
    assert float(batch.feat_mse.detach().min()) > 0
    for _ in range(2):
        _, reward, *_ = env.step(env.action_space.sample())
        assert np.isfinite(reward)
