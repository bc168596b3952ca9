"""Figure functions: plain data in, a matplotlib Figure out; nothing here reads or writes run folders.

Figures are built on `matplotlib.figure.Figure` rather than pyplot, so there is no global figure
state to leak between calls and no GUI backend is ever selected (PNG output uses Agg).

Example:
    >>> import numpy as np
    >>> fig = confusion_figure(np.array([[5, 1], [2, 7]]), ["negative", "positive"])
    >>> len(png_bytes(fig)) > 1000
    True
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter


DPI = 100
MEMORY_PARTS = (
    ("weights", "weights"),
    ("gradients", "gradients"),
    ("optimizer", "optimizer state"),
    ("activations", "activations"),
    ("rest", "rest of peak (runtime, libraries, data)"),
)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Writes the figure as PNG (atomically, through results.atomic_write_bytes like every sentitune
    output) and returns the path."""
    from sentitune import results

    path = Path(path)
    results.atomic_write_bytes(path, png_bytes(fig))
    return path


def _colors(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(count)]


def confusion_figure(matrix: np.ndarray, label_names: Sequence[str], title: str = "") -> Figure:
    """Counts in every cell, colour by row share (recall), so a rare class's errors stay visible.

    Example:
        >>> fig = confusion_figure(np.eye(8, dtype=int) * 3, [str(i) for i in range(8)])
    """
    matrix = np.asarray(matrix)
    k = len(label_names)
    size = max(3.6, 0.55 * k + 2.2)
    fig = Figure(figsize=(size + 0.8, size), layout="constrained")
    ax = fig.subplots()
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros_like(matrix, dtype=float), where=totals > 0)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:,}",
                ha="center",
                va="center",
                fontsize=9 if k <= 4 else 7,
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(k), label_names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    fig.colorbar(image, ax=ax, label="share of gold row")
    ax.set_title(title or "confusion matrix", fontsize=10)
    return fig


