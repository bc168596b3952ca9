"""Comparison folder -> report.md + self-contained report.html.

The report is a pure function of the folder: it reads results.json for the list of runs (their
variant names, statuses and training-set sizes) and recomputes everything it shows from the run
folders themselves (predictions.csv, history.csv, metrics.json, and analysis/analysis.json where
`sentitune analyze` left one). Four things are taken from results.json as compare wrote them, because
the run folders do not hold them: the reference variant (compare's, which honours --reference), the
search records of `compare --tune`, the learning curve's "within 1 point" sizes, and the
recommendation (Pareto-optimal variants under the budgets, and why). Nothing is trained or predicted here.

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
from sentitune.compare import (
    BUDGETS,
    LEARNING_CURVE_POINTS,
    PARETO_AXES,
    EvalSet,
    base_variant,
    eval_set_statistics,
    size_order,
)
from sentitune.metrics import (
    confusion_matrix,
    expected_calibration_error,
    finite_mean,
    finite_std,
    holm,
    is_significant,
    paired_seed_test,
    pareto_front,
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
    train_size: int | str | None = None
    """The learning-curve size the run belongs to (compare.train_sizes: a count or "all"), else None."""

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.predictions is not None


@dataclass
class Comparison:
    folder: Path
    runs: list[RunEntry]
    fingerprint: str | None
    scaffolding: dict
    eval_sets: list = field(default_factory=list)
    """The extra eval sets compare scored the runs on (compare.EvalSet; names and files from
    results.json); their numbers are recomputed from <run>/evaluations/<name>/."""
    document: dict = field(default_factory=dict)
    """results.json as compare wrote it ({} when the folder has none yet)."""

    @property
    def ok_runs(self) -> list[RunEntry]:
        return [r for r in self.runs if r.ok]

    def variants(self) -> list[str]:
        """Variant names grouped by training-set size (smallest first, `all` last), in compare's order
        within a size: `full@500, lora@500, full@all, lora@all`."""
        names = list(dict.fromkeys(r.variant for r in self.runs))
        return sorted(names, key=lambda name: size_order(self.train_size(name)))

    def train_size(self, variant: str) -> int | str | None:
        return next((r.train_size for r in self.runs if r.variant == variant), None)

    def train_sizes(self) -> list:
        """The learning-curve sizes of the finished runs, smallest first ([None] without one)."""
        return sorted(dict.fromkeys(r.train_size for r in self.ok_runs), key=size_order)


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


def _size_from_name(variant: str) -> int | str | None:
    """The learning-curve size in a variant's name (`lora@500` -> 500, `lora@all` -> "all"), else None:
    for a folder whose results.json compare has not written yet."""
    if "@" not in variant:
        return None
    size = variant.rsplit("@", 1)[1]
    return int(size) if size.isdigit() else size


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
        entry.train_size = row["train_size"] if "train_size" in row else _size_from_name(entry.variant)
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
    comparison = Comparison(
        folder, entries, document.get("fingerprint"), document.get("scaffolding") or {}, document=document
    )
    comparison.eval_sets = [
        EvalSet(name, Path(entry.get("file", "")), bool(entry.get("builtin")))
        for name, entry in (document.get("eval_sets") or {}).items()
        if isinstance(entry, dict)
    ]
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
            "base_variant": base_variant(variant),
            "train_size": group[0].train_size,
            "train_examples": next((r.metrics.get("train_examples") for r in ok), None),
            "method": group[0].method,
            "model": next((r.config.model for r in group if r.config is not None), None),
            "n_runs": len(group),
            "n_seeds": len(ok),
            "seeds": [r.seed for r in ok],
            "failed": [f"{r.name}: {r.status}" + (f" ({r.error})" if r.error else "") for r in group if not r.ok],
        }
        if ok:
            accuracies = [float(r.predictions.correct.mean()) for r in ok]
            stats = seed_summary(accuracies, ok[0].predictions.correct if len(set(accuracies)) == 1 else [])
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
                    # ECE of the stored probabilities: after temperature scaling for runs that fitted
                    # one (calibration.json), raw for runs made before it
                    "ece_mean": _mean(
                        [expected_calibration_error(r.predictions.gold, r.predictions.probabilities)["ece"] for r in ok]
                    ),
                    "ece_uncalibrated_mean": _mean([r.metrics.get("test_ece_uncalibrated") for r in ok]),
                    "temperature_mean": _mean([r.metrics.get("temperature") for r in ok]),
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
                    "train_seconds": _mean([r.metrics.get("train_runtime_seconds") for r in ok]),
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


def choose_reference(summary: list[dict], recorded: str | None = None) -> str:
    """The baseline the tradeoffs are stated against: `recorded` (compare's reference from results.json,
    which honours --reference) if it finished, else full fine-tuning if it finished, else the most accurate.

    Example:
        >>> rows = [{"variant": "full", "n_seeds": 1, "accuracy_mean": .8}, {"variant": "lora", "n_seeds": 2,
        ...          "accuracy_mean": .9}]
        >>> choose_reference(rows), choose_reference(rows, "lora"), choose_reference(rows[1:])
        ('full', 'lora', 'lora')
    """
    finished = [row for row in summary if row["n_seeds"]]
    names = [row["variant"] for row in finished]
    if recorded in names:
        return recorded
    for row in finished:
        if row.get("base_variant", row["variant"]) == "full":
            return row["variant"]
    return max(finished, key=lambda row: row["accuracy_mean"])["variant"]


def choose_references(summary: list[dict], document: dict | None = None) -> dict[Any, str]:
    """Per training-set size with a finished run (the key None without a learning curve): the reference
    variant of that size, choose_reference over that size's variants with results.json's
    `references_by_train_size` (or, from an older compare, its single `reference`) as the recorded one."""
    document = document or {}
    recorded = document.get("references_by_train_size") or {}
    sizes = sorted(dict.fromkeys(row["train_size"] for row in summary if row["n_seeds"]), key=size_order)
    references = {}
    for size in sizes:
        named = recorded.get(str(size), document.get("reference") if len(sizes) == 1 else None)
        references[size] = choose_reference([row for row in summary if row["train_size"] == size], named)
    return references


def _as_references(comparison: Comparison, references: str | dict[Any, str]) -> dict[Any, str]:
    """A single reference name means: that variant for every run (a comparison without a learning curve)."""
    if isinstance(references, str):
        return dict.fromkeys((r.train_size for r in comparison.runs), references)
    return references


def paired_tests(comparison: Comparison, references: str | dict[Any, str]) -> list[dict]:
    """One paired test of every variant against the reference over all their shared seeds, overall
    and on the negation slice (metrics.paired_seed_test: exact McNemar on the discordant counts pooled
    over seeds, paired bootstrap CI of the difference). `references` is one variant name, or per
    training-set size the reference of that size (choose_references): with a learning curve a variant
    is tested only against the reference trained on as many examples.

    Holm's correction runs within each slice's family: `p_holm` of the overall tests is corrected over
    the overall tests against the references (the same family, and so the same numbers, as compare's
    `p_holm_vs_reference`), the negation tests over the negation tests. `holm_tests` is the family's
    size K and `significant` is metrics.is_significant (p_holm < 0.05 and a CI that excludes 0).
    A slice with no examples gets no test.
    """
    references = _as_references(comparison, references)
    texts = comparison.ok_runs[0].predictions.texts
    negation = slice_masks(texts)["negation"]["mask"]
    by_key = {(r.variant, r.seed): r for r in comparison.ok_runs}
    out = []
    for variant in comparison.variants():
        reference = references.get(comparison.train_size(variant))
        if reference is None or variant == reference:
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
                    "train_size": comparison.train_size(variant),
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
            ci = (test.get("difference_ci95_low"), test.get("difference_ci95_high"))
            test.update(p_holm=p_holm, holm_tests=len(family), significant=is_significant(p_holm, *ci, ALPHA))
    return out


# ---- tradeoff statements ----------------------------------------------------------------------


def _p_phrase(tests: list[dict]) -> str:
    """'McNemar p = 0.011, Holm p = 0.033 over 3 tests, significant'; pooled over seeds when there are
    several ('McNemar p = 0.011 over 2 seeds, ...'). Significant as metrics.is_significant says: the
    Holm-adjusted p < 0.05 and the difference's CI excludes 0."""
    if not tests:
        return "no shared seed to test"
    test = tests[0]
    seeds = len(test.get("seeds") or [])
    over = f" over {seeds} seeds" if seeds > 1 else ""
    k = test.get("holm_tests")
    family = f" over {k} test{'s' if k != 1 else ''}" if k else ""
    ci = (test.get("difference_ci95_low"), test.get("difference_ci95_high"))
    significant = test.get("significant", is_significant(test["p_holm"], *ci, ALPHA))
    verdict = "significant" if significant else "not significant"
    if test["p_holm"] < ALPHA and not significant:
        verdict += " (its CI includes 0)"
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
    count). A difference is called significant only when its Holm-adjusted p < 0.05 and its CI excludes 0.

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


