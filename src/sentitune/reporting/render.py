"""Comparison folder -> report.md + self-contained report.html.

The report is a pure function of the folder: it reads results.json for the list of runs (their
variant names and statuses) and recomputes everything it shows from the run folders themselves
(predictions.csv, history.csv, metrics.json, and analysis/analysis.json where `sentitune analyze` left
one). Nothing is trained or predicted here.

Example:
    >>> md_path, html_path = build_report("results/sst2")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sentitune import results
from sentitune.analysis import ANALYSIS_DIR, ANALYSIS_FILE, check_same_examples, slice_masks, slice_table
from sentitune.metrics import (
    confusion_matrix,
    expected_calibration_error,
    finite_mean,
    finite_std,
    holm,
    paired_seed_test,
    seed_summary,
)
from sentitune.results import Predictions, RunFolderError, load_predictions


RESULTS_JSON = "results.json"
RUNS_DIR = "runs"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES_DIR = "report_files"
TEMPLATES = Path(__file__).parent / "templates"
ALPHA = 0.05


# ---- reading the folder -----------------------------------------------------------------------


@dataclass
class RunEntry:
    """One run of the comparison, as its own folder describes it."""

    name: str
    variant: str
    method: str
    seed: Any
    status: str
    path: Path
    error: str | None = None
    metrics: dict = field(default_factory=dict)
    config: Any = None
    predictions: Predictions | None = None
    history: Any = None
    analysis: dict | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.predictions is not None


@dataclass
class Comparison:
    folder: Path
    runs: list[RunEntry]
    fingerprint: str | None
    scaffolding: dict

    @property
    def ok_runs(self) -> list[RunEntry]:
        return [r for r in self.runs if r.ok]

    def variants(self) -> list[str]:
        return list(dict.fromkeys(r.variant for r in self.runs))


def _listed_runs(folder: Path) -> tuple[list[dict], dict]:
    """Run rows from results.json, or from the run folders when compare has not written it yet."""
    path = folder / RESULTS_JSON
    if path.exists():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunFolderError(f"{path}: corrupted JSON at line {exc.lineno}, column {exc.colno}") from None
        return document.get("runs", []), document
    run_root = folder / RUNS_DIR
    if not run_root.is_dir():
        raise RunFolderError(
            f"{folder}: not a comparison folder (no {RESULTS_JSON} and no {RUNS_DIR}/); run `sentitune compare` first"
        )
    rows = [
        {"run_name": sub.name, "run_dir": f"{RUNS_DIR}/{sub.name}", "variant": re.sub(r"-s\d+$", "", sub.name)}
        for sub in sorted(run_root.iterdir())
        if (sub / results.CONFIG_FILE).exists()
    ]
    return rows, {}


def load_comparison(folder: str | Path) -> Comparison:
    """Reads a comparison folder; raises RunFolderError when it holds no finished run."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: comparison folder not found")
    rows, document = _listed_runs(folder)
    entries = []
    for row in rows:
        path = folder / row.get("run_dir", f"{RUNS_DIR}/{row['run_name']}")
        entry = RunEntry(
            row["run_name"],
            row.get("variant") or row["run_name"],
            row.get("method", "?"),
            row.get("seed"),
            row.get("status", "unknown"),
            path,
            row.get("error"),
        )
        if (path / results.CONFIG_FILE).exists():
            try:
                run = results.load_run(path)
                entry.config, entry.metrics, entry.status = run.config, run.metrics, run.status
                entry.error = run.metrics.get("error") or entry.error
                entry.method, entry.seed = run.config.method.name, run.config.train.seed
                if run.status == "ok":
                    entry.predictions = load_predictions(path)
                    entry.history = run.history()
                    analysis_path = path / ANALYSIS_DIR / ANALYSIS_FILE
                    if analysis_path.exists():
                        entry.analysis = json.loads(analysis_path.read_text(encoding="utf-8"))
            except RunFolderError as exc:
                entry.status, entry.error = "failed", str(exc)
        elif entry.status == "ok":
            entry.status, entry.error = "missing", f"{path}: run folder not found"
        entries.append(entry)
    comparison = Comparison(folder, entries, document.get("fingerprint"), document.get("scaffolding") or {})
    if not comparison.ok_runs:
        statuses = ", ".join(f"{r.name}: {r.status}" for r in entries) or "no runs listed"
        raise RunFolderError(f"{folder}: no finished runs to report ({statuses})")
    if comparison.fingerprint is None:
        comparison.fingerprint = comparison.ok_runs[0].metrics.get("fingerprint")
    if not comparison.scaffolding and comparison.ok_runs[0].config is not None:
        comparison.scaffolding = comparison.ok_runs[0].config.scaffolding()
    _check_same_test_set(comparison.ok_runs)
    return comparison


