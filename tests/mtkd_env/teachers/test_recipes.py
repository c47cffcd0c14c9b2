"""The embedded teachers' training recipe: a model's registered overrides (`teacher_recipe`) reach
its recipe, and so its cache key; other models keep the shared recipe (their cached teachers stay valid)."""

from mtkd_env.models import teacher_recipe
from mtkd_env.teachers import embedded_recipe, parse_spec, recipe


def test_torchvision_detectors_train_at_their_own_learning_rate():
    for kind in ("det_fcos_cnn", "det_fcos_cnn=seed:1", "det_retinanet_tiny=noisy", "det_fasterrcnn_cnn"):
        rec = embedded_recipe(parse_spec(kind), epochs=30, noisy_fraction=0.7, num_groups=0)
        assert rec["lr"] == teacher_recipe(parse_spec(kind).arch)["lr"] == 0.01
        assert rec["epochs"] == 30


def test_other_models_keep_the_shared_recipe():
    assert teacher_recipe("small_cnn") == teacher_recipe("det_cnn") == {}
    assert embedded_recipe(parse_spec("small_cnn"), 30, 0.7, 0) == recipe(30, 0.0)
    assert embedded_recipe(parse_spec("det_cnn=noisy"), 30, 0.7, 0) == recipe(30, 0.7)
