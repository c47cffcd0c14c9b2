"""The CIFAR model zoo, the torchvision wrappers and the feature projectors."""

from __future__ import annotations

import pytest
import torch

from mtkd_env import models
from mtkd_env.models.imagenet import WeightsNotFoundError
from mtkd_env.models.projectors import ProjectorBank

# name: (parameters at 100 classes, feature map (C, H, W) at 32x32 input)
CIFAR_ZOO = {
    "resnet8x4": (1_233_540, (256, 8, 8)),
    "resnet32x4": (7_433_860, (256, 8, 8)),
    "resnet56": (861_620, (64, 8, 8)),
    "resnet110": (1_736_564, (64, 8, 8)),
    "wrn_16_2": (703_284, (128, 8, 8)),
    "wrn_40_2": (2_255_156, (128, 8, 8)),
    "wrn_28_4": (5_872_180, (256, 8, 8)),
    "ShuffleV1": (949_258, (960, 4, 4)),
    "ShuffleV2": (1_355_528, (1024, 4, 4)),
    "MobileNetV2": (2_353_060, (320, 2, 2)),
    "MobileNetV2_half": (812_836, (160, 2, 2)),
    "RegNetX_200MF": (2_355_156, (368, 8, 8)),
    "RegNetX_400MF": (4_813_988, (384, 8, 8)),
    "RegNetY_400MF": (5_749_012, (384, 8, 8)),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(CIFAR_ZOO))
def test_cifar_zoo_param_count_and_shapes(name):
    count, fmap_shape = CIFAR_ZOO[name]
    torch.manual_seed(0)
    model = models.build(name, num_classes=100, input_shape=(3, 32, 32)).eval()
    assert n_params(model) == count
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 100)
    assert out.feature_map.shape == (2, *fmap_shape)
    assert out.embedding.shape == (2, fmap_shape[0])
    torch.testing.assert_close(out.embedding, out.feature_map.mean(dim=(2, 3)))
    if name not in ("MobileNetV2", "MobileNetV2_half"):  # its map is the linear bottleneck (documented)
        assert out.feature_map.min() >= 0, "feature map must be taken after the ReLU"


def test_zoo_models_train_on_other_channel_counts():
    model = models.build("resnet20", num_classes=7, input_shape=(1, 16, 16))
    out = model(torch.randn(3, 1, 16, 16))
    out.logits.sum().backward()
    assert out.logits.shape == (3, 7) and out.feature_map.shape == (3, 64, 4, 4)


def test_half_width_alias_is_the_same_architecture():
    assert n_params(models.build("mobile_half", 100)) == n_params(models.build("MobileNetV2_half", 100))


@pytest.mark.parametrize("name, keys", [
    # Reference (RepDistiller / MTKD-RL) key names, so that their checkpoint files load unchanged.
    ("wrn_16_2", ["block1.layer.0.convShortcut.weight", "block3.layer.1.bn2.running_var", "bn1.weight", "fc.bias"]),
    ("resnet8x4", ["layer1.0.downsample.0.weight", "layer3.0.bn2.weight", "fc.weight"]),
    ("MobileNetV2", ["conv1.0.weight", "blocks.6.0.conv.7.running_mean", "conv2.1.weight", "classifier.0.weight"]),
    ("ShuffleV2", ["layer1.0.conv5.weight", "layer3.3.bn3.weight", "conv2.weight", "bn2.bias", "linear.weight"]),
    ("ShuffleV1", ["layer1.0.conv1.weight", "layer3.3.bn3.bias", "linear.bias"]),
    ("RegNetY_400MF", ["layer4.11.se.se2.bias", "layer2.0.shortcut.1.weight", "linear.weight"]),
])
def test_reference_state_dict_key_names(name, keys):
    state = models.build(name, 100).state_dict()
    for key in keys:
        assert key in state, f"{name}: missing reference key {key}"


def test_unknown_model_and_bad_depth_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet9'"):
        models.build("resnet9", 10)
    from mtkd_env.models.cifar_resnet import CifarResNet

    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(9, (16, 16, 32, 64), 10)


# --- torchvision -----------------------------------------------------------------------------
TORCHVISION = {  # parameters at 1000 classes (torchvision docs), feature channels
    "resnet18": (11_689_512, 512),
    "resnet50": (25_557_032, 2048),
    "mobilenet_v2": (3_504_872, 1280),
    "shufflenet_v2_x1_0": (2_278_604, 1024),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_models_hook_features(name):
    import torchvision

    count, channels = TORCHVISION[name]
    torch.manual_seed(0)
    model = models.build(name, num_classes=1000, input_shape=(3, 64, 64)).eval()
    assert n_params(model) == count
    reference = getattr(torchvision.models, name)().eval()
    # State-dict keys are torchvision's own, both ways.
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out.logits, reference(x))
    assert out.feature_map.shape == (2, channels, 2, 2) and out.feature_map.min() >= 0
    torch.testing.assert_close(out.embedding, out.feature_map.mean(dim=(2, 3)))
    assert model._captured is None  # nothing kept alive between calls


@pytest.mark.parametrize("name, count, channels", [
    ("resnet34", 21_797_672, 512), ("resnet101", 44_549_160, 2048), ("wide_resnet50_2", 68_883_240, 2048),
    ("resnext50_32x4d", 25_028_904, 2048)])
def test_large_torchvision_models(name, count, channels):
    model = models.build(name, num_classes=1000).eval()
    assert n_params(model) == count
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).feature_map.shape == (1, channels, 2, 2)