def _check_same_test_set(runs: list[RunEntry]) -> None:
    for run in runs[1:]:
        check_same_examples(runs[0].predictions, run.predictions)


# ---- numbers ----------------------------------------------------------------------------------


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _mean(values: Sequence) -> float | None:
    """metrics.finite_mean, None (a blank cell) when nothing is finite."""
    return _none_if_nan(finite_mean(values))


def _std(values: Sequence) -> float | None:
    """metrics.finite_std, None (no ±) with fewer than two values."""
    return _none_if_nan(finite_std(values))


def _is_neural(method: str) -> bool:
    from sentitune.methods import registry

    try:
        return registry.get(method).neural
    except (KeyError, ValueError):
        return True


def variant_summary(comparison: Comparison) -> list[dict]:
    """One row per variant: seed statistics of accuracy, cost and speed, computed from the run folders.

    The accuracy statistics are metrics.seed_summary, as in `compare`'s results (there named
    test_accuracy_*); the 95% CI (metrics.accuracy_interval) is a Student-t interval over
    the seed accuracies when there are two or more seeds, a percentile bootstrap over the test
    examples when there is one; `ci_method` names it. The ± is the standard deviation over seeds.
    """
    out = []
    for variant in comparison.variants():
        group = [r for r in comparison.runs if r.variant == variant]
        ok = [r for r in group if r.ok]
        row: dict[str, Any] = {
            "variant": variant,
            "method": group[0].method,
            "model": next((r.config.model for r in group if r.config is not None), None),
            "n_runs": len(group),
            "n_seeds": len(ok),
            "seeds": [r.seed for r in ok],
            "failed": [f"{r.name}: {r.status}" + (f" ({r.error})" if r.error else "") for r in group if not r.ok],
        }
        if ok:
            accuracies = [float(r.predictions.correct.mean()) for r in ok]
            stats = seed_summary(accuracies, ok[0].predictions.correct if len(ok) == 1 else [])
            n_test = len(ok[0].predictions.texts)
            first = ok[0].metrics
            memory_how = first.get("memory_breakdown_how") or ""
            row.update(
                {
                    # compare's results name these test_accuracy_mean/_std/_ci95_low/_ci95_high
                    "accuracy_mean": stats["mean"],
                    "accuracy_std": _none_if_nan(stats["std"]),
                    "ci95_low": stats["ci95_low"],
                    "ci95_high": stats["ci95_high"],
                    "ci_method": stats["ci_method"],
                    "n_test": n_test,
                    "macro_f1_mean": _mean([r.metrics.get("test_macro_f1") for r in ok]),
                    "ece_mean": _mean(
                        [expected_calibration_error(r.predictions.gold, r.predictions.probabilities)["ece"] for r in ok]
                    ),
                    "params_trainable": first.get("params_trainable"),
                    "params_total": first.get("params_total"),
                    "params_trainable_percent": first.get("params_trainable_percent"),
                    "peak_memory_mib": _mean([r.metrics.get("peak_memory_mib") for r in ok]),
                    "peak_memory_how": first.get("peak_memory_how"),
                    "weights": _mean([r.metrics.get("memory_weights_mib") for r in ok]),
                    "gradients": _mean([r.metrics.get("memory_gradients_mib") for r in ok]),
                    "optimizer": _mean([r.metrics.get("memory_optimizer_state_mib") for r in ok]),
                    "activations": _mean([r.metrics.get("memory_activations_mib") for r in ok]),
                    "memory_estimated": "estimated" in memory_how,
                    "memory_breakdown_how": memory_how,
                    "train_sps": _mean([r.metrics.get("train_samples_per_second") for r in ok]),
                    "train_sps_std": _std([r.metrics.get("train_samples_per_second") for r in ok]),
                    "eval_sps": _mean([r.metrics.get("eval_samples_per_second") for r in ok]),
                    "checkpoint_mib": _mean([r.metrics.get("checkpoint_size_mib") for r in ok]),
                    "neural": _is_neural(group[0].method),
                    "lora_r": ok[0].config.method.lora_r
                    if ok[0].config is not None and group[0].method == "lora"
                    else None,
                    "batch_size": ok[0].config.train.batch_size if ok[0].config is not None else None,
                }
            )
        out.append(row)
    return out