def build_figures(
    comparison: Comparison,
    summary: list[dict],
    slices: list[dict],
    eval_rows: list[dict] | None = None,
    curve_lines: list[dict] | None = None,
    pareto: dict | None = None,
) -> list[dict]:
    """[{name, title, caption, png, section}] in report order; figures without data are left out.
    `section` names the report section that shows the figure ("figures": the Figures section at the end).

    `curve_lines` and `pareto` are learning_curve_context's and recommendation_context's figure data."""
    from sentitune.reporting import plots

    done = [row for row in summary if row["n_seeds"]]
    figures = []

    def add(name: str, title: str, caption: str, fig, section: str = "figures") -> None:
        figures.append(
            {"name": name, "title": title, "caption": caption, "png": plots.png_bytes(fig), "section": section}
        )

    if curve_lines and any(line["points"] for line in curve_lines):
        add(
            "learning_curve",
            "Learning curve",
            "Mean test accuracy over seeds against the number of training examples (log scale), one line per "
            "method; error bars are the 95% CI of the mean (t over seeds; bootstrap over test examples with one "
            "seed). The reference is drawn thicker.",
            plots.learning_curve_figure(curve_lines),
            "learning_curve",
        )
    if pareto:
        frontiers = "; ".join(f"{p['label']}: {', '.join(p['frontier'])}" for p in pareto["panels"])
        add(
            "pareto",
            "Accuracy against cost: the Pareto frontier",
            "Mean test accuracy over seeds against each cost, one point per variant; filled points and the step "
            "line are the frontier of that panel (no other variant is at least as accurate and at least as good on "
            "that axis), "
            f"hollow points are dominated, the star is the recommended variant, a dashed line a budget. Frontiers: "
            f"{frontiers}.{pareto['memory_note']}",
            plots.pareto_figure(pareto["points"], pareto["panels"], pareto.get("recommended")),
            "recommendation",
        )

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
    if eval_rows and len({row["set"] for row in eval_rows}) > 1:
        add(
            "eval_sets",
            "Robustness and out-of-domain eval sets",
            "Accuracy per variant on the test split and on each extra eval set (the shipped negation and "
            "contrast suite, --eval-file sets), with the 95% CI of the mean over seeds (t over seeds; "
            "bootstrap over the set's examples with one seed).",
            plots.eval_sets_figure(eval_rows),
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
    largest = max((r["train_size"] for r in done), key=size_order, default=None)
    ranks = [
        {"r": r["lora_r"], "accuracy": r["accuracy_mean"], "std": r["accuracy_std"]}
        for r in done
        if r.get("lora_r") and r["train_size"] == largest  # one point per rank: a learning curve's largest size
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


def _ece_cell(row: dict) -> str:
    """'0.081 → 0.023': test ECE before and after temperature scaling; one number for runs without it."""
    after = _fmt(row["ece_mean"], ".3f")
    if row.get("ece_uncalibrated_mean") is None:
        return after
    return f"{row['ece_uncalibrated_mean']:.3f} → {after}"


def eval_set_summary(comparison: Comparison, references: str | dict[Any, str]) -> dict:
    """results.json's `eval_sets`, recomputed from the run folders' evaluations (the same function
    compare uses, compare.eval_set_statistics), with the paired tests taken against `references`
    (one name, or the reference per training-set size as paired_tests takes them)."""
    rows = [
        {"run_dir": str(r.path), "variant": r.variant, "seed": r.seed, "status": "ok", "train_size": r.train_size}
        for r in comparison.ok_runs
    ]
    return eval_set_statistics(comparison.folder, rows, comparison.eval_sets, _as_references(comparison, references))


def _eval_point(variant: str, name: str, entry: dict, examples) -> dict:
    """One dot of plots.eval_sets_figure."""
    return {
        "variant": variant,
        "set": name,
        "accuracy": entry["mean"],
        "ci95_low": entry["ci95_low"],
        "ci95_high": entry["ci95_high"],
        "examples": examples,
    }


def _eval_set_context(summary: list[dict], eval_sets: dict) -> dict:
    """Table rows (test split first, then each set; one cell per variant), test rows and figure points."""
    variants = [r["variant"] for r in summary if r["n_seeds"]]

    def cell(entry: dict | None) -> str:
        if not entry:
            return "–"
        return f"{100 * entry['mean']:.1f} ({100 * entry['ci95_low']:.1f}–{100 * entry['ci95_high']:.1f})"

    done = {r["variant"]: r for r in summary if r["n_seeds"]}
    test = {
        v: {"mean": r["accuracy_mean"], "ci95_low": r["ci95_low"], "ci95_high": r["ci95_high"]} for v, r in done.items()
    }
    n_test = next((r["n_test"] for r in done.values()), None)
    table = [{"set": "test split", "count": n_test, "cells": [cell(test.get(v)) for v in variants]}]
    figure = [_eval_point(v, "test", e, n_test) for v, e in test.items()]
    tests = []
    for name, entry in eval_sets.items():
        if not entry["variants"]:
            continue
        table.append(
            {"set": name, "count": entry["examples"], "cells": [cell(entry["variants"].get(v)) for v in variants]}
        )
        figure += [_eval_point(v, name, e, entry["examples"]) for v, e in entry["variants"].items()]
        k = entry["multiplicity"]["tests"]
        tests += [
            {
                "set": name,
                "variant": t["a"],
                "reference": t["b"],
                "seeds_text": ", ".join(str(s) for s in t["seeds"]),
                "difference_text": f"{100 * t['difference']:+.1f} ({100 * t['difference_ci95_low']:+.1f} to "
                f"{100 * t['difference_ci95_high']:+.1f})",
                "p": f"{t['p_value']:.3g}",
                "p_holm_text": f"{t['p_holm']:.3g} (over {k})",
                "verdict": "significant" if t["significant"] else "not significant",
            }
            for t in entry["pairwise_vs_reference"]
        ]
    return {"eval_table": table if len(table) > 1 else [], "eval_tests": tests, "eval_figure_rows": figure}


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
                    "temperature": "",
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
                "ece": _ece_cell(r),
                "temperature": _fmt(r.get("temperature_mean"), ".2f"),
                "params": f"{r['params_trainable']:,} ({_fmt(r['params_trainable_percent'], '.3g')}%)",
                "memory": _fmt(r["peak_memory_mib"], ",.0f") + (" (est. parts)" if r["memory_estimated"] else ""),
                "train_sps": _fmt(r["train_sps"], ",.1f"),
                "eval_sps": _fmt(r["eval_sps"], ",.1f"),
                "checkpoint": _fmt(r["checkpoint_mib"], ",.2f"),
            }
        )
    return rows


