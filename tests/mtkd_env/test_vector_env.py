"""The batched vector env: Gymnasium's vector API, sub-env equivalence with the single env, resume."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from mtkd_env import ENV_ID, ConfigError
from mtkd_env.env import MultiTeacherKDEnv
from mtkd_env.vector_env import MultiTeacherKDVectorEnv

TOL = dict(rtol=1e-4, atol=2e-5)


def _actions(space, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, space.shape).astype(np.float32) for _ in range(n)]


def _run(venv, seed, actions):
    out = [venv.reset(seed=seed)]
    for a in actions:
        out.append(venv.step(a))
    return out


def _same_vector_trajectory(a, b, keys=("loss", "student_ce", "lr", "iteration")):
    (oa, ia), (ob, ib) = a[0], b[0]
    np.testing.assert_allclose(oa, ob, **TOL)
    np.testing.assert_array_equal(ia["episode_seed"], ib["episode_seed"])
    for (oa, ra, ta, ua, ia), (ob, rb, tb, ub, ib) in zip(a[1:], b[1:]):
        np.testing.assert_allclose(oa, ob, **TOL)
        np.testing.assert_allclose(ra, rb, **TOL)
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(ua, ub)
        for key in keys:
            if key in ia or key in ib:
                np.testing.assert_array_equal(ia[f"_{key}"], ib[f"_{key}"])
                np.testing.assert_allclose(ia[key][ia[f"_{key}"]], ib[key][ib[f"_{key}"]], **TOL)


def test_make_vec_gives_the_batched_env_with_gymnasium_spaces_and_metadata(synthetic_config):
    cfg = synthetic_config()
    venv = gym.make_vec(ENV_ID, num_envs=3, config=cfg)
    assert isinstance(venv.unwrapped, MultiTeacherKDVectorEnv) and venv.num_envs == 3
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    single = MultiTeacherKDEnv(cfg)
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    assert venv.observation_space.shape == (3, *single.observation_space.shape)
    assert venv.action_space.shape == (3, *single.action_space.shape)
    obs, info = venv.reset(seed=4)
    assert obs.dtype == np.float32 and venv.observation_space.contains(obs)
    assert info["_episode_seed"].all() and len(set(info["episode_seed"].tolist())) == 3
    obs, rew, term, trunc, info = venv.step(venv.action_space.sample())
    assert venv.observation_space.contains(obs)
    assert rew.shape == (3,) and rew.dtype == np.float64
    assert term.shape == trunc.shape == (3,) and term.dtype == trunc.dtype == np.bool_
    assert info["weights_logit"].shape == (3, 3) and info["_weights_logit"].all()
    again = gym.make_vec(ENV_ID, num_envs=3, config=cfg).reset(seed=4)[0]
    np.testing.assert_array_equal(venv.reset(seed=4)[0], again)  # seeded resets are deterministic
    seeds = [int(s) for s in venv.reset(seed=[7, 8, 9])[1]["episode_seed"]]
    assert seeds == [int(s) for s in venv.reset(seed=7)[1]["episode_seed"]]  # int seed s -> s, s+1, s+2


VECTORIZE = pytest.mark.parametrize("vectorize", ["grouped", "vmap", "rows"])


@VECTORIZE
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_batched_env_follows_the_sync_vector_env_of_single_envs(mode, vectorize, synthetic_config):
    """Sub-env k reset with seed s + k, across an autoreset (episodes of 5 steps), BN student
    (tiny_cnn and the projectors), the shipped PPO's reward (twin student) and observation."""
    cfg = synthetic_config(max_steps=5, reward="twin_val_loss", reward_interval=2, log_rewards=["probe_loss_drop"],
                           obs_features=["ce", "acc", "entropy", "progress", "lr"])  # the shipped PPO's env
    batched = gym.make_vec(ENV_ID, num_envs=3, config=cfg, autoreset_mode=mode, vectorize=vectorize)
    sync = gym.make_vec(ENV_ID, num_envs=3, vectorization_mode="sync", config=cfg,
                        vector_kwargs={"autoreset_mode": mode})
    actions = _actions(batched.action_space, 8)
    a, b = _run(batched, 11, actions), _run(sync, 11, actions)
    _same_vector_trajectory(a, b, keys=("loss", "student_ce", "lr", "iteration", "final_test_acc",
                                        "twin_final_val_acc", "twin_advantage"))
    assert any(step[2].any() for step in a[1:])  # an episode ended inside the comparison
    if mode == AutoresetMode.SAME_STEP:
        ended = next(step for step in a[1:] if step[2].any())[4]
        reference = next(step for step in b[1:] if step[2].any())[4]
        for k in np.flatnonzero(ended["_final_obs"]):
            np.testing.assert_allclose(ended["final_obs"][k], reference["final_obs"][k], **TOL)