def mean_correctness(runs: Sequence[RunEntry]) -> np.ndarray:
    """Per-example correctness averaged over seeds (1.0 = every seed got it right)."""
    return np.mean([r.predictions.correct.astype(float) for r in runs], axis=0)


def slice_rows(comparison: Comparison) -> list[dict]:
    """Slice accuracy per variant over seed-averaged correctness, with Wilson intervals."""
    texts = comparison.ok_runs[0].predictions.texts
    rows = []
    for variant in comparison.variants():
        ok = [r for r in comparison.ok_runs if r.variant == variant]
        if ok:
            rows += [{"variant": variant, **row} for row in slice_table(texts, mean_correctness(ok))]
    return rows


def choose_reference(summary: list[dict]) -> str:
    """The baseline the tradeoffs are stated against: full fine-tuning if it finished, else the most accurate."""
    finished = [row for row in summary if row["n_seeds"]]
    for row in finished:
        if row["variant"] == "full":
            return "full"
    return max(finished, key=lambda row: row["accuracy_mean"])["variant"]


def paired_tests(comparison: Comparison, reference: str) -> list[dict]:
    """One paired test of every variant against the reference over all their shared seeds, overall
    and on the negation slice (metrics.paired_seed_test: exact McNemar on the discordant counts pooled
    over seeds, paired bootstrap CI of the difference).

    Holm's correction runs within each slice's family: `p_holm` of the overall tests is corrected over
    the overall tests against the reference (the same family, and so the same numbers, as compare's
    `p_holm_vs_reference`), the negation tests over the negation tests. `holm_tests` is the family's
    size K and `significant` means p_holm < 0.05. A slice with no examples gets no test.
    """
    texts = comparison.ok_runs[0].predictions.texts
    negation = slice_masks(texts)["negation"]["mask"]
    by_key = {(r.variant, r.seed): r for r in comparison.ok_runs}
    out = []
    for variant in comparison.variants():
        if variant == reference:
            continue
        seeds = sorted({s for v, s in by_key if v == variant} & {s for v, s in by_key if v == reference}, key=str)
        if not seeds:
            continue
        correct_v = np.stack([by_key[(variant, seed)].predictions.correct for seed in seeds])
        correct_ref = np.stack([by_key[(reference, seed)].predictions.correct for seed in seeds])
        for scope, mask in (("all", np.ones(len(texts), dtype=bool)), ("negation", negation)):
            if not mask.any():
                continue
            test = paired_seed_test(correct_v[:, mask], correct_ref[:, mask])
            out.append(
                {
                    "variant": variant,
                    "reference": reference,
                    "seeds": seeds,
                    "slice": scope,
                    "count": int(mask.sum()),
                    "accuracy": test["a_accuracy"],
                    "reference_accuracy": test["b_accuracy"],
                    "a_only_correct": test.pop("b"),
                    "b_only_correct": test.pop("c"),
                    **test,
                }
            )
    for scope in ("all", "negation"):
        family = [t for t in out if t["slice"] == scope]
        for test, p_holm in zip(family, holm([t["p_value"] for t in family])):
            test.update(p_holm=p_holm, holm_tests=len(family), significant=bool(p_holm < ALPHA))
    return out


# ---- tradeoff statements ----------------------------------------------------------------------


def _p_phrase(tests: list[dict]) -> str:
    """'McNemar p = 0.011, Holm p = 0.033 over 3 tests, significant'; pooled over seeds when there are
    several ('McNemar p = 0.011 over 2 seeds, ...'). Significant only when the Holm-adjusted p < 0.05."""
    if not tests:
        return "no shared seed to test"
    test = tests[0]
    seeds = len(test.get("seeds") or [])
    over = f" over {seeds} seeds" if seeds > 1 else ""
    k = test.get("holm_tests")
    family = f" over {k} test{'s' if k != 1 else ''}" if k else ""
    verdict = "significant" if test["p_holm"] < ALPHA else "not significant"
    return f"McNemar p = {test['p_value']:.3g}{over}, Holm p = {test['p_holm']:.3g}{family}, {verdict}"