def confusion_grid_figure(panels: Sequence[tuple[str, np.ndarray]], label_names: Sequence[str]) -> Figure:
    """One small confusion matrix per method, side by side (row-normalised colour, counts as text)."""
    count = max(1, len(panels))
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    k = len(label_names)
    cell = max(2.6, 0.4 * k + 1.6)
    fig = Figure(figsize=(cell * columns, cell * rows + 0.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, (name, matrix) in zip(axes, panels):
        matrix = np.asarray(matrix)
        totals = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, totals, out=np.zeros_like(matrix, dtype=float), where=totals > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:,}",
                    ha="center",
                    va="center",
                    fontsize=8 if k <= 4 else 6,
                    color="white" if share[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(k), label_names, fontsize=7, rotation=45 if k > 3 else 0)
        ax.set_yticks(range(k), label_names, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("gold", fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig


def reliability_figure(bins: Sequence[dict], ece: float, title: str = "") -> Figure:
    """Accuracy per confidence bin against the diagonal, with bin counts underneath.

    `bins` is `metrics.expected_calibration_error(...)["bins"]`: low, high, count, accuracy, confidence.

    Example:
        >>> fig = reliability_figure([{"low": 0.5, "high": 1.0, "count": 4, "accuracy": 0.75,
        ...                            "confidence": 0.8}], 0.05)
    """
    fig = Figure(figsize=(4.6, 5.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    lows = np.array([b["low"] for b in bins], dtype=float)
    widths = np.array([b["high"] - b["low"] for b in bins], dtype=float)
    counts = np.array([b["count"] for b in bins], dtype=float)
    accuracy = np.array([b["accuracy"] if b["accuracy"] is not None else np.nan for b in bins], dtype=float)
    confidence = np.array([b["confidence"] if b["confidence"] is not None else np.nan for b in bins], dtype=float)
    filled = counts > 0
    top.bar(
        lows[filled],
        accuracy[filled],
        width=widths[filled],
        align="edge",
        edgecolor="black",
        color="tab:blue",
        alpha=0.8,
        label="accuracy",
    )
    top.bar(
        lows[filled],
        confidence[filled] - accuracy[filled],
        bottom=accuracy[filled],
        width=widths[filled],
        align="edge",
        color="tab:red",
        alpha=0.25,
        hatch="//",
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"{title + ': ' if title else ''}reliability (ECE {ece:.3f})", fontsize=10)
    bottom.bar(lows, counts, width=widths, align="edge", color="gray", edgecolor="black")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("examples")
    return fig


def accuracy_vs_params_figure(points: Sequence[dict]) -> Figure:
    """Test accuracy against trainable parameters (log x); `points`: label, params, accuracy, std.

    Example:
        >>> fig = accuracy_vs_params_figure([{"label": "full", "params": 2.2e7, "accuracy": 0.9, "std": 0.01},
        ...                                  {"label": "lora", "params": 7.4e4, "accuracy": 0.88, "std": 0.0}])
    """
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for point, color in zip(points, _colors(len(points))):
        ax.errorbar(
            [point["params"]],
            [100 * point["accuracy"]],
            yerr=[100 * (point.get("std") or 0)],
            fmt="o",
            color=color,
            capsize=4,
            markersize=7,
            label=point["label"],
        )
        ax.annotate(
            point["label"],
            (point["params"], 100 * point["accuracy"]),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs trainable parameters (error bar: std over seeds)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def model_tradeoff_figure(points: Sequence[dict]) -> Figure:
    """Model sweep: test accuracy against total parameters (left) and against inference sentences/s
    on the test set (right), one colour per model; an x axis is log when it spans a decade or more.

    `points`: label, model, accuracy, std, params_total, eval_sps; a point with model None (the
    classical baseline) is drawn grey.

    Example:
        >>> fig = model_tradeoff_figure([
        ...     {"label": "minilm-l6-full", "model": "minilm-l6", "accuracy": 0.86, "std": None,
        ...      "params_total": 2.27e7, "eval_sps": 95.0},
        ...     {"label": "minilm-l3-full", "model": "minilm-l3", "accuracy": 0.83, "std": None,
        ...      "params_total": 1.74e7, "eval_sps": 180.0}])
    """
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    models = list(dict.fromkeys(p["model"] for p in points if p.get("model")))
    color_of = dict(zip(models, _colors(len(models))))
    for point in points:
        color = color_of.get(point.get("model"), "gray")
        for ax, key in ((left, "params_total"), (right, "eval_sps")):
            x = point.get(key)
            if not x or not math.isfinite(x):
                continue
            ax.errorbar(
                [x],
                [100 * point["accuracy"]],
                yerr=[100 * (point.get("std") or 0)],
                fmt="o",
                color=color,
                capsize=4,
                markersize=7,
            )
            ax.annotate(
                point["label"], (x, 100 * point["accuracy"]), textcoords="offset points", xytext=(6, 6), fontsize=8
            )
    for ax, key, label in (
        (left, "params_total", "total parameters"),
        (right, "eval_sps", "inference: test sentences/s"),
    ):
        values = [p[key] for p in points if p.get(key) and math.isfinite(p[key])]
        # Log only across a decade or more; inside one, log ticks crowd into unreadable minor labels.
        wide = bool(values) and max(values) / min(values) >= 10
        if wide:
            ax.set_xscale("log")
        ax.set_xlabel(label + (" (log scale)" if wide else ""))
        ax.margins(x=0.25, y=0.1)  # room for the point labels
    left.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e6:.3g}M"))
    left.set_ylabel("test accuracy (%)")
    left.set_title("accuracy vs model size", fontsize=10)
    right.set_title("accuracy vs inference speed", fontsize=10)
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], marker="o", linestyle="", color=color_of[m], label=m) for m in models]
    if handles:
        right.legend(handles=handles, fontsize=8, title="model", title_fontsize=8)
    return fig


def memory_figure(rows: Sequence[dict]) -> Figure:
    """Peak training memory per method, stacked by weights / gradients / optimizer / activations.

    `rows`: label, weights, gradients, optimizer, activations (MiB), peak (MiB), estimated (bool).
    Whatever of the measured peak the four parts do not explain (on CPU, the process's baseline RSS)
    is drawn as its own segment, so every bar reaches the measured peak instead of hiding the gap.
    A method whose breakdown is partly estimated gets "(estimated)" under its name.
    """
    fig = Figure(figsize=(max(6.5, 1.3 * len(rows) + 4.5), 4.4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    parts = {key: np.array([row.get(key) or 0.0 for row in rows], dtype=float) for key, _ in MEMORY_PARTS[:-1]}
    explained = sum(parts.values())
    peaks = np.array([row.get("peak") if row.get("peak") is not None else np.nan for row in rows], dtype=float)
    parts["rest"] = np.where(np.isfinite(peaks), np.clip(peaks - explained, 0, None), 0.0)
    for (key, name), color in zip(MEMORY_PARTS, _colors(len(MEMORY_PARTS))):
        if not parts[key].any():
            continue
        ax.bar(x, parts[key], bottom=bottom, color=color, label=name, width=0.6)
        bottom += parts[key]
    if np.isfinite(peaks).any():
        ax.scatter(x, peaks, marker="_", s=900, color="black", zorder=3, label="measured peak")
    labels = [row["label"] + ("\n(estimated)" if row.get("estimated") else "") for row in rows]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("MiB")
    ax.set_title("peak training memory by component", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def throughput_figure(rows: Sequence[dict]) -> Figure:
    """Training and evaluation samples/s per method; `rows`: label, train, train_std, eval."""
    fig = Figure(figsize=(max(6.0, 1.4 * len(rows) + 3), 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    x = np.arange(len(rows))
    colors = _colors(len(rows))
    labels = [row["label"] for row in rows]
    for ax, key, title in ((left, "train", "training samples/s"), (right, "eval", "evaluation samples/s")):
        values = [row.get(key) if row.get(key) is not None else np.nan for row in rows]
        errors = [row.get(f"{key}_std") or 0 for row in rows]
        ax.bar(x, values, yerr=errors, color=colors, capsize=4, width=0.6)
        ax.set_xticks(x, labels, fontsize=8, rotation=30 if len(rows) > 4 else 0)
        ax.set_title(title, fontsize=10)
        ax.set_yscale("log" if _spread(values) > 30 else "linear")
    return fig


def _spread(values) -> float:
    finite = [v for v in values if v is not None and np.isfinite(v) and v > 0]
    return max(finite) / min(finite) if len(finite) >= 2 else 1.0


def curves_figure(curves: Sequence[dict]) -> Figure:
    """Training loss and learning rate against step; `curves`: label, step, loss, learning_rate
    (sequences; NaN where a log row lacks the value). Seeds of one method share its colour."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    loss_ax, lr_ax = fig.subplots(1, 2)
    labels = list(dict.fromkeys(curve["label"] for curve in curves))
    color_of = dict(zip(labels, _colors(len(labels))))
    seen = set()
    for curve in curves:
        step = np.asarray(curve["step"], dtype=float)
        legend = curve["label"] if curve["label"] not in seen else None
        seen.add(curve["label"])
        for ax, key in ((loss_ax, "loss"), (lr_ax, "learning_rate")):
            values = np.asarray(curve.get(key, []), dtype=float)
            # warm-up starts at a learning rate of 0, which a log axis cannot show
            keep = np.isfinite(values) & ((values > 0) if key == "learning_rate" else True)
            if keep.any():
                ax.plot(
                    step[keep], values[keep], color=color_of[curve["label"]], alpha=0.85, linewidth=1.2, label=legend
                )
    loss_ax.set_title("training loss", fontsize=10)
    loss_ax.set_xlabel("optimizer step")
    lr_ax.set_title("learning rate", fontsize=10)
    lr_ax.set_xlabel("optimizer step")
    lr_ax.set_yscale("log")
    if labels:
        loss_ax.legend(fontsize=8)
    return fig


def slice_figure(rows: Sequence[dict]) -> Figure:
    """Grouped bars: accuracy per slice (x) and method (colour) with 95% Wilson intervals.

    `rows`: variant, slice, accuracy, ci95_low, ci95_high, count.
    """
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    slices = list(dict.fromkeys(row["slice"] for row in rows))
    fig = Figure(figsize=(max(7.0, 0.9 * len(slices) * max(1, len(variants)) * 0.5 + 3), 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(variants))
    lookup = {(row["variant"], row["slice"]): row for row in rows}
    for v, (variant, color) in enumerate(zip(variants, _colors(len(variants)))):
        x = np.arange(len(slices)) + (v - (len(variants) - 1) / 2) * width
        acc, low, high = [], [], []
        for name in slices:
            row = lookup.get((variant, name))
            value = row["accuracy"] if row and row["count"] else np.nan
            acc.append(100 * value)
            # max(0, ...): at 0% or 100% the Wilson bound and the value differ only by rounding,
            # and matplotlib refuses an error bar of -1e-17.
            low.append(max(0.0, 100 * (value - row["ci95_low"])) if row and row["count"] else 0)
            high.append(max(0.0, 100 * (row["ci95_high"] - value)) if row and row["count"] else 0)
        ax.bar(
            x, acc, width=width, color=color, label=variant, yerr=[low, high], capsize=2, error_kw={"linewidth": 0.8}
        )
    counts = {row["slice"]: row["count"] for row in rows}
    ax.set_xticks(np.arange(len(slices)), [f"{s}\n(n={counts[s]})" for s in slices], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("accuracy per slice (95% Wilson interval)", fontsize=10)
    ax.legend(fontsize=8, ncols=min(4, len(variants)))
    return fig


def lora_rank_figure(points: Sequence[dict]) -> Figure:
    """LoRA accuracy against rank r (log2 x); `points`: r, accuracy, std, params.

    Example:
        >>> fig = lora_rank_figure([{"r": 4, "accuracy": 0.85, "std": 0.01}, {"r": 16, "accuracy": 0.87}])
    """
    points = sorted(points, key=lambda p: p["r"])
    fig = Figure(figsize=(5.6, 3.8), layout="constrained")
    ax = fig.subplots()
    r = [p["r"] for p in points]
    accuracy = [100 * p["accuracy"] for p in points]
    ax.errorbar(r, accuracy, yerr=[100 * (p.get("std") or 0) for p in points], fmt="o-", capsize=4, color="tab:orange")
    ax.set_xscale("log", base=2)
    ax.set_xticks(r, [str(v) for v in r])
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("LoRA rank sweep (error bar: std over seeds)", fontsize=10)
    ax.grid(True, alpha=0.3)
    return fig


def eval_sets_figure(rows: Sequence[dict]) -> Figure:
    """Accuracy with its 95% CI per eval set (x: the test split first, then each extra set) and variant
    (colour), as dots with error bars, so a variant that holds on test but drops out of domain shows.

    `rows`: variant, set, accuracy, ci95_low, ci95_high (fractions), examples.

    Example:
        >>> fig = eval_sets_figure([{"variant": "full", "set": "test", "accuracy": 0.9, "ci95_low": 0.88,
        ...                          "ci95_high": 0.92, "examples": 872}])
    """
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    sets = list(dict.fromkeys(row["set"] for row in rows))
    fig = Figure(figsize=(max(6.0, 1.1 * len(sets) * max(1.0, len(variants) ** 0.5) + 2.5), 4.2), layout="constrained")
    ax = fig.subplots()
    spread = 0.7 / max(1, len(variants))
    lookup = {(row["variant"], row["set"]): row for row in rows}
    for v, (variant, color) in enumerate(zip(variants, _colors(len(variants)))):
        present = [(i, lookup[(variant, name)]) for i, name in enumerate(sets) if (variant, name) in lookup]
        x = [i + (v - (len(variants) - 1) / 2) * spread for i, _ in present]
        accuracy = [100 * row["accuracy"] for _, row in present]
        # max(0, ...): a bound that equals the value up to rounding must not make a negative error bar.
        low = [max(0.0, 100 * (row["accuracy"] - row["ci95_low"])) for _, row in present]
        high = [max(0.0, 100 * (row["ci95_high"] - row["accuracy"])) for _, row in present]
        ax.errorbar(x, accuracy, yerr=[low, high], fmt="o", capsize=3, color=color, label=variant)
    examples = {row["set"]: row.get("examples") for row in rows}
    ax.set_xticks(range(len(sets)), [f"{name}\n(n={examples[name]})" for name in sets], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy on the test split and the extra eval sets (95% CI)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(4, len(variants)))
    return fig


def learning_curve_figure(lines: Sequence[dict]) -> Figure:
    """Test accuracy with its 95% CI against the number of training examples (log x), one line per method.

    `lines`: label, reference (bool: drawn thicker, "(reference)" in the legend), points (examples,
    accuracy, ci95_low, ci95_high; fractions). Lines are nudged apart a little along x so that error
    bars at the same size do not hide one another.

    Example:
        >>> fig = learning_curve_figure([{"label": "full", "reference": True, "points": [
        ...     {"examples": 500, "accuracy": 0.80, "ci95_low": 0.78, "ci95_high": 0.82},
        ...     {"examples": 2000, "accuracy": 0.86, "ci95_low": 0.85, "ci95_high": 0.87}]}])
    """
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.subplots()
    drawn = [line for line in lines if line["points"]]
    for i, (line, color) in enumerate(zip(drawn, _colors(len(drawn)))):
        points = sorted(line["points"], key=lambda p: p["examples"])
        nudge = 1 + 0.025 * (i - (len(drawn) - 1) / 2)
        x = [p["examples"] * nudge for p in points]
        accuracy = [100 * p["accuracy"] for p in points]
        # max(0, ...): a bound that equals the value up to rounding must not make a negative error bar.
        low = [max(0.0, 100 * (p["accuracy"] - p["ci95_low"])) for p in points]
        high = [max(0.0, 100 * (p["ci95_high"] - p["accuracy"])) for p in points]
        ax.errorbar(
            x,
            accuracy,
            yerr=[low, high],
            fmt="o-",
            capsize=3,
            color=color,
            linewidth=2.6 if line.get("reference") else 1.3,
            label=line["label"] + (" (reference)" if line.get("reference") else ""),
        )
    sizes = sorted({p["examples"] for line in drawn for p in line["points"]})
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes], fontsize=8)
    ax.set_xticks([], minor=True)  # the log axis's minor labels would crowd the measured sizes
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("learning curve (error bar: 95% CI of the mean)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def pareto_figure(points: Sequence[dict], panels: Sequence[dict], recommended: str | None = None) -> Figure:
    """Test accuracy against each cost, one point per variant, the Pareto frontier of each panel as a
    step line: the best accuracy to be had at that cost or less (or, where larger is better, at that
    speed or more). The first panel is drawn large, the others small beside it.

    `points`: label, accuracy (fraction), and one value per panel key. `panels`: key, label,
    larger_is_better, frontier (the labels on that panel's frontier), budget (in the axis's unit, or
    None). `recommended` gets a star. An x axis is log when it spans a decade or more.

    Example:
        >>> fig = pareto_figure(
        ...     [{"label": "full", "accuracy": 0.9, "memory": 900.0},
        ...      {"label": "lora", "accuracy": 0.88, "memory": 400.0}],
        ...     [{"key": "memory", "label": "peak MiB", "larger_is_better": False, "frontier": ["full", "lora"],
        ...       "budget": 500.0}], recommended="lora")
    """
    count = max(1, len(panels))
    fig = Figure(figsize=(6.4 + 3.2 * (count - 1), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, count, sharey=True, width_ratios=[2] + [1] * (count - 1), squeeze=False))
    axes = axes.ravel()
    color_of = dict(zip([p["label"] for p in points], _colors(len(points))))
    for n, (ax, panel) in enumerate(zip(axes, panels)):
        key, frontier = panel["key"], set(panel["frontier"])
        shown = [p for p in points if p.get(key) is not None and math.isfinite(p[key])]
        placed: dict[tuple, int] = {}
        for p in shown:
            on = p["label"] in frontier
            star = p["label"] == recommended
            # variants at (nearly) the same spot get their labels stacked instead of printed over each other
            spot = (f"{p[key]:.2g}", f"{100 * p['accuracy']:.1f}")
            stacked = placed[spot] = placed.get(spot, -1) + 1
            ax.scatter(
                [p[key]],
                [100 * p["accuracy"]],
                marker="*" if star else "o",
                s=(190 if star else 55) * (1 if n == 0 else 0.7),
                facecolors=color_of[p["label"]] if on else "none",
                edgecolors=color_of[p["label"]],
                linewidths=1.5,
                zorder=3,
            )
            ax.annotate(
                p["label"],
                (p[key], 100 * p["accuracy"]),
                textcoords="offset points",
                xytext=(5, 5 - 10 * stacked),
                fontsize=8 if n == 0 else 6.5,
            )
        front = sorted((p for p in shown if p["label"] in frontier), key=lambda p: p[key])
        if len(front) >= 2:
            # cheaper-is-better: the best accuracy holds from a point's cost onwards ("post");
            # larger-is-better (speed): it holds up to and including a point's speed ("pre")
            ax.step(
                [p[key] for p in front],
                [100 * p["accuracy"] for p in front],
                where="pre" if panel["larger_is_better"] else "post",
                color="black",
                linewidth=1.2,
                alpha=0.7,
                zorder=2,
            )
        if panel.get("budget") is not None:
            ax.axvline(panel["budget"], color="tab:red", linestyle="--", linewidth=1.2, label="budget")
            ax.legend(fontsize=7, loc="lower right")
        values = [p[key] for p in shown if p[key] > 0] + ([panel["budget"]] if panel.get("budget") else [])
        wide = len(values) >= 2 and max(values) / min(values) >= 10
        if wide:
            ax.set_xscale("log")
        direction = "higher is better" if panel["larger_is_better"] else "lower is better"
        ax.set_xlabel(f"{panel['label']}{' (log scale)' if wide else ''}; {direction}", fontsize=8 if n else 9)
        ax.margins(x=0.2, y=0.12)  # room for the point labels
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelsize=7 if n else 8)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title("accuracy vs cost: Pareto frontier (step line)", fontsize=10)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig
