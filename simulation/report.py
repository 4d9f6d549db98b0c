"""The results table, the plot and results.json of a simulated federation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nebula.simulation.baselines import BaselineResult

COLUMNS = (
    "method",
    "mean client acc",
    "min client",
    "client own-split acc",
    "teacher",
    "global student",
    "up B/client/round",
    "down B/client/round",
    "seconds",
)
ACCURACY_COLUMNS = frozenset(COLUMNS[1:6])


def federation_row(history: list[dict], *, aggregation: str) -> dict:
    last = history[-1]
    return {
        "method": f"nebula FD ({aggregation})",
        "mean client acc": last["mean_client_acc"],
        "min client": last["min_client_acc"],
        "client own-split acc": last["mean_client_acc_own"],
        "teacher": last["teacher_acc"],
        "global student": last["student_acc"],
        "up B/client/round": float(np.mean([h["bytes_up_per_client"] for h in history])),
        "down B/client/round": float(np.mean([h["bytes_down_per_client"] for h in history])),
        "seconds": float(sum(h["seconds"] for h in history)),
    }


def baseline_row(b: BaselineResult) -> dict:
    return {
        "method": b.name,
        "mean client acc": b.mean_client_acc,
        "min client": b.min_client_acc,
        "client own-split acc": b.mean_client_acc_own,
        "teacher": None,
        "global student": b.student_acc,
        "up B/client/round": b.bytes_up_per_client,
        "down B/client/round": b.bytes_down_per_client,
        "seconds": b.seconds,
    }


def _cell(value, column: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    return f"{100 * value:.1f}" if column in ACCURACY_COLUMNS else f"{value:,.0f}"


def format_table(rows: list[dict]) -> str:
    """A Markdown table; accuracies in percent, bytes and seconds as integers."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), c) for c in COLUMNS) + " |")
    return "\n".join(lines)


def save_plot(history: list[dict], baselines: list[BaselineResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history]
    fig, (ax_acc, ax_bytes) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (
        ("mean_client_acc", "mean client"),
        ("teacher_acc", "teacher"),
        ("student_acc", "global student"),
    ):
        points = [(h["round"], h[key]) for h in history if h.get(key) is not None]
        if points:
            ax_acc.plot(*zip(*points), marker="o", label=f"FD {label}")
    for b in baselines:
        if b.curve:
            ax_acc.plot(range(1, len(b.curve) + 1), b.curve, linestyle="--", label=b.name)
        elif b.mean_client_acc is not None:
            ax_acc.axhline(b.mean_client_acc, linestyle=":", color="grey", label=f"{b.name} (final)")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_acc, ax_bytes):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set(xlabel="round", ylabel="accuracy on the global test set", title="Accuracy")
    ax_acc.legend(fontsize=8)
    ax_bytes.plot(rounds, [h["bytes_up_per_client"] for h in history], marker="o", label="FD up")
    ax_bytes.plot(rounds, [h["bytes_down_per_client"] for h in history], marker="o", label="FD down")
    for b in baselines:
        if b.bytes_up_per_client:
            ax_bytes.plot(rounds, [b.bytes_up_per_client] * len(rounds), linestyle="--", label=f"{b.name} up/down")
    ax_bytes.set(xlabel="round", ylabel="bytes per client", yscale="log", title="Communication per round")
    ax_bytes.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_results(rows: list[dict], history: list[dict], config_flat: dict, path: Path) -> Path:
    path.write_text(json.dumps({"table": rows, "rounds": history, "config": config_flat}, indent=2, default=float))
    return path