def _points(delta: float) -> str:
    if abs(delta) < 0.05:
        return "level"
    return f"{abs(delta):.1f} points {'higher' if delta > 0 else 'lower'}"


def _times(ratio: float) -> str:
    """2.0 -> '2×', 1.46 -> '1.5×', 70.3 -> '70×', 107736.2 -> '107,736×'."""
    return f"{ratio:,.0f}×" if ratio >= 10 else f"{ratio:.2g}×"


def _parameter_phrase(row: dict, ref: dict, reference: str) -> str:
    """ "trains 0.33% of parameters" for adapters on the same backbone; counts and a ratio otherwise
    (a TF-IDF model's own 100% says nothing next to BERT's)."""
    mine, theirs = row.get("params_trainable"), ref.get("params_trainable")
    total, ref_total = row.get("params_total"), ref.get("params_total")
    same_backbone = bool(total and ref_total and abs(total - ref_total) <= 0.05 * ref_total)
    if same_backbone or total is None or ref_total is None:
        return (
            f"{row['variant']} trains {row['params_trainable_percent']:.3g}% of parameters "
            f"({mine:,} vs {theirs:,} for {reference})"
        )
    ratio = theirs / mine if mine else math.inf
    comparison = f"{_times(ratio)} fewer than" if ratio >= 1 else f"{_times(1 / ratio)} more than"
    return f"{row['variant']} trains {mine:,} parameters ({comparison} {reference}'s {theirs:,})"


