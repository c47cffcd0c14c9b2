"""`python -m mtkd_env`: one episode with equal weights (AVER) on the embedded default."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    from .config import ConfigError, EnvConfig, load_config_file, parse_overrides

    parser = argparse.ArgumentParser(prog="python -m mtkd_env", description=__doc__)
    parser.add_argument("--env-config", help="YAML/JSON file of EnvConfig fields")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="EnvConfig overrides")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        data = load_config_file(args.env_config) if args.env_config else {}
        data.update(parse_overrides(args.env))
        cfg = EnvConfig.from_dict(data)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from tqdm.auto import tqdm

    from .distributed import init_from_env, leave
    from .env import MultiTeacherKDEnv

    ctx = init_from_env(cfg.device)  # under torchrun: one distillation over all ranks
    try:
        env = MultiTeacherKDEnv(cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # ConfigError, CheckpointError, missing data
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    obs, info = env.reset(seed=args.seed)
    say = print if ctx.is_main else (lambda *a, **k: None)  # only rank 0 reports
    say("teachers (val acc): " + ", ".join(f"{n} {a:.3f}" for n, a in zip(info["teacher_names"],
                                                                         info["teacher_val_acc"])))
    equal = np.full(env.num_teachers, 1.0 / env.num_teachers, dtype=np.float32)
    total = 0.0
    with tqdm(total=env.total_steps, desc="AVER episode", disable=not ctx.is_main) as bar:
        while True:
            obs, reward, terminated, truncated, info = env.step_weights(equal)
            total += reward
            bar.update(1)
            bar.set_postfix(loss=f"{info['loss']:.3f}", acc=f"{info['student_acc']:.3f}")
            if terminated or truncated:
                break
    say(f"steps {info['step']}  return {total:.4f}  final val acc {info['final_val_acc']:.4f}  "
          f"final test acc {info['final_test_acc']:.4f}  (world size {ctx.world_size}, device {env.engine.device})")
    leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
