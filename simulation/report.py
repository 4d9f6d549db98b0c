"""The results table, the plot and results.json of a simulated federation.

Beside accuracy the table shows macro-F1 (:mod:`nebula.common.metrics`), and one line above it the
majority-class rate of the global test set: the accuracy of answering its most frequent class for every
input, the floor an accuracy must clear to mean anything. It is a property of the test set, the same for
every row, so it is a line and not a column. A model whose most predicted class takes >= 95% of its test
predictions (``ONE_CLASS_SHARE``) has its accuracy marked with a dagger, explained under the table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.metrics import ONE_CLASS_SHARE, one_class
from nebula.simulation.baselines import BaselineResult

COLUMNS = (
    "method",
    "mean client acc",
    "mean client F1",
    "min client",
    "client own-split acc",
    "teacher",
    "teacher F1",
    "global student",
    "global student F1",
    "up B/client/round",
    "down B/client/round",
    "seconds",
)
ACCURACY_COLUMNS = frozenset(COLUMNS[1:9])
ONE_CLASS_MARK = "\N{DAGGER}"
# The accuracy cell that is marked, and the row key holding the top-class share(s) it is marked by.
FLAGGED = {
    "mean client acc": "client top shares",
    "teacher": "teacher top share",
    "global student": "global student top share",
}


def _client_values(clients: dict[str, dict], key: str) -> list[float]:
    return [m[key] for m in clients.values() if m.get(key) is not None]


def federation_row(history: list[dict], *, aggregation: str) -> dict:
    last = history[-1]
    return {
        "method": f"nebula FD ({aggregation})",
        "mean client acc": last["mean_client_acc"],
        "mean client F1": last.get("mean_client_f1"),
        "min client": last["min_client_acc"],
        "client own-split acc": last["mean_client_acc_own"],
        "teacher": last["teacher_acc"],
        "teacher F1": last.get("teacher_f1"),
        "global student": last["student_acc"],
        "global student F1": last.get("student_f1"),
        "up B/client/round": float(np.mean([h["bytes_up_per_client"] for h in history])),
        "down B/client/round": float(np.mean([h["bytes_down_per_client"] for h in history])),
        "seconds": float(sum(h["seconds"] for h in history)),
        "client top shares": _client_values(last.get("clients", {}), "top_share"),
        "teacher top share": last.get("teacher_top_share"),
        "global student top share": last.get("student_top_share"),
    }


def baseline_row(b: BaselineResult) -> dict:
    return {
        "method": b.name,
        "mean client acc": b.mean_client_acc,
        "mean client F1": b.mean_client_f1,
        "min client": b.min_client_acc,
        "client own-split acc": b.mean_client_acc_own,
        "teacher": b.teacher_acc,
        "teacher F1": None,
        "global student": b.student_acc,
        "global student F1": b.student_f1,
        "up B/client/round": b.bytes_up_per_client,
        "down B/client/round": b.bytes_down_per_client,
        "seconds": b.seconds,
        "client top shares": list(b.client_top_shares),
        "teacher top share": None,
        "global student top share": b.student_top_share,
    }


def _flagged(row: dict, column: str) -> list[float]:
    """The one-class top shares behind ``column``'s cell (empty: not flagged)."""
    shares = row.get(FLAGGED.get(column, ""))
    shares = shares if isinstance(shares, list) else [shares]
    return [s for s in shares if one_class(s)]


def _cell(value, column: str, row: dict | None = None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    if column not in ACCURACY_COLUMNS:
        return f"{value:,.0f}"
    return f"{100 * value:.1f}" + (ONE_CLASS_MARK if row is not None and _flagged(row, column) else "")


def _footnotes(rows: list[dict]) -> list[str]:
    notes = []
    for row in rows:
        parts = []
        for column, key in FLAGGED.items():
            if row.get(column) is None or not (flagged := _flagged(row, column)):
                continue
            if column == "mean client acc":
                parts.append(f"{len(flagged)} of {len(row[key])} clients")
            else:
                parts.append(f"{column} ({100 * flagged[0]:.0f}% in one class)")
        if parts:
            notes.append(f"{row['method']}: " + ", ".join(parts))
    if not notes:
        return []
    head = (
        f"{ONE_CLASS_MARK} answers one class for >= {100 * ONE_CLASS_SHARE:.0f}% of the global test set "
        "(its accuracy is the test share of that class: at most the majority-class rate, whatever it learned)"
    )
    return ["", head + ":"] + [f"- {n}" for n in notes]


def majority_line(majority: float) -> str:
    return (
        f"Majority-class rate of the global test set: {100 * majority:.1f}% "
        "(the accuracy of answering its most frequent class for every input; F1 is macro-F1, over classes)"
    )


def format_table(rows: list[dict], *, majority: float | None = None) -> str:
    """A Markdown table; accuracies and F1 in percent, bytes and seconds as integers.

    ``majority``: the majority-class rate of the global test set, printed on a line above the table.
    A one-class model's accuracy is marked (``ONE_CLASS_MARK``) and named in a footnote below it.
    """
    lines = [majority_line(majority), ""] if majority is not None else []
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), c, row) for c in COLUMNS) + " |")
    return "\n".join(lines + _footnotes(rows))