def tradeoff_statements(
    summary: list[dict], tests: list[dict], reference: str, negation_rows: dict[str, dict] | None = None
) -> list[str]:
    """Sentences comparing each variant with the reference, every number taken from the inputs.

    `summary` is variant_summary(), `tests` is paired_tests() (one test per variant and slice, with
    its Holm-adjusted `p_holm`), `negation_rows` maps variant -> its negation slice row (accuracy,
    count). A difference is called significant only when its Holm-adjusted p < 0.05.

    Example:
        >>> summary = [{"variant": "full", "n_seeds": 1, "accuracy_mean": 0.9, "params_trainable": 100,
        ...             "params_trainable_percent": 100.0, "peak_memory_mib": 200.0, "train_sps": 10.0,
        ...             "neural": True, "checkpoint_mib": 80.0},
        ...            {"variant": "lora", "n_seeds": 1, "accuracy_mean": 0.88, "params_trainable": 1,
        ...             "params_trainable_percent": 0.33, "peak_memory_mib": 150.0, "train_sps": 20.0,
        ...             "neural": True, "checkpoint_mib": 1.0}]
        >>> tests = [{"variant": "lora", "slice": "all", "p_value": 0.02, "p_holm": 0.06, "holm_tests": 3,
        ...           "seeds": [1]}]
        >>> print(tradeoff_statements(summary, tests, "full")[0])  # doctest: +NORMALIZE_WHITESPACE
        lora trains 0.33% of parameters (1 vs 100 for full), uses 25% less peak training memory
        (150 vs 200 MiB), is 2× faster in training samples/s, and is 2.0 points lower in test accuracy
        (88.0% vs 90.0%; McNemar p = 0.02, Holm p = 0.06 over 3 tests, not significant).
    """
    rows = {row["variant"]: row for row in summary if row["n_seeds"]}
    ref = rows[reference]
    negation_rows = negation_rows or {}
    statements = []
    for variant, row in rows.items():
        if variant == reference:
            continue
        parts = [_parameter_phrase(row, ref, reference)]
        if row.get("peak_memory_how") != ref.get("peak_memory_how"):
            # e.g. tfidf's process RSS next to a GPU run's allocator peak: two different quantities
            parts.append(f"has peak memory measured another way ({row.get('peak_memory_how')}), not compared")
        elif row.get("peak_memory_mib") and ref.get("peak_memory_mib"):
            change = 100 * (ref["peak_memory_mib"] - row["peak_memory_mib"]) / ref["peak_memory_mib"]
            amount = "about the same" if abs(change) < 1 else f"{abs(change):.0f}% {'less' if change > 0 else 'more'}"
            parts.append(
                f"uses {amount} peak training memory "
                f"({row['peak_memory_mib']:,.0f} vs {ref['peak_memory_mib']:,.0f} MiB)"
            )
        if row.get("train_sps") and ref.get("train_sps"):
            ratio = row["train_sps"] / ref["train_sps"]
            # samples/s ratios equal per-step ratios only between step-based methods at one batch size
            same_steps = (
                row.get("neural")
                and ref.get("neural")
                and row.get("batch_size") is not None
                and row.get("batch_size") == ref.get("batch_size")
            )
            unit = "per training step" if same_steps else "in training samples/s"
            if 1 / 1.05 < ratio < 1.05:
                parts.append(f"runs at about the same speed {unit} ({ratio:.2f}×)")
            else:
                parts.append(
                    f"is {_times(ratio)} faster {unit}" if ratio >= 1 else f"is {_times(1 / ratio)} slower {unit}"
                )
        delta = 100 * (row["accuracy_mean"] - ref["accuracy_mean"])
        overall = [t for t in tests if t["variant"] == variant and t["slice"] == "all"]
        parts.append(
            f"is {_points(delta)} in test accuracy ({100 * row['accuracy_mean']:.1f}% vs "
            f"{100 * ref['accuracy_mean']:.1f}%; {_p_phrase(overall)})"
        )
        neg, neg_ref = negation_rows.get(variant), negation_rows.get(reference)
        if neg and neg_ref and neg["count"]:
            negation_tests = [t for t in tests if t["variant"] == variant and t["slice"] == "negation"]
            delta = 100 * (neg["accuracy"] - neg_ref["accuracy"])
            parts.append(f"is {_points(delta)} on negation (n = {neg['count']}; {_p_phrase(negation_tests)})")
        statements.append(", ".join(parts[:-1]) + ", and " + parts[-1] + ".")
    best = max(rows.values(), key=lambda r: r["accuracy_mean"])
    spread = f" ± {100 * best['accuracy_std']:.1f}" if best.get("accuracy_std") is not None else ""
    statements.append(
        f"Most accurate: {best['variant']} at {100 * best['accuracy_mean']:.1f}%{spread} "
        f"over {best['n_seeds']} seed(s)."
    )
    sized = [r for r in rows.values() if r.get("checkpoint_mib")]
    if len(sized) >= 2:
        small = min(sized, key=lambda r: r["checkpoint_mib"])
        large = max(sized, key=lambda r: r["checkpoint_mib"])
        if small is not large:
            statements.append(
                f"Smallest checkpoint: {small['variant']} at {small['checkpoint_mib']:.2f} MiB, "
                f"{_times(large['checkpoint_mib'] / small['checkpoint_mib'])} smaller than "
                f"{large['variant']} ({large['checkpoint_mib']:.1f} MiB)."
            )
    ranks = sorted((r for r in rows.values() if r.get("lora_r")), key=lambda r: r["lora_r"])
    if len({r["lora_r"] for r in ranks}) >= 2:
        top = max(ranks, key=lambda r: r["accuracy_mean"])
        low = min(r["accuracy_mean"] for r in ranks)
        high = max(r["accuracy_mean"] for r in ranks)
        listed = ", ".join(str(r["lora_r"]) for r in ranks)
        if 100 * (high - low) < 0.05:
            statements.append(f"Across LoRA ranks r = {listed}, accuracy is the same ({100 * high:.1f}%).")
        else:
            statements.append(
                f"Across LoRA ranks r = {listed}, accuracy spans {100 * low:.1f}-{100 * high:.1f}% "
                f"(best r = {top['lora_r']}, {top['variant']})."
            )
    return statements


# ---- figures ----------------------------------------------------------------------------------


def _curves(comparison: Comparison) -> list[dict]:
    curves = []
    for run in comparison.ok_runs:
        history = run.history
        if history is None or history.empty or "step" not in history or "loss" not in history:
            continue
        rows = history[history["loss"].notna()] if "loss" in history else history
        curves.append(
            {
                "label": run.variant,
                "step": rows["step"].to_numpy(),
                "loss": rows["loss"].to_numpy(dtype=float),
                "learning_rate": rows["learning_rate"].to_numpy(dtype=float)
                if "learning_rate" in rows
                else np.full(len(rows), np.nan),
            }
        )
    return curves