@VECTORIZE
def test_sub_env_equals_single_env_in_sample_granularity_with_per_sample_weights(vectorize, synthetic_config):
    cfg = synthetic_config(granularity="sample", max_steps=4)
    venv = MultiTeacherKDVectorEnv(2, cfg, vectorize=vectorize)
    actions = _actions(venv.action_space, 4, seed=3)
    obs, _ = venv.reset(seed=20)
    steps = [venv.step(a) for a in actions]
    for k in range(2):
        env = MultiTeacherKDEnv(cfg)
        o, _ = env.reset(seed=20 + k)
        np.testing.assert_allclose(o, obs[k], **TOL)
        for a, (vo, vr, vt, _, vi) in zip(actions, steps):
            o, r, t, _, info = env.step(a[k])
            np.testing.assert_allclose(o, vo[k], **TOL)
            np.testing.assert_allclose(info["reward_vector"], vi["reward_vector"][k], **TOL)
            assert r == pytest.approx(vr[k], rel=1e-4, abs=2e-5) and t == vt[k]


@VECTORIZE
def test_sub_envs_reset_at_different_times_keep_their_own_schedule(vectorize, synthetic_config):
    """DISABLED autoreset and a reset of sub-env 0 alone mid-episode: the rows then sit at different
    iterations (different multistep learning rates) and each still follows its single env."""
    cfg = synthetic_config(max_steps=6)
    venv = MultiTeacherKDVectorEnv(2, cfg, autoreset_mode="Disabled", vectorize=vectorize)
    singles = [MultiTeacherKDEnv(cfg) for _ in range(2)]
    obs, _ = venv.reset(seed=3)
    for k, env in enumerate(singles):
        np.testing.assert_allclose(env.reset(seed=3 + k)[0], obs[k], **TOL)
    actions = _actions(venv.action_space, 8, seed=5)
    for t, a in enumerate(actions):
        if t == 3:
            obs, info = venv.reset(options={"reset_mask": np.array([True, False])})
            assert info["_episode_seed"].tolist() == [True, False]
            np.testing.assert_allclose(singles[0].reset()[0], obs[0], **TOL)
        obs, rew, term, _, info = venv.step(a)
        for k, env in enumerate(singles):
            o, r, done, _, i = env.step(a[k])
            np.testing.assert_allclose(o, obs[k], **TOL)
            assert r == pytest.approx(rew[k], rel=1e-4, abs=2e-5) and done == term[k]
            assert i["lr"] == pytest.approx(info["lr"][k]) and i["iteration"] == info["iteration"][k]
        if term.any():
            assert term.tolist() == [False, True]  # only sub-env 1 ended: sub-env 0 restarted at t = 3
            with pytest.raises(RuntimeError, match="episode has ended"):
                venv.step(a)
            break
    else:
        pytest.fail("sub-env 1 should have ended")
    assert len({float(x) for x in info["lr"]}) == 2