def plot_title(config: NebulaConfig) -> str:
    d, f = config.data, config.federation
    partition = f"Dirichlet alpha={d.dirichlet_alpha}" if d.partition == "dirichlet" else d.partition
    return f"{d.dataset}, {d.num_clients} clients, {partition}, {f.rounds} rounds, rule {f.aggregation}"


def save_plot(
    history: list[dict],
    baselines: list[BaselineResult],
    path: Path,
    *,
    config: NebulaConfig | None = None,
    majority: float | None = None,
) -> Path:
    """Accuracy (percent) per round and bytes per client per round (log axis), at 150 dpi.

    Baselines that exchange something every round (FedAvg) are drawn per round; the others (local-only,
    centralized: no rounds) as a horizontal line at their final accuracy. A zero byte count (the downlink
    of round 1, before there are targets) is left out of the log axis rather than drawn off it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [h["round"] for h in history]
    fig, (ax_acc, ax_bytes) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {b.name: f"C{3 + i}" for i, b in enumerate(baselines)}  # C0-C2: the federation's lines
    _accuracy_lines(ax_acc, history, baselines, colors, majority)
    for ax in (ax_acc, ax_bytes):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set(xlabel="round", ylabel="accuracy on the global test set (%)", title="Accuracy", ylim=(0, 100))
    ax_acc.legend(fontsize=8)
    _bytes_panel(ax_bytes, history, baselines, colors, rounds)
    if config is not None:
        fig.suptitle(plot_title(config))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def _accuracy_lines(
    ax, history: list[dict], baselines: list[BaselineResult], colors: dict, majority: float | None
) -> None:
    """The accuracy panel's lines: the federation's per round, each baseline's, the majority-class rate."""
    styles = {  # the teacher dashed with hollow squares and on top: visible where it overlaps the student
        "mean_client_acc": ("mean client", dict(marker="o", zorder=2)),
        "student_acc": ("global student", dict(marker="o", linewidth=2.5, zorder=3)),
        "teacher_acc": ("teacher", dict(marker="s", markerfacecolor="none", linestyle="--", zorder=4)),
    }
    for key, (label, style) in styles.items():
        points = [(h["round"], 100 * h[key]) for h in history if h.get(key) is not None]
        if points:
            ax.plot(*zip(*points), label=f"FD {label}", **style)
    for b in baselines:
        final, color = (b.student_acc if b.student_acc is not None else b.mean_client_acc), colors[b.name]
        if b.curve and b.bytes_up_per_client:
            curve = [100 * a for a in b.curve]
            ax.plot(range(1, len(curve) + 1), curve, linestyle="-.", color=color, label=b.name)
        elif final is not None:
            ax.axhline(100 * final, linestyle=":", color=color, label=f"{b.name} (final)")
    if majority is not None:
        ax.axhline(100 * majority, color="black", linewidth=0.8, label="majority class")


def _bytes_panel(ax, history: list[dict], baselines: list[BaselineResult], colors: dict, rounds: list) -> None:
    """The communication panel: bytes per client per round, up and down, on a log axis."""
    for key, label in (("bytes_up_per_client", "FD up"), ("bytes_down_per_client", "FD down")):
        points = [(h["round"], h[key]) for h in history if h.get(key)]  # zeros masked: no line off the log axis
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    for b in baselines:
        if b.bytes_up_per_client:
            ax.plot(
                rounds,
                [b.bytes_up_per_client] * len(rounds),
                linestyle="--",
                color=colors[b.name],
                label=f"{b.name} up/down",
            )
    ax.set(xlabel="round", ylabel="bytes per client (log)", yscale="log", title="Communication per round")
    ax.legend(fontsize=8)


def save_results(
    rows: list[dict], history: list[dict], config_flat: dict, path: Path, *, majority: float | None = None
) -> Path:
    results = {"table": rows, "rounds": history, "config": config_flat, "majority_rate": majority}
    path.write_text(json.dumps(results, indent=2, default=float))
    return path