def build_figures(comparison: Comparison, summary: list[dict], slices: list[dict]) -> list[dict]:
    """[{name, title, caption, png}] in report order; figures without data are left out."""
    from sentitune.reporting import plots

    done = [row for row in summary if row["n_seeds"]]
    figures = []

    def add(name: str, title: str, caption: str, fig) -> None:
        figures.append({"name": name, "title": title, "caption": caption, "png": plots.png_bytes(fig)})

    add(
        "accuracy_vs_params",
        "Accuracy vs trainable parameters",
        "Mean test accuracy over seeds against trainable parameters (log scale); error bars are the std over seeds.",
        plots.accuracy_vs_params_figure(
            [
                {
                    "label": r["variant"],
                    "params": r["params_trainable"] or 1,
                    "accuracy": r["accuracy_mean"],
                    "std": r["accuracy_std"],
                }
                for r in done
            ]
        ),
    )
    memory = [
        {
            "label": r["variant"],
            "weights": r["weights"],
            "gradients": r["gradients"],
            "optimizer": r["optimizer"],
            "activations": r["activations"],
            "peak": r["peak_memory_mib"],
            "estimated": r["memory_estimated"],
        }
        for r in done
    ]
    how = "; ".join(sorted({f"{r['variant']}: {r['memory_breakdown_how']}" for r in done if r["memory_breakdown_how"]}))
    add(
        "memory",
        "Peak training memory",
        f"Mean over seeds. How each part was obtained: {how}.",
        plots.memory_figure(memory),
    )
    add(
        "throughput",
        "Throughput",
        "Training samples/s (after warm-up steps; error bar: std over seeds) and test-set evaluation samples/s.",
        plots.throughput_figure(
            [
                {"label": r["variant"], "train": r["train_sps"], "train_std": r["train_sps_std"], "eval": r["eval_sps"]}
                for r in done
            ]
        ),
    )
    curves = _curves(comparison)
    if curves:
        add(
            "curves",
            "Loss and learning-rate curves",
            "From each run's history.csv; seeds share a colour.",
            plots.curves_figure(curves),
        )
    labels = comparison.ok_runs[0].predictions.label_names
    panels = []
    for row in done:
        runs = [r for r in comparison.ok_runs if r.variant == row["variant"]]
        matrix = sum(confusion_matrix(r.predictions.gold, r.predictions.predicted, len(labels)) for r in runs)
        panels.append((f"{row['variant']} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", matrix))
    add(
        "confusion",
        "Confusion matrices",
        "Counts summed over seeds; colour is the share of the gold row.",
        plots.confusion_grid_figure(panels, labels),
    )
    add(
        "slices",
        "Accuracy per slice",
        "Seed-averaged correctness per slice with 95% Wilson intervals; "
        "negation and contrast are matched by word rules (see analysis.NEGATION_PATTERN).",
        plots.slice_figure([row for row in slices if row["count"]]),
    )
    if len({r["model"] for r in done if r["neural"]}) > 1:
        add(
            "models",
            "Model sweep: accuracy vs size vs inference speed",
            "Mean test accuracy against total parameters and against test-set evaluation sentences/s "
            "(eval_samples_per_second of each run, mean over seeds; batch size and device as in the setup table); "
            "colour = model, grey = no encoder.",
            plots.model_tradeoff_figure(
                [
                    {
                        "label": r["variant"],
                        "model": r["model"] if r["neural"] else None,
                        "accuracy": r["accuracy_mean"],
                        "std": r["accuracy_std"],
                        "params_total": r["params_total"],
                        "eval_sps": r["eval_sps"],
                    }
                    for r in done
                ]
            ),
        )
    ranks = [
        {"r": r["lora_r"], "accuracy": r["accuracy_mean"], "std": r["accuracy_std"]} for r in done if r.get("lora_r")
    ]
    if len({p["r"] for p in ranks}) >= 2:
        add(
            "lora_rank",
            "LoRA rank sweep",
            "Mean test accuracy against LoRA rank r (log2 scale).",
            plots.lora_rank_figure(ranks),
        )
    return figures


# ---- rendering --------------------------------------------------------------------------------