def test_torchvision_weights_from_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision

    with pytest.raises(WeightsNotFoundError, match="resnet18-f37072fd.pth.*nothing is downloaded"):
        models.build("resnet18", num_classes=1000, weights="IMAGENET1K_V1")
    with pytest.raises(WeightsNotFoundError, match="unknown torchvision weights 'V9'"):
        models.build("resnet18", num_classes=1000, weights="V9")
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = models.build("resnet18", num_classes=1000, weights="IMAGENET1K_V1")
    for k, v in reference.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    with pytest.raises(ValueError, match="do not fit resnet18 with 10 classes"):
        models.build("resnet18", num_classes=10, weights=str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"))
    with pytest.raises(ValueError, match="3-channel"):
        models.build("resnet18", num_classes=10, input_shape=(1, 32, 32))


# --- projectors ------------------------------------------------------------------------------
@pytest.mark.parametrize("student_shape, teacher_shapes", [
    ((1024, 4, 4), [(384, 8, 8), (256, 8, 8)]),       # ShuffleV2 -> RegNet / resnet32x4: upsample
    ((320, 2, 2), [(384, 8, 8), (256, 8, 8)]),        # MobileNetV2: upsample x4
    ((368, 8, 8), [(384, 8, 8)]),                     # same size: no resize
    ((64, 8, 8), [(2048, 2, 2), (256, 4, 8)]),        # shrink; mixed aspect
])
def test_projectors_map_any_student_shape_to_each_teacher(student_shape, teacher_shapes):
    bank = ProjectorBank(student_shape[0], teacher_shapes)
    fmap = torch.randn(3, *student_shape, requires_grad=True)
    outs = bank(fmap)
    assert [tuple(o.shape[1:]) for o in outs] == [tuple(s) for s in teacher_shapes]
    assert all(o.min() >= 0 for o in outs)  # conv + BN + ReLU
    sum(o.sum() for o in outs).backward()
    assert fmap.grad is not None and all(p.grad is not None for p in bank.parameters() if p.requires_grad)


def test_each_projector_sees_the_original_student_map():
    # The official TransFeat fed branch m the map resized by branch m-1; here each branch must give
    # the same output whether or not other (resizing) branches come before it.
    torch.manual_seed(0)
    alone = ProjectorBank(16, [(8, 8, 8)]).eval()
    torch.manual_seed(1)
    chained = ProjectorBank(16, [(4, 2, 2), (8, 8, 8)]).eval()
    chained[1].load_state_dict(alone[0].state_dict())
    fmap = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(chained(fmap)[1], alone(fmap)[0])


# --- the paper's pool in the env ---------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["sample", "teacher"])
def test_paper_pool_runs_in_env(granularity, teacher_cache):
    """configs/paper_cifar100.yaml with CIFAR-shaped synthetic data and untrained teachers."""
    from pathlib import Path

    import numpy as np

    from mtkd_env import EnvConfig, MultiTeacherKDEnv

    paper = EnvConfig.from_file(Path(__file__).parents[3] / "configs" / "paper_cifar100.yaml")
    assert paper.teachers == ["RegNetY_400MF", "RegNetX_400MF", "resnet32x4", "wrn_28_4"]
    cfg = paper.replace(dataset="synthetic", data_dir=None, granularity=granularity, reward=None,
                        dataset_kwargs={"shape": [3, 32, 32], "num_classes": 100, "n_train": 16, "n_val": 8,
                                        "n_test": 8},
                        teachers=[f"{t}=random" for t in paper.teachers], max_steps=2, batch_size=4, probe_size=4,
                        eval_batch_size=8, device="cpu", teacher_cache_dir=teacher_cache, show_progress=False)
    env = MultiTeacherKDEnv(cfg)
    assert env.engine.teacher_feature_shapes == [(384, 8, 8), (384, 8, 8), (256, 8, 8), (256, 8, 8)]
    obs, _ = env.reset(seed=0)
    if granularity == "sample":
        assert obs.shape == (4, 1692)  # 2 * (384 + 100 + 3) + 2 * (256 + 100 + 3), as in MTKD-RL
        assert env.action_space.shape == (4, 8)  # separate logit and feature weights
    for _ in range(2):
        obs, reward, term, _, info = env.step(env.action_space.sample())
        assert np.isfinite(reward) and env.observation_space.contains(obs)
    assert term and info["weights_logit"].shape[-1] == 4


# --- classifier heads (CA-MKD's feature confidences) ---------------------------------------------
def _head_input(name: str) -> tuple:
    if name in ("mlp", "cnn", "tiny_resnet", "tiny_cnn"):
        return (1, 8, 8)
    from mtkd_env.models.imagenet import TORCHVISION_MODELS

    return (3, 64, 64) if name in TORCHVISION_MODELS or name == "shufflenet_v2" else (3, 32, 32)


def _classifiers():
    """The classification models: the dense tasks' models (`models.segmentation`, `models.detection`,
    torchvision's detectors in `models.tv_detectors`) predict per pixel, location or box and have no
    classifier head."""
    from mtkd_env.models.registry import MODELS

    dense = ("mtkd_env.models.segmentation", "mtkd_env.models.detection", "mtkd_env.models.tv_detectors")
    return [n for n in models.available() if getattr(MODELS[n], "__module__", "") not in dense]


@pytest.mark.parametrize("name", _classifiers())
def test_every_model_exposes_its_classifier_head(name):
    """`classifier_head(feature_map)` is exactly the rest of the forward pass, for every registered model."""
    torch.manual_seed(0)
    shape = _head_input(name)
    model = models.build(name, num_classes=5, input_shape=shape).eval()
    assert isinstance(model, models.KDModel)
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
        logits = models.classifier_head(model)(out.feature_map)
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-6)


def test_classifier_head_of_a_model_without_one_is_a_clear_error():
    with pytest.raises(TypeError, match="Linear has no classifier_head.*KDModel"):
        models.classifier_head(torch.nn.Linear(2, 2))