@VECTORIZE
def test_a_diverged_sub_env_ends_and_restarts_alone(vectorize, synthetic_config):
    """A NaN in one row's student ends that sub-env (penalty, final measurements) and restarts it;
    the other row, trained in the same batched backward, is untouched (its single env's values)."""
    cfg = synthetic_config(max_steps=8, divergence_penalty=-3.0)
    venv = MultiTeacherKDVectorEnv(2, cfg, autoreset_mode="SameStep", vectorize=vectorize)
    singles = [MultiTeacherKDEnv(cfg) for _ in range(2)]
    obs, _ = venv.reset(seed=4)
    for k, env in enumerate(singles):
        env.reset(seed=4 + k)
    for t, a in enumerate(_actions(venv.action_space, 4, seed=6)):
        if t == 2:  # .data: a pending graph's saved tensors stay as they were
            venv.engine.main.params["student.fc.weight"].data[0].fill_(float("nan"))
            singles[0].engine.student.fc.weight.data.fill_(float("nan"))
        obs, rew, term, _, info = venv.step(a)
        o1, r1, t1, _, _ = singles[1].step(a[1])
        np.testing.assert_allclose(o1, obs[1], **TOL)
        assert r1 == pytest.approx(rew[1], rel=1e-4, abs=2e-5) and not t1 and not term[1]
        _, r0, t0, _, i0 = singles[0].step(a[0])
        assert (t0, bool(term[0])) == ((True, True) if t == 3 else (False, False))
        if t == 3:
            assert rew[0] == r0 == -3.0 and i0["diverged"]
            final = info["final_info"]
            assert final["_diverged"].tolist() == [True, False] and final["diverged"][0]
            assert final["final_test_acc"][0] == pytest.approx(i0["final_test_acc"])
            np.testing.assert_allclose(obs[0], singles[0].reset()[0], **TOL)  # restarted in the same step


@VECTORIZE
def test_state_dict_round_trip_continues_bit_identically(vectorize, synthetic_config):
    cfg = synthetic_config(max_steps=6, reward="twin_val_loss", reward_interval=2)
    venv = MultiTeacherKDVectorEnv(2, cfg, vectorize=vectorize)
    actions = _actions(venv.action_space, 6, seed=2)
    venv.reset(seed=1)
    for a in actions[:3]:
        venv.step(a)
    state = venv.state_dict()
    straight = [venv.step(a) for a in actions[3:]]
    other = MultiTeacherKDVectorEnv(2, cfg, vectorize=vectorize)
    other.reset(seed=123)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.observations, state["obs"].numpy())
    for (o1, r1, t1, _, _), (o2, r2, t2, _, _) in zip(straight, [other.step(a) for a in actions[3:]]):
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(t1, t2)
    with pytest.raises(ValueError, match="num_envs"):
        MultiTeacherKDVectorEnv(3, cfg).load_state_dict(state)


def test_shared_batches_share_the_teachers_and_row_zero_is_the_single_env(synthetic_config):
    cfg = synthetic_config(max_steps=4)
    venv = MultiTeacherKDVectorEnv(3, cfg, shared_batches=True)
    obs, _ = venv.reset(seed=6)
    m = venv.envs[0].num_teachers
    np.testing.assert_array_equal(obs[0, :2 * m], obs[1, :2 * m])  # teacher CE and accuracy: the same batch
    assert not np.allclose(obs[0, 2 * m:3 * m], obs[1, 2 * m:3 * m])  # KL: different students
    env = MultiTeacherKDEnv(cfg)
    np.testing.assert_allclose(env.reset(seed=6)[0], obs[0], **TOL)
    for a in _actions(venv.action_space, 3):
        o, r, *_ = venv.step(a)
        np.testing.assert_allclose(env.step(a[0])[0], o[0], **TOL)