def distilled_rows(comparison: Comparison, summary: list[dict]) -> list[dict]:
    """The "Distilled students" table (compare.methods `distill:TEACHER->lK`): per student variant, its
    teacher, both accuracies and eval sentences/s (means over seeds, as in the results table), and the
    student's agreement with its teacher and McNemar p against it on the test split, which each student
    recorded in its metrics.json (agreement: mean over seeds; p: one per seed)."""
    teacher_of = {
        row["run_name"]: row["teacher_variant"]
        for row in comparison.document.get("runs", [])
        if isinstance(row, dict) and row.get("teacher_variant")
    }
    entry = {row["variant"]: row for row in summary if row["n_seeds"]}
    rows = []
    for variant in dict.fromkeys(r.variant for r in comparison.ok_runs if r.name in teacher_of):
        students = [r for r in comparison.ok_runs if r.variant == variant]
        teacher = teacher_of[students[0].name]
        student_row, teacher_row = entry.get(variant, {}), entry.get(teacher, {})
        agreement = _mean([r.metrics.get("teacher_agreement") for r in students])
        p_values = [r.metrics.get("teacher_mcnemar_p_value") for r in students]
        rows.append(
            {
                "student": variant,
                "teacher": teacher,
                "accuracy": _fmt(student_row.get("accuracy_mean") and 100 * student_row["accuracy_mean"], ".2f"),
                "teacher_accuracy": _fmt(
                    teacher_row.get("accuracy_mean") and 100 * teacher_row["accuracy_mean"], ".2f"
                ),
                "agreement": _fmt(agreement and 100 * agreement, ".1f"),
                "p": ", ".join(_fmt(p, ".3g") for p in p_values),
                "eval_sps": _fmt(student_row.get("eval_sps"), ",.1f"),
                "teacher_eval_sps": _fmt(teacher_row.get("eval_sps"), ",.1f"),
            }
        )
    return rows


