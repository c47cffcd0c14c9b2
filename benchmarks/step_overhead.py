"""Overhead of one env step against a hand-written equal-weight KD iteration (the floor).

    python -m benchmarks.step_overhead [--config digits|paper-cifar|scenes|scene_boxes] [--batch 64 128] [--device auto]
                                       [--amp none|bf16] [--channels-last] [--cudnn-benchmark]
                                       [--teacher-cache auto|on|off]
                                       [--compile-mode reduce-overhead] [--methods NAME ...] [--json FILE]

In one process, on one device, with the same teachers, student architecture and device-resident
batches, it times
  (a) the floor: teachers forward (no grad; or, with the env's teacher cache, the gather of
      their cached outputs), student forward/backward with logit + feature KD at equal weights,
      optimiser step — written by hand, no env;
  (b) `env.step` at teacher granularity (equal-weight action; reward "neg_loss", which measures
      nothing extra);
  (c) `env.step` at sample granularity with the MTKD-RL agent's forward choosing per-sample weights;
  then one row per weighting method of `--methods` (default: all of `benchmarks.policy_steps`:
  ca-mkd, mmkd, mtkd-rl, mtkd-rl-pg, rmts, ppo, ppo-shipped), each one env step as the method trains, with its
  own overhead (feature heads, meta steps, agent updates).
It prints median ms/step, steps/s, peak GPU memory and the ratios to (a), and for (a) and (b)
the FLOPs of one step (`torch.utils.flop_counter`: matmuls and convolutions, forward and backward)
and the achieved TFLOP/s; `--json` writes them with top-level keys `ratio_b_a`, `ratio_c_a`,
`tflop_per_s_a`, `tflop_per_s_b` and `ratio_to_floor` (per method; for the last batch size).
`--cudnn-benchmark` and `--compile-mode` switch on the GPU fast paths of `EnvConfig`;
`--teacher-cache` sets `cache_teacher_outputs` (auto: the env's default, on where exact).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from dataclasses import field
from typing import Annotated, Callable, Dict, List, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from mtkd_env import EnvConfig
from mtkd_env import models
from mtkd_env.env import MultiTeacherKDEnv
from mtkd_env.models.projectors import ProjectorBank
from mtkd_env.runtime.cli import run_cli
from mtkd_env.runtime.options import Cli, DeviceName, settings

from .cli import parse_flags, write_json
from .policy_steps import METHODS

PAPER_TEACHERS = ["RegNetY_400MF=random", "RegNetX_400MF=random", "resnet32x4=random", "wrn_28_4=random"]

CONFIGS: Dict[str, dict] = {
    "digits": {},
    "paper-cifar": {"dataset": "synthetic", "teachers": PAPER_TEACHERS, "student": "ShuffleV2",
                    "dataset_kwargs": {"shape": [3, 32, 32], "num_classes": 100, "n_val": 256, "n_test": 256}},
    "tiny": {"dataset": "synthetic", "teachers": ["mlp=random", "cnn=random"], "student": "tiny_cnn",
             "dataset_kwargs": {"shape": [1, 8, 8], "num_classes": 4, "n_val": 32, "n_test": 32}},
    # the dense tasks' embedded scenarios (seg_unreliable, det_unreliable) with untrained teachers
    "scenes": {"task": "segmentation", "dataset": "scenes", "student": "seg_tiny",
               "teachers": ["seg_resnet=random", "seg_cnn=random", "seg_cnn=random"]},
    "scene_boxes": {"task": "detection", "dataset": "scene_boxes", "student": "det_tiny",
                    "teachers": ["det_resnet=random", "det_cnn=random", "det_cnn=random"]},
}
CONFIG_NAMES = tuple(sorted(CONFIGS))
"""The configuration names, for the `--config` flag."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(step: Callable[[], None], device: torch.device, steps: int = 8) -> float:
    """Peak allocated device memory over a few steps (NaN on CPU)."""
    if device.type != "cuda":
        return float("nan")
    step()
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        step()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def flops_per_step(step: Callable[[], None]) -> int:
    """FLOPs of one call of `step` (forward and backward), counted by `torch.utils.flop_counter`
    over the ops it dispatches (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def time_interleaved(steps: Dict[str, Callable[[], None]], device: torch.device, warmup: int, blocks: int,
                     per_block: int) -> Dict[str, dict]:
    """Median ms/step of each mode over `blocks` rounds; each round runs a block of `per_block` steps
    of every mode in turn, so drift in machine load or clocks hits all modes alike. Syncs only at
    block ends, so the floor's asynchronous GPU execution is not serialised."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: Dict[str, list] = {name: [] for name in steps}
    for _ in range(blocks):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(per_block):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1000.0 / per_block)
    out = {}
    for name, t in times.items():
        ms = statistics.median(t)
        out[name] = {"ms_per_step": ms, "steps_per_s": 1000.0 / ms}
    return out


