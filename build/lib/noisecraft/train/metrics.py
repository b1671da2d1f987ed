"""Reading train_log.jsonl back and drawing it: loss and throughput against the step."""
from __future__ import annotations

import json
from pathlib import Path

from noisecraft.errors import NoisecraftError
from noisecraft.train.loop import LOG_FILE


def read_log(run_dir: Path) -> list[dict]:
    """The records of a run, in step order. A run killed after its last checkpoint and resumed logs
    those steps again; the later records win, so a curve never doubles back."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise NoisecraftError(f"{path} does not exist: give the --out folder of a training run")
    records: list[dict] = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if n == len(lines):                           # the last line, cut short by a kill
                break
            raise NoisecraftError(f"{path} line {n} is not a training log record: fix or remove that line") from None
        while records and records[-1]["step"] >= step:
            records.pop()
        records.append(record)
    if not records:
        raise NoisecraftError(f"{path} has no records yet: a run logs every --log-every steps")
    return records


def log_figure(records: list[dict], title: str = ""):
    """Loss (log scale) and images per second against the step, with skipped batches marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax1.plot(steps, [r["loss"] for r in records], lw=1)
    ax1.set_yscale("log")
    ax1.set(xlabel="step", ylabel="loss (mean over the interval)", title="loss")
    bad = [(r["step"], r["loss"]) for r in records if r.get("skipped")]
    if bad:
        ax1.scatter(*zip(*bad), color="tab:red", s=12, zorder=3, label="NaN/inf batches skipped")
        ax1.legend()
    ax2.plot(steps, [r["img_s"] for r in records], lw=1, color="tab:green")
    ax2.set(xlabel="step", ylabel="images / s", title="throughput", ylim=(0, None))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