def _fmt(value, spec: str, missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def _table_rows(summary: list[dict]) -> list[dict]:
    rows = []
    for r in summary:
        if not r["n_seeds"]:
            rows.append(
                {
                    "variant": r["variant"],
                    "method": r["method"],
                    "seeds": f"0/{r['n_runs']}",
                    "accuracy": "failed",
                    "ci": "",
                    "f1": "",
                    "ece": "",
                    "params": "",
                    "memory": "",
                    "train_sps": "",
                    "eval_sps": "",
                    "checkpoint": "",
                }
            )
            continue
        std = f" ± {100 * r['accuracy_std']:.2f}" if r["accuracy_std"] is not None else ""
        rows.append(
            {
                "variant": r["variant"],
                "method": r["method"],
                "seeds": f"{r['n_seeds']}/{r['n_runs']}",
                "accuracy": f"{100 * r['accuracy_mean']:.2f}{std}",
                "ci": f"{100 * r['ci95_low']:.1f}–{100 * r['ci95_high']:.1f}; {r['ci_method']}",
                "f1": _fmt(r["macro_f1_mean"] and 100 * r["macro_f1_mean"], ".2f"),
                "ece": _fmt(r["ece_mean"], ".3f"),
                "params": f"{r['params_trainable']:,} ({_fmt(r['params_trainable_percent'], '.3g')}%)",
                "memory": _fmt(r["peak_memory_mib"], ",.0f") + (" (est. parts)" if r["memory_estimated"] else ""),
                "train_sps": _fmt(r["train_sps"], ",.1f"),
                "eval_sps": _fmt(r["eval_sps"], ",.1f"),
                "checkpoint": _fmt(r["checkpoint_mib"], ",.2f"),
            }
        )
    return rows


def _version_mix(comparison: Comparison) -> str:
    """'' when every finished run used the same compared library versions, else which runs used which."""
    from sentitune.runtime import version_mix

    versions = {run.name: (run.metrics.get("provenance") or {}).get("versions") or {} for run in comparison.ok_runs}
    return " | ".join(
        f"{mix['package']} " + "; ".join(f"{v} ({', '.join(r)})" for v, r in mix["versions"].items())
        for mix in version_mix(versions)
    )


def _setup(comparison: Comparison) -> dict:
    first = comparison.ok_runs[0].metrics
    provenance = first.get("provenance") or {}
    scaffolding = comparison.scaffolding or {}
    data = scaffolding.get("data", {})
    train = scaffolding.get("train", {})
    hardware = [provenance.get("device"), provenance.get("device_name")]
    if provenance.get("cpu_count"):
        hardware.append(f"{provenance['cpu_count']} CPUs")
    if provenance.get("torch_threads"):
        hardware.append(f"{provenance['torch_threads']} torch threads")
    shas = sorted({(r.metrics.get("provenance") or {}).get("git_sha") or "unknown" for r in comparison.ok_runs})
    models = list(
        dict.fromkeys(r.config.model for r in comparison.ok_runs if r.config is not None and _is_neural(r.method))
    )
    swept = bool(scaffolding) and "model" not in scaffolding and len(models) > 1
    return {
        "model": f"{', '.join(models)} (model sweep)" if swept else scaffolding.get("model") or first.get("model"),
        "held_fixed": "model, method and seed" if swept else "method and seed",
        "dataset": data.get("dataset") or first.get("dataset"),
        "data_source": first.get("data_source", ""),
        "test_examples": len(comparison.ok_runs[0].predictions.texts),
        "train_examples": first.get("train_examples"),
        "labels": ", ".join(comparison.ok_runs[0].predictions.label_names),
        "fingerprint": comparison.fingerprint or "unknown",
        "training": ", ".join(
            f"{k} {train[k]}"
            for k in ("epochs", "max_steps", "batch_size", "precision", "lr_scheduler", "warmup_ratio")
            if k in train
        )
        + (f", max_length {data['max_length']}" if "max_length" in data else ""),
        "hardware": ", ".join(str(h) for h in hardware if h),
        "peak_memory_how": first.get("peak_memory_how", ""),
        "versions": ", ".join(f"{k} {v}" for k, v in (provenance.get("versions") or {}).items())
        + (f" (lock {provenance['lock_sha256']})" if provenance.get("lock_sha256") else ""),
        "version_mix": _version_mix(comparison),
        "git": ", ".join(s[:12] for s in shas),
        "runs": f"{len(comparison.ok_runs)} finished of {len(comparison.runs)}",
    }


def _probe_rows(comparison: Comparison) -> list[dict]:
    rows = []
    for run in comparison.ok_runs:
        probe = (run.analysis or {}).get("negation_probe") or {}
        if probe.get("status") == "ok":
            directions = probe.get("by_direction", {})
            rows.append(
                {
                    "run": run.name,
                    "variant": run.variant,
                    "flipped": f"{100 * probe['flipped_correctly']:.0f}% of {probe['pairs']}",
                    **{
                        key: f"{100 * value['flipped_correctly']:.0f}%"
                        for key, value in zip(("pos_to_neg", "neg_to_pos"), directions.values())
                    },
                }
            )
    return rows


def _context(comparison: Comparison) -> dict:
    summary = variant_summary(comparison)
    slices = slice_rows(comparison)
    reference = choose_reference(summary)
    tests = paired_tests(comparison, reference)
    negation = {row["variant"]: row for row in slices if row["slice"] == "negation"}
    statements = tradeoff_statements(summary, tests, reference, negation)
    slice_names = list(dict.fromkeys(row["slice"] for row in slices))
    lookup = {(row["variant"], row["slice"]): row for row in slices}
    counts = {row["slice"]: row["count"] for row in slices}  # one test set, so the same for every variant
    slice_table_rows = []
    for name in slice_names:
        cells = []
        for variant in [r["variant"] for r in summary if r["n_seeds"]]:
            row = lookup.get((variant, name))
            cells.append(
                f"{100 * row['accuracy']:.1f} ({100 * row['ci95_low']:.0f}–{100 * row['ci95_high']:.0f})"
                if row and row["count"]
                else "–"
            )
        slice_table_rows.append({"slice": name, "count": counts[name], "cells": cells})
    test_rows = [
        {
            **t,
            "p": f"{t['p_value']:.3g}",
            "p_holm_text": f"{t['p_holm']:.3g}",
            "verdict": "significant" if t["significant"] else "not significant",
            "seeds_text": ", ".join(str(s) for s in t["seeds"]),
            "difference_text": f"{100 * t['difference']:+.1f} ({100 * t['difference_ci95_low']:+.1f} to "
            f"{100 * t['difference_ci95_high']:+.1f})",
            "acc": f"{100 * t['accuracy']:.1f}",
            "ref_acc": f"{100 * t['reference_accuracy']:.1f}",
        }
        for t in tests
    ]
    holm_tests = {scope: sum(t["slice"] == scope for t in tests) for scope in ("all", "negation")}
    return {
        "title": f"sentitune report: {comparison.folder.name}",
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folder": str(comparison.folder),
        "setup": _setup(comparison),
        "table": _table_rows(summary),
        "failed": [line for row in summary for line in row["failed"]],
        "reference": reference,
        "statements": statements,
        "tests": test_rows,
        "holm_tests": holm_tests,
        "alpha": ALPHA,
        "slice_variants": [r["variant"] for r in summary if r["n_seeds"]],
        "slice_rows": slice_table_rows,
        "probe_rows": _probe_rows(comparison),
        "summary": summary,
        "slices": slices,
    }


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(context: dict, figures: list[dict], figure_dir: str) -> str:
    env = _environment()
    env.filters["cell"] = _md_cell
    return env.get_template("report.md.j2").render(
        **context, figures=[{**f, "path": f"{figure_dir}/{f['name']}.png"} for f in figures]
    )


def render_html(context: dict, figures: list[dict]) -> str:
    """HTML with every image inline as a base64 PNG data URI, so the single file opens offline."""
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            **context,
            figures=[
                {**f, "data_uri": "data:image/png;base64," + base64.b64encode(f["png"]).decode("ascii")}
                for f in figures
            ],
        )
    )


