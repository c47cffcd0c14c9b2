"""The learning curve of a training run, from its `metrics.jsonl`: per training episode, the
policy's mean weight per teacher, its advantage over equal weights (when the env has the AVER twin)
and the episode return. `agents.train` writes it as `learning_curve.png` at the end of a run;
`python -m agents.curves RUN_DIR [--out FILE]` redraws it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Dict, List, Optional, Sequence, Union

import numpy as np

from mtkd_env.runtime.cli import ArgumentParser, run_cli
from mtkd_env.runtime.errors import ConfigError
from mtkd_env.runtime.files import check_output_file
from mtkd_env.runtime.options import Cli, add_options, options_from, settings

__all__ = ["episode_series", "plot_learning_curve", "CurvesOptions", "main"]

CURVE_NAME = "learning_curve.png"


@settings(label="flag")
class CurvesOptions:
    """The `python -m agents.curves` arguments."""

    run_dir: Annotated[str, Cli(positional=True)]
    """A run directory of agents.train."""
    out: Annotated[Optional[str], Cli(metavar="FILE", help_default=f"RUN_DIR/{CURVE_NAME}")] = None
    """Output PNG."""


def episode_series(rows: Sequence[dict]) -> Dict[str, np.ndarray]:
    """Per-episode arrays (one entry per training episode, in order) of every `episode/*` key."""
    episodes = [r for r in rows if "episode/index" in r]
    keys = sorted({k for r in episodes for k in r if k.startswith("episode/")})
    return {k: np.array([r.get(k, np.nan) for r in episodes], dtype=np.float64) for k in keys}


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean over `window` episodes (over the episodes so far at the start)."""
    if len(x) < 2:
        return x
    window = max(1, min(window, len(x)))
    sums = np.concatenate([[0.0], np.cumsum(np.nan_to_num(x, nan=0.0))])
    end = np.arange(1, len(x) + 1)
    start = np.maximum(0, end - window)
    return (sums[end] - sums[start]) / (end - start)


def plot_learning_curve(rows: Sequence[dict], path: Union[str, Path], title: str = "",
                        window: Optional[int] = None) -> bool:
    """Draw the curve into `path` (PNG); False when the rows hold no finished episode."""
    series = episode_series(rows)
    if "episode/index" not in series or not len(series["episode/index"]):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = series["episode/index"]
    window = window or max(1, len(ep) // 10)
    weights = sorted(k for k in series if k.startswith("episode/weight_logit/"))
    has_adv = "episode/advantage_test" in series
    panels = 3 if has_adv else 2
    fig, axes = plt.subplots(panels, 1, figsize=(7, 2.6 * panels), sharex=True)
    ax = axes[0]
    for key in weights:
        y = series[key]
        line, = ax.plot(ep, _smooth(y, window), label=key.rsplit("/", 1)[1])
        ax.plot(ep, y, color=line.get_color(), alpha=0.2, lw=0.8)
    if weights:
        ax.axhline(1.0 / len(weights), color="k", ls=":", lw=0.8, label="uniform")
    ax.set_ylabel("mean logit weight\nper episode")
    ax.legend(fontsize=7, ncol=2)
    if has_adv:
        ax = axes[1]
        for key, label in (("episode/advantage_val", "val"), ("episode/advantage_test", "test")):
            if key in series:
                y = 100 * series[key]
                line, = ax.plot(ep, _smooth(y, window), label=f"{label} (running mean of {window})")
                ax.plot(ep, y, color=line.get_color(), alpha=0.2, lw=0.8)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("advantage over the\nAVER twin (pp)")
        ax.legend(fontsize=7)
    ax = axes[-1]
    ret = series.get("episode/return", np.full(len(ep), np.nan))
    ax.plot(ep, ret, alpha=0.3, lw=0.8)
    ax.plot(ep, _smooth(ret, window))
    ax.set_ylabel("episode return")
    ax.set_xlabel("training episode (one student training run each)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Optional[List[str]]) -> int:
    from .tracking import read_metrics

    p = ArgumentParser(prog="python -m agents.curves", description=__doc__)
    add_options(p, CurvesOptions)
    args = options_from(CurvesOptions, vars(p.parse_args(argv)))
    metrics = Path(args.run_dir) / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"{args.run_dir}: no metrics.jsonl (expected a run directory of agents.train)")
    out = args.out or str(Path(args.run_dir) / CURVE_NAME)
    check_output_file(out, "--out")
    if not plot_learning_curve(read_metrics(metrics), out, title=Path(args.run_dir).name):
        raise ConfigError(f"{metrics}: no finished training episode to plot")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