def floor_step_fn(env: MultiTeacherKDEnv, seed: int) -> Callable[[], None]:
    """The hand-written equal-weight multi-teacher KD iteration the env is measured against. With
    the env's teacher cache on (`EnvConfig.cache_teacher_outputs`), it gathers the teachers'
    outputs from that cache as the env does, so that the ratio compares the same teacher work."""
    eng, cfg = env.engine, env.config
    teachers = [t.model for t in eng.teachers]
    torch.manual_seed(seed)
    student = models.build(cfg.student, num_classes=eng.num_classes, input_shape=eng.input_shape).to(eng.device)
    with torch.no_grad():
        s_channels = student(eng.val_x[:2]).feature_map.shape[1]
    projectors = ProjectorBank(s_channels, eng.teacher_feature_shapes).to(eng.device)
    if cfg.channels_last:
        for module in (student, *teachers):
            module.to(memory_format=torch.channels_last)
    params = list(student.parameters()) + list(projectors.parameters())
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True,
                          foreach=True)  # as the env's: the per-parameter loop's arithmetic in fewer calls
    if cfg.compile:  # run the same way as the env: compiled student, projectors and teachers
        student, projectors = (torch.compile(mod, mode=cfg.compile_mode) for mod in (student, projectors))
        teachers = list(eng._teacher_forwards)
    loader = eng.loader
    loader.reset(seed)
    temp, m = cfg.kd_temperature, len(teachers)
    amp = cfg.amp == "bf16" and eng.device.type == "cuda"
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    cached = eng.caches_teacher_outputs  # the env's teacher cache: the floor gathers the same rows
    # (outputs and tempered log-probabilities, which depend on the image only)

    def step() -> None:
        x, y, index = loader.next()
        x = x.contiguous(memory_format=fmt)
        with torch.autocast(eng.device.type, dtype=torch.bfloat16, enabled=amp):
            if cached:
                t_outs, stats = eng.teacher_side(x, y, index)
                log_pts = list(stats.log_pt)
            else:
                with torch.no_grad():
                    t_outs = [t(x) for t in teachers]
                    log_pts = ([F.log_softmax(o.logits.float() / temp, dim=-1) for o in t_outs]
                               if cfg.task == "classification" else [])
            s_out = student(x)
            proj = projectors(s_out.feature_map)
        if cfg.task != "classification":
            loss = DENSE_FLOORS[cfg.task](t_outs, s_out, proj, y, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return
        log_ps = F.log_softmax(s_out.logits.float() / temp, dim=-1)
        loss = F.cross_entropy(s_out.logits.float(), y)
        for o, p, log_pt in zip(t_outs, proj, log_pts):
            kd = temp ** 2 * (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
            mse = F.mse_loss(p.float(), o.feature_map.float())
            loss = loss + cfg.kd_alpha * kd / m + cfg.feat_beta * mse / m
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _segmentation_floor(t_outs, s_out, proj, y, cfg) -> torch.Tensor:
    """Equal-weight pixel KD by hand: CE over valid pixels + sum_m (T^2 KL over valid pixels + MSE) / M."""
    temp, m, valid = cfg.kd_temperature, len(t_outs), y != 255
    s = s_out.logits.float()
    log_ps = F.log_softmax(s / temp, dim=1)
    loss = F.cross_entropy(s, y, ignore_index=255)
    for o, p in zip(t_outs, proj):
        log_pt = F.log_softmax(o.logits.float() / temp, dim=1)
        kd = temp ** 2 * (log_pt.exp() * (log_pt - log_ps)).sum(1)[valid].mean()
        loss = loss + cfg.kd_alpha * kd / m + cfg.feat_beta * F.mse_loss(p.float(), o.feature_map.float()) / m
    return loss


def _detection_floor(t_outs, s_out, proj, y, cfg) -> torch.Tensor:
    """Equal-weight dense-output KD by hand: location CE + GIoU over positives + sum_m (T^2 KL over
    locations + MSE) / M (the FCOS assignment is the data's, `mtkd_env.tasks.detection.assign`)."""
    from torchvision.ops import generalized_box_iou_loss

    from mtkd_env.tasks.detection import assign

    temp, m = cfg.kd_temperature, len(t_outs)
    cls, box, positive = assign(s_out.centers, y)
    s = s_out.logits.float()
    log_ps = F.log_softmax(s / temp, dim=-1)
    giou = generalized_box_iou_loss(s_out.boxes[positive], box[positive], reduction="mean") if positive.any() else 0.0
    loss = F.cross_entropy(s.transpose(1, 2), cls) + giou
    for o, p in zip(t_outs, proj):
        log_pt = F.log_softmax(o.logits.float() / temp, dim=-1)
        kd = temp ** 2 * (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
        loss = loss + cfg.kd_alpha * kd / m + cfg.feat_beta * F.mse_loss(p.float(), o.feature_map.float()) / m
    return loss


DENSE_FLOORS = {"segmentation": _segmentation_floor, "detection": _detection_floor}
"""The hand-written floor's loss of the dense tasks (classification's is inline in `floor_step_fn`)."""


def env_step_fn(env: MultiTeacherKDEnv, seed: int) -> Callable[[], None]:
    action = np.zeros(env.action_space.shape, dtype=np.float32)  # softmax(0) = equal weights
    env.reset(seed=seed)

    def step() -> None:
        _, _, terminated, _, _ = env.step(action)
        if terminated:
            env.reset()

    return step


def agent_step_fn(env: MultiTeacherKDEnv, seed: int) -> Callable[[], None]:
    """Sample granularity: the MTKD-RL agent maps the (B, F) state to per-sample weights."""
    from agents.mtkd_rl import MTKDRL, MTKDRLConfig

    # No warm-up: time the network forward (state to device, MLP + priors, weights back).
    agent = MTKDRL(env, variant="code", config=MTKDRLConfig(warmup=False), seed=seed, device=env.engine.device)
    obs, _ = env.reset(seed=seed)
    state = {"obs": obs}

    def step() -> None:
        action = agent.predict(state["obs"], deterministic=True)[0]
        state["obs"], _, terminated, _, _ = env.step(action)
        if terminated:
            state["obs"], _ = env.reset()

    return step


def run(config: str, batch: int, device: str, amp: str, channels_last: bool, warmup: int, blocks: int,
        per_block: int, cache_dir: str | None, methods: tuple = tuple(METHODS), fast: dict | None = None) -> dict:
    base = dict(CONFIGS[config], batch_size=batch, device=device, amp=amp, channels_last=channels_last,
                reward="neg_loss", show_progress=False, epochs=1000.0, **(fast or {}))
    if cache_dir:
        base["teacher_cache_dir"] = cache_dir
    if base.get("dataset") == "synthetic":
        base["dataset_kwargs"] = dict(base["dataset_kwargs"], n_train=batch * 32)
    cfg = EnvConfig(**base)
    cfg_c = cfg.replace(granularity="sample", separate_feature_weights=True, action_transform="linear",
                        reward="paper")

    # Pass 1, memory: one mode at a time, each with the same resident set (one teacher pool, one
    # copy of the data, one student).
    env = MultiTeacherKDEnv(cfg)
    dev = env.engine.device
    memory = {"a_floor": peak_memory_mb(floor_step_fn(env, 0), dev)}
    memory["b_env_teacher"] = peak_memory_mb(env_step_fn(env, 0), dev)
    del env
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    env_c = MultiTeacherKDEnv(cfg_c)
    memory["c_env_sample_agent"] = peak_memory_mb(agent_step_fn(env_c, 0), dev)
    del env_c
    gc.collect()
    for name in methods:
        overrides, build = METHODS[name]
        env_m = MultiTeacherKDEnv(cfg.replace(**overrides))
        memory[name] = peak_memory_mb(build(env_m, 0), dev)
        del env_m
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    # Pass 2, time: all modes alive, measured in interleaved blocks.
    env_ab, env_c = MultiTeacherKDEnv(cfg), MultiTeacherKDEnv(cfg_c)
    steps = {"a_floor": floor_step_fn(env_ab, 0), "b_env_teacher": env_step_fn(env_ab, 0),
             "c_env_sample_agent": agent_step_fn(env_c, 0)}
    for name in methods:
        overrides, build = METHODS[name]
        steps[name] = build(MultiTeacherKDEnv(cfg.replace(**overrides)), 0)
    results = time_interleaved(steps, dev, warmup, blocks, per_block)
    for name, mb in memory.items():
        results[name]["peak_mem_mb"] = mb
    for name in ("a_floor", "b_env_teacher"):  # achieved throughput of the step's work
        flops = flops_per_step(steps[name])
        results[name]["gflop_per_step"] = flops / 1e9
        results[name]["tflop_per_s"] = flops / (results[name]["ms_per_step"] / 1000.0) / 1e12
    a = results["a_floor"]
    for key in ("b_env_teacher", "c_env_sample_agent", *methods):
        results[key]["ratio_to_floor"] = results[key]["ms_per_step"] / a["ms_per_step"]
        if dev.type == "cuda":
            results[key]["mem_ratio_to_floor"] = results[key]["peak_mem_mb"] / a["peak_mem_mb"]
    return {"config": config, "batch": batch, "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch": torch.__version__, "amp": amp, "channels_last": channels_last, **(fast or {}),
            "threads": torch.get_num_threads(), "results": results}


@settings(label="flag")
class StepOverheadBenchmark:
    """The flags of `python -m benchmarks.step_overhead`."""

    config: Literal[CONFIG_NAMES] = "digits"
    """Benchmark configuration (`CONFIGS`)."""
    batch: Annotated[List[Annotated[int, Field(ge=1)]], Field(min_length=1), Cli(item="batch size")] = field(
        default_factory=lambda: [64])
    """Batch sizes to time."""
    device: DeviceName = "auto"
    """Torch device: auto, cpu, cuda or cuda:N."""
    amp: Literal["none", "bf16"] = "none"
    """Mixed precision of the forward passes on CUDA."""
    channels_last: bool = False
    """channels_last memory format."""
    cudnn_benchmark: bool = False
    """EnvConfig cudnn_benchmark (CUDA)."""
    compile_mode: Optional[Literal["default", "reduce-overhead", "max-autotune"]] = None
    """torch.compile student and teachers in this mode (reduce-overhead: CUDA graphs)."""
    teacher_cache: Literal["auto", "on", "off"] = "auto"
    """EnvConfig cache_teacher_outputs: auto (null, the default: on where exact), on (true), off (false);
    the floor (a) gathers from the same cache."""
    warmup: Annotated[int, Field(ge=0)] = 20
    """Untimed steps first."""
    blocks: Annotated[int, Field(ge=1)] = 9
    """Timed blocks."""
    per_block: Annotated[int, Field(ge=1)] = 30
    """Steps per block."""
    teacher_cache_dir: Optional[str] = None
    """Teacher cache folder."""
    methods: List[Literal[tuple(METHODS)]] = field(default_factory=lambda: list(METHODS))
    """Weighting methods with a row each (none: only a, b, c)."""
    json: Annotated[Optional[str], Cli(metavar="FILE")] = None
    """Write the figures to this JSON file."""


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    args, _ = parse_flags(StepOverheadBenchmark, "python -m benchmarks.step_overhead", __doc__, argv)
    runs = []
    print(f"{'config':12s} {'batch':>5s} {'mode':22s} {'ms/step':>9s} {'steps/s':>9s} {'peak MB':>9s} {'ratio':>7s} "
          f"{'TFLOP/s':>8s}")
    for batch in args.batch:
        fast = {"cudnn_benchmark": args.cudnn_benchmark,
                "cache_teacher_outputs": {"auto": None, "on": True, "off": False}[args.teacher_cache]}
        if args.compile_mode:
            fast.update(compile=True, compile_mode=args.compile_mode)
        out = run(args.config, batch, args.device, args.amp, args.channels_last, args.warmup, args.blocks,
                  args.per_block, args.teacher_cache_dir, tuple(args.methods), fast)
        runs.append(out)
        for mode, r in out["results"].items():
            print(f"{args.config:12s} {batch:5d} {mode:22s} {r['ms_per_step']:9.3f} {r['steps_per_s']:9.1f} "
                  f"{r['peak_mem_mb']:9.1f} {r.get('ratio_to_floor', 1.0):7.3f} "
                  + (f"{r['tflop_per_s']:8.3f}" if "tflop_per_s" in r else ""))
    last = runs[-1]["results"]
    summary = {"ratio_b_a": last["b_env_teacher"]["ratio_to_floor"],
               "ratio_c_a": last["c_env_sample_agent"]["ratio_to_floor"],
               "mem_ratio_b_a": last["b_env_teacher"].get("mem_ratio_to_floor"),
               "mem_ratio_c_a": last["c_env_sample_agent"].get("mem_ratio_to_floor"),
               "ratio_to_floor": {m: last[m]["ratio_to_floor"] for m in args.methods},
               "mem_ratio_to_floor": {m: last[m].get("mem_ratio_to_floor") for m in args.methods},
               "tflop_per_s_a": last["a_floor"]["tflop_per_s"], "tflop_per_s_b": last["b_env_teacher"]["tflop_per_s"],
               "device": runs[-1]["device"], "device_name": runs[-1]["device_name"], "runs": runs}
    print(f"device {summary['device_name']}  b/a {summary['ratio_b_a']:.3f}  c/a {summary['ratio_c_a']:.3f}  "
          f"TFLOP/s a {summary['tflop_per_s_a']:.3f} b {summary['tflop_per_s_b']:.3f}")
    write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
