"""`EnvConfig.teacher_views`: V fixed augmented views per training image, their teachers' outputs cached."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from mtkd_env import ENV_ID
from mtkd_env.data import DeviceLoader, random_crop_flip
from mtkd_env.env import MultiTeacherKDEnv
from mtkd_env.runtime.errors import ConfigError

V = 3


def _views_env(synthetic_config, **kw):
    return MultiTeacherKDEnv(synthetic_config(augment=True, teacher_views=V, **kw))


def _actions(n, m, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, m)).astype(np.float32)


def test_loader_views_are_fixed_augmentations_drawn_from_the_seed():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 2, 6, 6, generator=g), torch.arange(20)

    def loader(seed):
        out = DeviceLoader(x, y, batch_size=8, augment=random_crop_flip(1, True))
        out.fix_views(V, seed)
        return out

    a = loader(0)
    assert a.num_views == V and a.views.shape == (20 * V, 2, 6, 6)
    for row, view in enumerate(a.views):  # image i's view v is row i*V + v: a window of image i (maybe flipped)
        padded = torch.nn.functional.pad(x[row // V], (1, 1, 1, 1))
        windows = [padded[:, i:i + 6, j:j + 6] for i in range(3) for j in range(3)]
        assert any(torch.equal(view, w) or torch.equal(view, w.flip(2)) for w in windows)
    assert torch.equal(a.views, loader(0).views) and not torch.equal(a.views, loader(1).views)
    rows_x, rows_y = a.rows()
    assert rows_x is a.views and torch.equal(rows_y, y.repeat_interleave(V))
    a.reset(4)
    xb, yb, idx = a.next()
    assert torch.equal(xb, a.views[idx]) and torch.equal(yb, y[idx // V])
    assert len(set((idx // V).tolist())) == 8  # one view per drawn image


def test_batch_teacher_outputs_are_the_teachers_on_the_batch_views(synthetic_config):
    env = _views_env(synthetic_config)
    eng = env.engine
    assert eng.caches_teacher_outputs and eng.loader.views.shape == (V * len(eng.loader.x), *eng.input_shape)
    env.reset(seed=0)
    picked = []
    for a in _actions(3, eng.num_teachers):
        batch = eng.batch
        assert torch.equal(batch.x, eng.loader.views[batch.index])
        assert torch.equal(batch.y, eng.loader.y[batch.index // V])
        with torch.no_grad():
            live = [t.model(batch.x) for t in eng.teachers]
        # the cache ran the same forwards in chunks of eval_batch_size: float32 rounding only
        torch.testing.assert_close(batch.teacher_logits, torch.stack([o.logits for o in live]), rtol=1e-5, atol=1e-5)
        for cached, o in zip(batch.teacher_embeddings, live):
            torch.testing.assert_close(cached, o.embedding, rtol=1e-5, atol=1e-5)
        picked.append(batch.index % V)
        env.step(a)
    assert len(set(torch.cat(picked).tolist())) == V  # the batches draw among all V views
    # the batch is an augmentation of its images, not the images themselves
    assert not torch.equal(batch.x, eng.loader.x[batch.index // V])


def test_views_are_fixed_by_data_seed_across_envs_and_episodes(synthetic_config):
    env = _views_env(synthetic_config)
    views = env.engine.loader.views.clone()
    env.reset(seed=0)
    first = env.engine.batch.index.clone()
    env.reset(seed=1)
    assert torch.equal(env.engine.loader.views, views)          # a new episode keeps the views ...
    assert not torch.equal(env.engine.batch.index, first)        # ... and draws other (image, view) pairs
    assert torch.equal(_views_env(synthetic_config).engine.loader.views, views)
    other = _views_env(synthetic_config, data_seed=1).engine.loader
    assert not torch.equal(other.views, views)


def test_same_seed_same_trajectory_and_resume_gives_the_same_next_batch(synthetic_config):
    runs = []
    for _ in range(2):
        env = _views_env(synthetic_config, max_steps=6)
        rows = [env.reset(seed=3)[0]]
        for a in _actions(3, env.engine.num_teachers):
            rows.append(env.step(a)[0])
        runs.append((env, rows))
    (env, rows), (_, rows2) = runs
    for o1, o2 in zip(rows, rows2):
        np.testing.assert_array_equal(o1, o2)
    state = env.state_dict()  # the engine's (student, optimiser, loader) and the env's counters
    index, x = env.engine.batch.index.clone(), env.engine.batch.x.clone()
    tail = [env.step(a)[:2] for a in _actions(2, env.engine.num_teachers, seed=1)]
    resumed = _views_env(synthetic_config, max_steps=6)
    resumed.reset(seed=99)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.engine.batch.index, index) and torch.equal(resumed.engine.batch.x, x)
    for (o1, r1), (o2, r2) in zip(tail, [resumed.step(a)[:2] for a in _actions(2, env.engine.num_teachers, seed=1)]):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2


def test_batched_env_with_views_follows_the_single_envs(synthetic_config):
    cfg = synthetic_config(augment=True, teacher_views=V, max_steps=3)
    batched = gym.make_vec(ENV_ID, num_envs=2, config=cfg, vectorize="rows")
    sync = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="sync", config=cfg)
    o1, _ = batched.reset(seed=5)
    o2, _ = sync.reset(seed=5)
    np.testing.assert_allclose(o1, o2, rtol=1e-4, atol=2e-5)
    for a in _actions(4, 2 * 3, seed=2).reshape(4, 2, 3):
        (o1, r1, *_), (o2, r2, *_) = batched.step(a), sync.step(a)
        np.testing.assert_allclose(o1, o2, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(r1, r2, rtol=1e-4, atol=2e-5)


def test_bad_teacher_views_settings_are_one_line_errors(synthetic_config):
    with pytest.raises(ConfigError, match="teacher_views: .*needs augment=true") as err:
        synthetic_config(teacher_views=2)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="teacher_views: .*cache_teacher_outputs is false"):
        synthetic_config(augment=True, teacher_views=2, cache_teacher_outputs=False)
    with pytest.raises(ConfigError, match="teacher_views"):
        synthetic_config(augment=True, teacher_views=-1)
    assert synthetic_config(augment=True, teacher_views=2, cache_teacher_outputs=True).teacher_views == 2
    flat = synthetic_config(augment=True, teacher_views=2, dataset_kwargs={"shape": [16], "num_classes": 4,
                                                                           "n_train": 64, "n_val": 32, "n_test": 32},
                            teachers=["mlp=random"], student="mlp")
    with pytest.raises(ConfigError, match="teacher_views: .*no training augmentation"):
        MultiTeacherKDEnv(flat)