def _version_mix(comparison: Comparison) -> str:
    """'' when every finished run used the same compared library versions and sentitune code, else
    which runs used which (the code digests with how many runs each, runtime.code_mix_line)."""
    from sentitune.runtime import SENTITUNE_CODE, code_mix_line, compared_versions, version_mix

    versions = {run.name: compared_versions(run.metrics.get("provenance") or {}) for run in comparison.ok_runs}
    return " | ".join(
        code_mix_line(mix)
        if mix["package"] == SENTITUNE_CODE
        else f"{mix['package']} " + "; ".join(f"{v} ({', '.join(r)})" for v, r in mix["versions"].items())
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
    # Which sentitune code made the runs, even without git (a wheel, a copied tree) or with uncommitted edits.
    digests = sorted(
        {str(d) for r in comparison.ok_runs if (d := (r.metrics.get("provenance") or {}).get("code_digest"))}
    )
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
        "train_examples": first.get("train_examples")
        if len(comparison.train_sizes()) == 1
        else " / ".join(
            f"{examples:,}" if isinstance(examples, int) else str(examples)
            for examples in sorted(
                {r.metrics.get("train_examples") or r.train_size for r in comparison.ok_runs}, key=size_order
            )
        )
        + " (learning curve)",
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
        "code_digest": ", ".join(digests),
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


def _value(value) -> str:
    """A knob value as the tables show it: 2.5e-05, 16, q,v."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _examples(point: dict) -> str:
    """A learning-curve point's number of training examples, '6,920', or its size when unknown."""
    examples = point.get("train_examples")
    return f"{examples:,}" if isinstance(examples, int) else str(point.get("train_size"))


def learning_curve_context(curve: dict) -> dict:
    """The learning-curve section from results.json's `learning_curve` (compare.learning_curve): one
    table row and one figure line per method, and per method other than the reference the sentence
    "X comes within 1 point of <reference> from N examples" (or that it never does). Empty without
    compare.train_sizes."""
    points_text = f"{LEARNING_CURVE_POINTS:g} point{'s' if LEARNING_CURVE_POINTS != 1 else ''}"
    sizes = sorted({p["train_size"] for line in curve.values() for p in line["points"]}, key=size_order)
    examples = {}
    for line in curve.values():
        for p in line["points"]:
            examples.setdefault(p["train_size"], _examples(p))
    lines, rows, statements = [], [], []
    for method, line in curve.items():
        reference = line.get("reference")
        at = {p["train_size"]: p for p in line["points"]}
        rows.append(
            {
                "method": method + (" (reference)" if method == reference else ""),
                "cells": [
                    f"{100 * at[s]['test_accuracy_mean']:.1f} ({100 * at[s]['test_accuracy_ci95_low']:.1f}–"
                    f"{100 * at[s]['test_accuracy_ci95_high']:.1f})"
                    if s in at
                    else "–"
                    for s in sizes
                ],
            }
        )
        lines.append(
            {
                "label": method,
                "reference": method == reference,
                "points": [
                    {
                        "examples": p.get("train_examples") or p["train_size"],
                        "accuracy": p["test_accuracy_mean"],
                        "ci95_low": p["test_accuracy_ci95_low"],
                        "ci95_high": p["test_accuracy_ci95_high"],
                    }
                    for p in line["points"]
                    if isinstance(p.get("train_examples") or p["train_size"], int)
                ],
            }
        )
        if method == reference:
            continue
        reached = line.get("within_reference_from")
        if reference not in curve:
            statements.append(f"{method}: no finished {reference} run to compare it with.")
        elif reached is None:
            tried = ", ".join(_examples(p) for p in line["points"])
            statements.append(f"{method} never comes within {points_text} of {reference} (at {tried} examples).")
        else:
            statements.append(f"{method} comes within {points_text} of {reference} from {examples[reached]} examples.")
    columns = [f"{examples[s]}" + (" (all)" if s == "all" and examples[s] != "all" else "") for s in sizes]
    return {"curve_columns": columns, "curve_rows": rows, "curve_statements": statements, "curve_lines": lines}


def search_context(search: dict) -> dict:
    """The search section from results.json's `search` (compare --tune): per variant its trials (values
    and validation accuracy), budget and selection, and the sentence on what the trials were scored on."""
    variants = []
    for name in sorted(search, key=lambda name: size_order(_size_from_name(name))):
        record = search[name]
        if not record.get("budget"):
            variants.append({"variant": name, "tuned": False, "note": record.get("note") or "not tuned"})
            continue
        trials = record.get("trials") or []
        knobs = list(record.get("space") or {}) or list(dict.fromkeys(k for t in trials for k in t["params"]))
        selected = record.get("selected")
        chosen = next(
            (
                t["number"]
                for t in trials
                if selected is not None
                and t["params"] == selected
                and t["validation_accuracy"] == record.get("selected_validation_accuracy")
            ),
            None,
        )
        variants.append(
            {
                "variant": name,
                "tuned": True,
                "budget": record["budget"],
                "trials_run": record.get("trials_run", len(trials)),
                "sampler": record.get("sampler", "?"),
                "scored_on": record.get("scored_on", "?"),
                "space": "; ".join(
                    f"{k}: {', '.join(_value(v) for v in values)}" for k, values in (record.get("space") or {}).items()
                ),
                "knobs": knobs,
                "trials": [
                    {
                        "number": t["number"],
                        "cells": [_value(t["params"].get(k, "–")) for k in knobs],
                        "accuracy": _fmt(t["validation_accuracy"] and 100 * t["validation_accuracy"], ".2f"),
                        "status": t.get("status", "?") + (f": {t['error']}" if t.get("error") else ""),
                        "selected": t["number"] == chosen,
                    }
                    for t in trials
                ],
                "selected": ", ".join(f"{k} = {_value(v)}" for k, v in selected.items())
                if selected
                else "none (every trial failed; the variant ran at its defaults)",
                "selected_accuracy": _fmt(
                    record.get("selected_validation_accuracy") and 100 * record["selected_validation_accuracy"], ".2f"
                ),
            }
        )
    tuned = [v for v in variants if v["tuned"]]
    if not tuned:
        return {"search": variants, "search_note": ""}
    budgets = sorted({v["budget"] for v in tuned})
    scored_on = sorted({v["scored_on"] for v in tuned})
    budget = (
        f"the same budget of {budgets[0]} trial{'s' if budgets[0] != 1 else ''}"
        if len(budgets) == 1
        else f"budgets of {', '.join(str(b) for b in budgets)} trials"
    )
    where = "the validation slice only" if scored_on == ["validation"] else f"{', '.join(scored_on)} (as recorded)"
    note = (
        f"Every tuned variant had {budget} ({', '.join(sorted({v['sampler'] for v in tuned}))} sampler). Each "
        f"trial trained on the training split and was scored on {where}, never on test; the selected values "
        "were then trained once per seed, and the test split was read once, by those final runs (the numbers "
        "in Results)."
    )
    return {"search": variants, "search_note": note}


PARETO_PANELS = (
    # report summary field, compare summary field (PARETO_AXES, BUDGETS), axis label
    ("peak_memory_mib", "peak_memory_mib_mean", "peak training memory (MiB)"),
    ("train_seconds", "train_runtime_seconds_mean", "training time (s)"),
    ("eval_sps", "eval_samples_per_second_mean", "inference: test sentences/s"),
)


def _budget_text(name: str, limit: float) -> str:
    _, upper, unit, _ = BUDGETS.get(name, (None, True, name, 1.0))
    return f"{'at most' if upper else 'at least'} {limit:,g} {unit}"


def recommendation_context(summary: list[dict], document: dict) -> dict:
    """The recommendation section: the Pareto points and frontiers of the variants at the size compare
    recommended at (the largest), computed here from the run folders with metrics.pareto_front, and
    results.json's `recommendation` (compare.recommend: Pareto-optimal variants, budgets, the choice and
    its reason). `pareto` is None with fewer than two finished variants at that size."""
    recorded = document.get("recommendation") or {}
    sizes = sorted({r["train_size"] for r in summary if r["n_seeds"]}, key=size_order)
    size = recorded["train_size"] if "train_size" in recorded else (sizes[-1] if sizes else None)
    rows = [r for r in summary if r["n_seeds"] and r["train_size"] == size]
    budgets = recorded.get("budgets") or {}
    panels = []
    for key, axis, label in PARETO_PANELS:
        values = [r.get(key) if r.get(key) is not None else math.nan for r in rows]
        if not any(math.isfinite(v) for v in values):
            continue
        larger = PARETO_AXES[axis]
        front = pareto_front([(r["accuracy_mean"], v) for r, v in zip(rows, values)], (True, larger))
        limit = next((budgets[n] / spec[3] for n, spec in BUDGETS.items() if spec[0] == axis and n in budgets), None)
        panels.append(
            {
                "key": key,
                "axis": axis,
                "label": label,
                "larger_is_better": larger,
                "frontier": [rows[i]["variant"] for i in front],
                "budget": limit,
            }
        )
    hows = sorted({r.get("peak_memory_how") or "unknown" for r in rows})
    pareto = None
    if len(rows) >= 2 and panels:
        pareto = {
            "points": [
                {"label": r["variant"], "accuracy": r["accuracy_mean"], **{p["key"]: r.get(p["key"]) for p in panels}}
                for r in rows
            ],
            "panels": panels,
            "recommended": recorded.get("recommended"),
            "memory_note": ""
            if len(hows) == 1
            else f" Peak memory is measured in more than one way here ({'; '.join(hows)}): those points do not "
            "share one memory axis.",
        }
    recommendation = None
    if recorded.get("reason"):
        recommendation = {
            "reason": recorded["reason"],
            "recommended": recorded.get("recommended"),
            "pareto_optimal": ", ".join(recorded.get("pareto_optimal") or []) or "none",
            "contenders": ", ".join(recorded.get("contenders") or []),
            "budgets": [_budget_text(name, limit) for name, limit in budgets.items()],
            "train_size": ""
            if size is None
            else f" Among the variants trained on {_examples(rows[0] if rows else {'train_size': size})} "
            "examples, the largest training-set size.",
        }
    return {"recommendation": recommendation, "pareto": pareto}


def _context(comparison: Comparison) -> dict:
    summary = variant_summary(comparison)
    slices = slice_rows(comparison)
    references = choose_references(summary, comparison.document)
    reference = references[max(references, key=size_order)]  # the largest size's, as compare's `reference`
    tests = paired_tests(comparison, references)
    negation = {row["variant"]: row for row in slices if row["slice"] == "negation"}
    statements = []
    for size, of_size in references.items():
        group = [row for row in summary if row["train_size"] == size]
        statements += tradeoff_statements(group, [t for t in tests if t["train_size"] == size], of_size, negation)
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
        "distilled": distilled_rows(comparison, summary),
        "failed": [line for row in summary for line in row["failed"]],
        "reference": reference,
        "references": list(dict.fromkeys(references.values())),
        "statements": statements,
        "tests": test_rows,
        "holm_tests": holm_tests,
        "alpha": ALPHA,
        "slice_variants": [r["variant"] for r in summary if r["n_seeds"]],
        "slice_rows": slice_table_rows,
        "probe_rows": _probe_rows(comparison),
        "summary": summary,
        "slices": slices,
        **_eval_set_context(summary, eval_set_summary(comparison, references)),
        **learning_curve_context(comparison.document.get("learning_curve") or {}),
        **search_context(comparison.document.get("search") or {}),
        **recommendation_context(summary, comparison.document),
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
    figures = build_figures(
        comparison,
        context["summary"],
        context["slices"],
        context["eval_figure_rows"],
        context["curve_lines"],
        context["pareto"],
    )
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