def write_report(results_dir: str | Path) -> tuple[Path, Path, dict]:
    """`build_report` plus what it wrote about: (report.md, report.html, the template context, whose
    `reference` and `statements` name the baseline and the tradeoffs stated against it)."""
    comparison = load_comparison(results_dir)
    context = _context(comparison)
    figures = build_figures(comparison, context["summary"], context["slices"])
    folder = comparison.folder
    figure_dir = folder / FIGURES_DIR
    figure_dir.mkdir(exist_ok=True)
    for figure in figures:
        results.atomic_write_bytes(figure_dir / f"{figure['name']}.png", figure["png"])
    md_path, html_path = folder / REPORT_MD, folder / REPORT_HTML
    results.atomic_write_text(md_path, render_markdown(context, figures, FIGURES_DIR))
    results.atomic_write_text(html_path, render_html(context, figures))
    return md_path, html_path, context


def build_report(results_dir: str | Path) -> tuple[Path, Path]:
    """Writes <results>/report.md (figures in <results>/report_files/) and a self-contained report.html.

    Raises RunFolderError when the folder is not a comparison or holds no finished run.

    Example:
        >>> md_path, html_path = build_report("results/sst2")  # doctest: +SKIP
    """
    md_path, html_path, _ = write_report(results_dir)
    return md_path, html_path