def test_bad_input_is_a_clear_error(synthetic_config):
    cfg = synthetic_config(max_steps=None, epochs=1.0, steps_per_action=3)  # 8 iterations
    with pytest.raises(ConfigError, match="multiple of 3"):
        MultiTeacherKDVectorEnv(2, cfg)
    with pytest.raises(ConfigError, match="num_envs"):
        MultiTeacherKDVectorEnv(0, synthetic_config())
    with pytest.raises(ValueError, match="autoreset_mode"):
        MultiTeacherKDVectorEnv(2, synthetic_config(), autoreset_mode="sometimes")
    venv = MultiTeacherKDVectorEnv(2, synthetic_config())
    with pytest.raises(ValueError, match="first reset"):
        venv.reset(options={"reset_mask": np.array([True, False])})
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="actions have shape"):
        venv.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"reset_mask": np.array([False, False])})


def test_steps_per_action_runs_whole_steps_in_lockstep(synthetic_config):
    cfg = synthetic_config(max_steps=3, steps_per_action=2)
    venv = MultiTeacherKDVectorEnv(2, cfg)
    env = MultiTeacherKDEnv(cfg)
    obs, _ = venv.reset(seed=9)
    env.reset(seed=9)
    for a in _actions(venv.action_space, 3):
        o, r, t, _, info = venv.step(a)
        o1, r1, t1, _, info1 = env.step(a[0])
        np.testing.assert_allclose(o1, o[0], **TOL)
        assert info1["iteration"] == info["iteration"][0] and t1 == t[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_env_on_cuda_matches_the_single_cuda_env_and_keeps_the_step_on_the_device(synthetic_config):
    cfg = synthetic_config(device="cuda", max_steps=6, reward="twin_val_loss", reward_interval=2)
    venv = MultiTeacherKDVectorEnv(4, cfg)
    actions = _actions(venv.action_space, 5)
    obs, _ = venv.reset(seed=2)
    steps = [venv.step(a) for a in actions]
    env = MultiTeacherKDEnv(cfg)
    o, _ = env.reset(seed=3)
    np.testing.assert_allclose(o, obs[1], rtol=1e-3, atol=1e-3)
    for a, (vo, vr, *_rest) in zip(actions, steps):
        o, r, *_ = env.step(a[1])
        np.testing.assert_allclose(o, vo[1], rtol=1e-3, atol=1e-3)
    engine = venv.engine
    assert engine.main.params["student.fc.weight"].is_cuda
    venv.reset(seed=0)
    w = torch.full((4, env.num_teachers), 1.0 / env.num_teachers, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # no host synchronisation inside the batched iteration
    try:
        for _ in range(2):
            engine.apply(w, w)
            engine.forward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_env_with_bf16_and_shared_batches_on_cuda(synthetic_config):
    kw = dict(device="cuda", amp="bf16", channels_last=True, max_steps=4,
              dataset_kwargs={"shape": [3, 16, 16], "num_classes": 10, "n_train": 256, "n_val": 64, "n_test": 64},
              teachers=["cnn=random", "tiny_resnet=random"], batch_size=64)
    venv = MultiTeacherKDVectorEnv(8, synthetic_config(**kw), shared_batches=True)
    obs, _ = venv.reset(seed=0)
    for _ in range(4):
        obs, rew, term, _, info = venv.step(np.zeros(venv.action_space.shape, np.float32))
        assert np.isfinite(rew).all() and venv.observation_space.contains(obs)
    assert term.all() and np.isfinite(info["final_test_acc"]).all()


@pytest.mark.parametrize("arch", ["ShuffleV2", "MobileNetV2", "resnet8x4", "wrn_16_2", "RegNetX_200MF"])
def test_vmapped_students_match_row_by_row(arch):
    """The CUDA default (one vmap over the stack) computes what each student computes alone, for
    the paper pool's students (grouped and depthwise convolutions, channel shuffles, BN), in
    float64 so that only the order of float operations could differ."""
    from contextlib import nullcontext

    from mtkd_env import models
    from mtkd_env.tasks.batch import teacher_stats
    from mtkd_env.models import ModelOutput
    from mtkd_env.engine.student_stack import StudentStack

    k, b = 2, 4
    students = []
    for seed in range(k):
        torch.manual_seed(seed)
        students.append(models.build(arch, num_classes=10, input_shape=(3, 32, 32)).double().train())
    stacks = [StudentStack(models.build(arch, num_classes=10, input_shape=(3, 32, 32)).double(), None, k,
                           (0.9, 1e-4, True), nullcontext, mode=m) for m in ("vmap", "rows")]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(k, b, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (k, b), generator=g)
    t_outs = [ModelOutput(torch.randn(k, b, 10, generator=g, dtype=torch.float64),
                          torch.randn(k, b, 8, 2, 2, generator=g, dtype=torch.float64),
                          torch.randn(k, b, 8, generator=g, dtype=torch.float64))]
    teacher = torch.func.vmap(lambda o, yy: teacher_stats(o, yy, 4.0))(t_outs, y)
    batches = []
    for stack in stacks:
        for row, student in enumerate(students):
            stack.load_row(row, student, None)
        batch = stack.measure((x, y, torch.zeros(k, b, dtype=torch.long), t_outs, teacher), 4.0, False)
        (batch.student_ce.sum() + batch.kl.sum()).backward()
        batches.append(batch)
    torch.testing.assert_close(batches[0].student_logits, batches[1].student_logits, rtol=1e-9, atol=1e-10)
    for name in stacks[0].params:
        torch.testing.assert_close(stacks[0].params[name].grad, stacks[1].params[name].grad, rtol=1e-8, atol=1e-10)
    for name in stacks[0].buffers:
        torch.testing.assert_close(stacks[0].buffers[name], stacks[1].buffers[name], rtol=1e-9, atol=1e-10)
    alone = students[1](x[1])  # and row 1 is student 1
    torch.testing.assert_close(batches[0].student_logits[1], alone.logits.double(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("keep_maps", [True, False], ids=["kept-maps", "fused-feature-terms"])
@pytest.mark.parametrize("shared", [False, True], ids=["own-batches", "shared-batch"])
@pytest.mark.parametrize("arch", ["tiny_cnn", "cnn", "mlp"])
def test_grouped_students_equal_separate_students(arch, shared, keep_maps):
    """The CPU default (the K students and their projectors as one grouped network, projector BN
    folded into the 1x1 conv; without kept maps the feature terms fused into one autograd node)
    computes what K separate students compute, in float64: the batch quantities, every gradient,
    the BatchNorm statistics and the eval-mode accuracy and CE."""
    import copy
    from contextlib import nullcontext

    from mtkd_env import models
    from mtkd_env.tasks.batch import teacher_stats
    from mtkd_env.engine.student_stack import StudentStack
    from mtkd_env.models import ModelOutput
    from mtkd_env.models.projectors import ProjectorBank

    k, b, shapes = 3, 6, [(8, 8, 8), (6, 4, 4), (5, 1, 1)]  # teacher maps larger, equal and smaller
    students, banks = [], []
    for seed in range(k):
        torch.manual_seed(seed)
        student = models.build(arch, num_classes=10, input_shape=(2, 8, 8)).double()
        channels = student.eval()(torch.randn(2, 2, 8, 8, dtype=torch.float64)).feature_map.shape[1]
        students.append(student.train())
        banks.append(ProjectorBank(channels, shapes).double().train())
    stacks = [StudentStack(copy.deepcopy(students[0]), copy.deepcopy(banks[0]), k, (0.9, 1e-4, True), nullcontext,
                           mode=m) for m in ("grouped", "rows")]
    g = torch.Generator().manual_seed(0)
    lead = () if shared else (k,)
    x = torch.randn(*lead, b, 2, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (*lead, b), generator=g)
    t_outs = [ModelOutput(*(torch.randn(*lead, b, *shape, generator=g, dtype=torch.float64)
                            for shape in ((10,), s, s[:1]))) for s in shapes]
    teacher = teacher_stats(t_outs, y, 4.0) if shared else torch.func.vmap(lambda o, yy: teacher_stats(o, yy, 4.0))(
        t_outs, y)
    weights = torch.rand(k, b, len(shapes), generator=g, dtype=torch.float64)  # feature weights, unequal
    batches = []
    for stack in stacks:
        for row in range(k):
            stack.load_row(row, students[row], banks[row])
        batch = stack.measure((x, y, torch.zeros(*lead, b, dtype=torch.long), t_outs, teacher), 4.0, keep_maps,
                              shared)
        (batch.student_ce.sum() + batch.kl.sum() + 5 * (weights * batch.feat_mse).sum()).backward()
        batches.append(batch)
    for field in ("student_logits", "student_ce", "kl", "feat_mse", "cos", "student_embedding"):
        torch.testing.assert_close(getattr(batches[0], field), getattr(batches[1], field), rtol=1e-9, atol=1e-10)
    if keep_maps:
        torch.testing.assert_close(batches[0].student_feature_map, batches[1].student_feature_map, rtol=1e-9,
                                   atol=1e-10)
        for p0, p1 in zip(batches[0].projected, batches[1].projected):
            torch.testing.assert_close(p0, p1, rtol=1e-9, atol=1e-10)
    for name in stacks[1].params:
        torch.testing.assert_close(stacks[0].params[name].grad, stacks[1].params[name].grad, rtol=1e-8, atol=1e-10,
                                   msg=name)
    for name in stacks[1].buffers:
        torch.testing.assert_close(stacks[0].buffers[name], stacks[1].buffers[name], rtol=1e-9, atol=1e-10, msg=name)
    xe, ye = x.reshape(-1, 2, 8, 8), y.reshape(-1)
    torch.testing.assert_close(*(s.correct_and_ce(xe, ye, 4, lambda t: t) for s in stacks), rtol=1e-9, atol=1e-9)
    alone = students[1](x if shared else x[1])  # and row 1 is student 1
    torch.testing.assert_close(batches[0].student_logits[1], alone.logits, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("shared", [False, True], ids=["own-targets", "shared-targets"])
def test_fused_feature_term_gradient_is_the_numerical_one(relu, shared):
    """`FeatureTerm`'s hand-written backward against finite differences (float64), and its
    forward against the unfused computation (`engine.batch.feature_terms`)."""
    from mtkd_env.tasks.batch import feature_terms
    from mtkd_env.engine.fused_features import FeatureTerm
    from mtkd_env.models import ModelOutput

    g = torch.Generator().manual_seed(0)
    k, b, c_s, c_m, n = 2, 3, 4, 5, 6
    u, w, s = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
               for shape in ((k, b, c_s, n), (k, c_m, c_s), (k, c_m)))
    lead = () if shared else (k,)
    target = torch.randn(*lead, b, c_m, n, generator=g, dtype=torch.float64)
    embedding = torch.randn(*lead, b, c_m, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: FeatureTerm.apply(*a, target, embedding, relu)[0], (u, w, s))
    mse, cos = FeatureTerm.apply(u, w, s, target, embedding, relu)
    projected = torch.matmul(w[:, None], u) + s[:, None, :, None]
    projected = (projected.relu() if relu else projected).view(k, b, c_m, 2, 3)
    ref_mse, ref_cos = feature_terms([projected], [ModelOutput(None, target.view(*lead, b, c_m, 2, 3), embedding)])
    torch.testing.assert_close(mse, ref_mse[..., 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cos, ref_cos[..., 0], rtol=1e-12, atol=1e-12)
    assert not cos.requires_grad


def test_grouped_mode_needs_an_architecture_that_has_it(synthetic_config):
    with pytest.raises(ConfigError, match="no grouped form"):
        MultiTeacherKDVectorEnv(2, synthetic_config(student="tiny_resnet"), vectorize="grouped")
    with pytest.raises(ConfigError, match="vectorize: expected"):
        MultiTeacherKDVectorEnv(2, synthetic_config(), vectorize="fast")
    assert MultiTeacherKDVectorEnv(2, synthetic_config()).engine.mode == "grouped"  # the CPU default for tiny_cnn
    assert MultiTeacherKDVectorEnv(2, synthetic_config(student="tiny_resnet")).engine.mode == "rows"
