"""`sentitune compare`: every (variant, seed) run under one scaffolding, each in its own fresh process,
one at a time by default, then one results table with seed statistics and paired tests.

Layout of a comparison folder:
    <out>/comparison.yaml      the base config (scaffolding + compare section)
    <out>/runs/<variant>-s<seed>/   ordinary run folders
    <out>/logs/<run>.log       each run's console output
    <out>/results.json|csv     one row per run (failed runs included), summary, pairwise tests

Re-running the same command skips finished runs and redoes unfinished ones.

Example:
    >>> rows = expand_runs(load_config(preset="sst2-quick"))  # doctest: +SKIP
    >>> [r.name for r in rows]  # doctest: +SKIP
    ['full-s42', 'lora-s42', 'head-s42', 'tfidf-s42']
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sentitune import results
from sentitune.config import ConfigError, RunConfig, scaffolding_differences
from sentitune.methods import registry
from sentitune.metrics import finite_mean, holm, paired_seed_test, seed_summary
from sentitune.models import resolve_model
from sentitune.runtime import COMPARED_PACKAGES, package_versions, version_differences
from sentitune.runtime import version_mix as runtime_version_mix


RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
BASE_CONFIG = "comparison.yaml"
RUNS_DIR = "runs"
LOGS_DIR = "logs"
SIGNIFICANCE_LEVEL = 0.05


@dataclass
class PlannedRun:
    name: str
    variant: str
    config: RunConfig
    knobs: dict[str, Any] = field(default_factory=dict)


def method_knobs(cfg: RunConfig) -> dict[str, Any]:
    """The method-specific settings of a run: what may legitimately differ inside a comparison.

    `layer_lr_decay`: training applies it to every neural method, so it is recorded for every neural
    run that uses it (decay != 1), and always for `full` (its column was always there).
    """
    m = cfg.method
    neural = registry.get(m.name).neural
    knobs: dict[str, Any] = {"learning_rate": cfg.learning_rate} if neural else {}
    if cfg.train.gradient_checkpointing:
        knobs["gradient_checkpointing"] = True
    if neural and m.name != "full":
        knobs["head"] = m.head
    if m.name == "full" or (neural and m.layer_lr_decay != 1.0):
        knobs["layer_lr_decay"] = m.layer_lr_decay
    if m.name in ("lora", "dora"):
        knobs.update(
            lora_r=m.lora_r,
            lora_alpha=m.lora_alpha,
            lora_dropout=m.lora_dropout,
            lora_target_modules=",".join(m.lora_target_modules),
        )
    if m.name == "prefix":
        knobs["prefix_tokens"] = m.prefix_tokens
    if m.name == "tfidf":
        knobs.update(
            tfidf_word_ngrams=str(m.tfidf_word_ngrams),
            tfidf_char_ngrams=str(m.tfidf_char_ngrams),
            tfidf_c_grid=str(m.tfidf_c_grid),
        )
    return knobs


def _format_lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def llrd_suffix(method: str, decay: float) -> str:
    """`-llrd<decay>` for a neural method other than `full` trained with layer-wise LR decay, else "".

    `full` variants keep their names (the reference is `full`; --layer-lr-decays adds `full-llrd<d>`);
    any other method inherits a configured `method.layer_lr_decay`, and its name says so.

    Example:
        >>> llrd_suffix("lora", 0.8), llrd_suffix("lora", 1.0), llrd_suffix("full", 0.8)
        ('-llrd0.8', '', '')
    """
    if method == "full" or decay == 1.0 or not registry.get(method).neural:
        return ""
    return f"-llrd{decay:g}"


def expand_variants(base: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    """(variant name, dotted overrides) for every method and sweep point, without duplicates.

    A neural variant other than `full` whose runs use layer-wise LR decay (`method.layer_lr_decay`
    != 1) ends in `-llrd<decay>` (llrd_suffix), so a name never hides the optimiser it ran with.
    """
    c = base.compare
    variants: dict[str, dict[str, Any]] = {}
    for method in c.methods:
        variants[method] = {"method.name": method}
        if method == "lora":
            for r in c.lora_r_sweep:
                if r != base.method.lora_r:
                    variants[f"lora-r{r}"] = {"method.name": "lora", "method.lora_r": r}
            for targets in c.lora_targets_sweep:
                target_list = [t.strip() for t in targets.split(",") if t.strip()]
                if target_list != base.method.lora_target_modules:
                    variants[f"lora-{'-'.join(target_list)}"] = {
                        "method.name": "lora",
                        "method.lora_target_modules": target_list,
                    }
        if method == "full":
            for decay in c.layer_lr_decays:
                if decay != base.method.layer_lr_decay:
                    variants[f"full-llrd{decay:g}"] = {"method.name": "full", "method.layer_lr_decay": decay}
        if registry.get(method).neural and c.gradient_checkpointing_variants:
            variants[f"{method}-gc"] = {"method.name": method, "train.gradient_checkpointing": True}
        if registry.get(method).neural:
            for lr in c.learning_rates:
                variants[f"{method}-lr{_format_lr(lr)}"] = {"method.name": method, "method.learning_rate": lr}
    variants = {
        name + llrd_suffix(o["method.name"], o.get("method.layer_lr_decay", base.method.layer_lr_decay)): o
        for name, o in variants.items()
    }
    if not c.models:
        return list(variants.items())
    # Model sweep: each neural variant once per model; the classical baseline has no encoder, so
    # running it per model would only repeat one run under several names.
    out = []
    for model, short in zip(c.models, short_model_names(c.models)):
        out += [
            (f"{short}-{name}", {**overrides, "model": model})
            for name, overrides in variants.items()
            if registry.get(overrides["method.name"]).neural
        ]
    out += [
        (name, overrides) for name, overrides in variants.items() if not registry.get(overrides["method.name"]).neural
    ]
    return out


def short_model_name(name: str) -> str:
    """A model's name in variant names: the alias, a folder's last part, or a hub id's repository.

    Example:
        >>> [short_model_name(m) for m in ("minilm-l6", "models/minilm-l3/", "google-bert/bert-base-uncased")]
        ['minilm-l6', 'minilm-l3', 'bert-base-uncased']
    """
    return Path(name.rstrip("/")).name or name


def short_model_names(models: list[str]) -> list[str]:
    """Short names for a sweep, or ConfigError naming compare.models when two would collide."""
    shorts = [short_model_name(m) for m in models]
    for i, short in enumerate(shorts):
        if short in shorts[:i]:
            other = models[shorts.index(short)]
            raise ConfigError(
                f"compare.models: {other!r} and {models[i]!r} both shorten to {short!r} in variant "
                "names; rename one folder"
            )
    return shorts


def expand_runs(base: RunConfig) -> list[PlannedRun]:
    runs = []
    for (variant, overrides), seed in itertools.product(expand_variants(base), base.compare.seeds):
        cfg = base.override({**overrides, "train.seed": seed})
        runs.append(PlannedRun(f"{variant}-s{seed}", variant, cfg, method_knobs(cfg)))
    return runs


def verify_same_scaffolding(configs: dict[str, RunConfig]) -> str:
    """Returns the shared fingerprint or raises ConfigError naming the first field that differs."""
    items = list(configs.items())
    reference_name, reference = items[0]
    for name, cfg in items[1:]:
        if cfg.fingerprint() != reference.fingerprint():
            diff = scaffolding_differences(reference.scaffolding(), cfg.scaffolding())
            raise ConfigError(
                f"{name} and {reference_name} do not share their scaffolding: {'; '.join(diff)}. "
                "A fair comparison holds everything but the method and its knobs fixed; use another --output-dir"
            )
    return reference.fingerprint()


def run_versions(run_dir: Path) -> dict[str, str] | None:
    """The library versions a finished run recorded (None for a run that has none)."""
    try:
        provenance = results.load_run(run_dir).metrics.get("provenance") or {}
    except results.RunFolderError:
        return None
    versions = provenance.get("versions")
    return versions if isinstance(versions, dict) else None


def check_versions(out: Path, planned: list[PlannedRun], allow_mix: bool) -> None:
    """Refuses, in one line, to add runs made with this environment's libraries to runs made with
    others: a version change can move accuracy and speed by more than the methods differ."""
    if allow_mix:
        return
    here = package_versions(COMPARED_PACKAGES)
    for run in planned:
        run_dir = out / RUNS_DIR / run.name
        if results.read_status(run_dir) != "ok":
            continue
        versions = run_versions(run_dir)
        if versions is None:
            continue
        differences = version_differences(versions, here)
        if differences:
            name, theirs, ours = differences[0]
            raise ConfigError(
                f"{run_dir} was made with {name} {theirs}, this environment has {name} {ours}; one comparison "
                "holds library versions fixed: use another --output-dir, or --allow-version-mix (the results "
                "and the report then say which runs differ)"
            )


def version_mix(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """runtime.version_mix over the finished runs of `rows`."""
    finished = {r["run_name"]: run_versions(out / r["run_dir"]) or {} for r in rows if r["status"] == "ok"}
    return runtime_version_mix(finished)


def _check_existing(out: Path, planned: list[PlannedRun]) -> None:
    configs = {"this comparison": planned[0].config}
    for folder in sorted((out / RUNS_DIR).glob("*")):
        if (folder / results.CONFIG_FILE).exists():
            configs[str(folder)] = RunConfig.from_yaml(folder / results.CONFIG_FILE)
    verify_same_scaffolding(configs)


# ---- running ----------------------------------------------------------------------------------


def _run_one(run: PlannedRun, out: Path) -> subprocess.Popen:
    run_dir = out / RUNS_DIR / run.name
    pending = out / LOGS_DIR / f"{run.name}.config.yaml"
    results.atomic_write_text(pending, run.config.to_yaml())
    log = (out / LOGS_DIR / f"{run.name}.log").open("w", encoding="utf-8")
    # A fresh interpreter per run: its peak RSS is that run's own, and no state leaks between runs.
    command = [sys.executable, "-m", "sentitune", "train", "--config", str(pending), "--output-dir", str(run_dir)]
    die_with_compare = None
    if sys.platform == "linux":
        # The child gets SIGTERM when compare dies, even by SIGKILL: no trainer outlives its comparison.
        import ctypes

        prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

        def die_with_compare() -> None:  # runs in the child between fork and exec
            prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # compare died before the line above took effect
                os._exit(1)

    with log:  # the child has its own copy of the descriptor
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_compare,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def run_comparison(
    base: RunConfig, out: str | Path, parallel: int = 1, echo=print, allow_version_mix: bool = False
) -> dict[str, Any]:
    """Runs every planned run not finished yet, then writes and returns the results. Finished runs
    made with other versions of the compared libraries are refused unless `allow_version_mix`."""
    out = Path(out)
    results.check_output_path(out, "--output-dir")
    planned = expand_runs(base)
    # A missing model fails every run of its variants; say so once, before anything starts.
    for model in dict.fromkeys(r.config.model for r in planned if registry.get(r.config.method.name).neural):
        resolve_model(model)
    (out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    _check_existing(out, planned)
    check_versions(out, planned, allow_version_mix)
    results.atomic_write_text(out / BASE_CONFIG, base.to_yaml())
    todo = [r for r in planned if results.read_status(out / RUNS_DIR / r.name) != "ok"]
    done = len(planned) - len(todo)
    if done:
        echo(f"{done} of {len(planned)} runs already finished in {out}; running the other {len(todo)}")
    if parallel > 1:
        echo(f"warning: {parallel} runs at once share the CPU cores; speed and memory figures will be distorted")
    running: list[tuple[PlannedRun, subprocess.Popen, float]] = []
    queue = list(todo)
    in_use: dict[str, str] = {}  # runs whose folder another process trains in: never started, reported failed

    def held_by_other(run: PlannedRun, child: int | None = None) -> bool:
        holder = results.lock_holder(out / RUNS_DIR / run.name)
        if holder is None or holder == child:
            return False
        in_use[run.name] = (
            f"{out / RUNS_DIR / run.name}: in use by another sentitune process "
            f"(PID {holder if holder > 0 else 'unknown'}); not started"
        )
        echo(f"    {run.name}: failed: {in_use[run.name]}")
        return True

    def terminate(*_) -> None:
        raise SystemExit(128 + signal.SIGTERM)

    handler = None
    if threading.current_thread() is threading.main_thread():
        handler = signal.signal(signal.SIGTERM, terminate)  # SIGTERM ends the children too (below)
    try:
        while queue or running:
            while queue and len(running) < parallel:
                run = queue.pop(0)
                if held_by_other(run):
                    done += 1
                    continue
                echo(f"[{done + len(running) + 1}/{len(planned)}] {run.name}: training ...")
                running.append((run, _run_one(run, out), time.perf_counter()))
            time.sleep(0.2)
            for item in list(running):
                run, process, started = item
                if process.poll() is None:
                    continue
                running.remove(item)
                done += 1
                if process.returncode != 0 and held_by_other(run, process.pid):
                    continue  # the child refused a folder another trainer holds: its status is not ours to write
                _mark_if_killed(out / RUNS_DIR / run.name, process.returncode)
                row = _row(out, run)
                took = time.perf_counter() - started
                if row["status"] == "ok":
                    echo(f"    {run.name}: ok, test accuracy {row['test_accuracy']:.4f} ({took:.0f} s)")
                else:
                    echo(f"    {run.name}: {row['status']}: {row.get('error')} (log: {out / LOGS_DIR / run.name}.log)")
                write_results(out, planned)
    except BaseException:  # Ctrl-C, SIGTERM, or a bug: no trainer keeps running without its comparison
        for _, process, _ in running:
            process.terminate()
        for _, process, _ in running:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
    document = write_results(out, planned)
    for row in document["runs"]:
        if row["run_name"] in in_use:
            row.update(status="failed", error=in_use[row["run_name"]])
    return document


def _mark_if_killed(run_dir: Path, returncode: int) -> None:
    """A run killed from outside (OOM killer, SIGKILL) cannot write its own failure; record it."""
    if returncode != 0 and results.read_status(run_dir) in (None, "running"):
        reason = "killed (out of memory?)" if returncode in (-9, 137) else f"exited with code {returncode}"
        results.atomic_write_json(run_dir / results.METRICS_FILE, {"status": "failed", "error": reason})


def _row(out: Path, run: PlannedRun) -> dict[str, Any]:
    run_dir = out / RUNS_DIR / run.name
    row: dict[str, Any] = {
        "run_name": run.name,
        "run_dir": f"{RUNS_DIR}/{run.name}",
        "variant": run.variant,
        "model": run.config.model,
        "method": run.config.method.name,
        "seed": run.config.train.seed,
        "status": "not started",
        **run.knobs,
    }
    status = results.read_status(run_dir)
    if status is None:
        return row
    try:
        metrics = results.load_run(run_dir).metrics
    except results.RunFolderError as exc:
        return {**row, "status": "failed", "error": str(exc)}
    provenance = metrics.pop("provenance", {}) or {}
    metrics.pop("label_names", None)
    metrics.pop("data_notes", None)
    row.update({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
    row.update(
        {
            "device": provenance.get("device"),
            "device_name": provenance.get("device_name"),
            "torch_threads": provenance.get("torch_threads"),
        }
    )
    return row


# ---- statistics -------------------------------------------------------------------------------


def _correctness(out: Path, row: dict[str, Any]) -> np.ndarray:
    """Per-example correctness of a finished run, as every reader defines it (results.load_correctness)."""
    return results.load_correctness(out / row["run_dir"])


def summarize(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    summary = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        group = [r for r in rows if r["variant"] == variant]
        ok = [r for r in group if r["status"] == "ok"]
        entry: dict[str, Any] = {
            "variant": variant,
            "model": group[0].get("model"),
            "method": group[0]["method"],
            "n_runs": len(group),
            "n_seeds": len(ok),
            **{k: v for k, v in group[0].items() if k in method_knobs_keys(group[0])},
        }
        if ok:
            stats = seed_summary([r["test_accuracy"] for r in ok], _correctness(out, ok[0]) if len(ok) == 1 else [])
            entry.update(
                {
                    "test_accuracy_mean": stats["mean"],
                    "test_accuracy_std": stats["std"],
                    "test_accuracy_ci95_low": stats["ci95_low"],
                    "test_accuracy_ci95_high": stats["ci95_high"],
                    "ci_method": stats["ci_method"],
                }
            )
            for key in (
                "test_macro_f1",
                "peak_memory_mib",
                "train_samples_per_second",
                "train_tokens_per_second",
                "train_runtime_seconds",
                "eval_samples_per_second",
                "checkpoint_size_mib",
            ):
                entry[f"{key}_mean"] = finite_mean([r.get(key) for r in ok])
            for key in ("params_trainable", "params_total", "params_trainable_percent"):
                entry[key] = ok[0].get(key)
        summary.append(entry)
    return summary


def method_knobs_keys(row: dict[str, Any]) -> list[str]:
    return [
        k
        for k in (
            "learning_rate",
            "gradient_checkpointing",
            "layer_lr_decay",
            "head",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "lora_target_modules",
            "prefix_tokens",
            "tfidf_word_ngrams",
            "tfidf_char_ngrams",
            "tfidf_c_grid",
        )
        if k in row
    ]


def reference_variant(rows: list[dict[str, Any]]) -> str | None:
    """The variant the `*_vs_reference` statistics are taken against: "full" when it has a finished
    run, else the first variant with one (None when no run finished)."""
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["status"] == "ok"))
    return "full" if "full" in variants else (variants[0] if variants else None)


def pairwise_tests(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One paired test per pair of variants over all their shared seeds (metrics.paired_seed_test:
    exact McNemar on discordant counts pooled over seeds, paired bootstrap CI of the difference).

    Every entry carries `p_holm` (Holm over all the pairs here) and `significant` = p_holm < 0.05;
    pairs that involve the reference variant (reference_variant) also carry `p_holm_vs_reference`
    (Holm over those pairs only), the others None.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    by_key = {(r["variant"], r["seed"]): r for r in ok}
    variants = list(dict.fromkeys(r["variant"] for r in ok))
    cache: dict[str, np.ndarray] = {}

    def correctness(variant: str, seed: Any) -> np.ndarray:
        row = by_key[(variant, seed)]
        if row["run_name"] not in cache:
            cache[row["run_name"]] = _correctness(out, row)
        return cache[row["run_name"]]

    tests = []
    for a, b in itertools.combinations(variants, 2):
        seeds = sorted({s for v, s in by_key if v == a} & {s for v, s in by_key if v == b})
        if not seeds:
            continue
        ca = np.stack([correctness(a, seed) for seed in seeds])
        cb = np.stack([correctness(b, seed) for seed in seeds])
        test = paired_seed_test(ca, cb)
        # paired_seed_test's discordant counts b, c get mcnemar's names: "a" and "b" name the variants here
        discordant = {"a_only_correct": test.pop("b"), "b_only_correct": test.pop("c")}
        tests.append({"a": a, "b": b, "seeds": seeds, **test, **discordant})
    reference = reference_variant(rows)
    against = [i for i, t in enumerate(tests) if reference in (t["a"], t["b"])]
    vs_reference = dict(zip(against, holm([tests[i]["p_value"] for i in against])))
    for i, (test, p_holm) in enumerate(zip(tests, holm([t["p_value"] for t in tests]))):
        test.update(
            p_holm=p_holm, p_holm_vs_reference=vs_reference.get(i), significant=bool(p_holm < SIGNIFICANCE_LEVEL)
        )
    return tests


def write_results(out: Path, planned: list[PlannedRun]) -> dict[str, Any]:
    rows = [_row(out, run) for run in planned]
    pairwise = pairwise_tests(out, rows)
    document = {
        "fingerprint": planned[0].config.fingerprint(),
        "scaffolding": planned[0].config.scaffolding(),
        "runs": rows,
        "summary": summarize(out, rows),
        "reference": reference_variant(rows),
        "pairwise": pairwise,
        "multiplicity": {
            "method": "holm",
            "tests": len(pairwise),
            "tests_vs_reference": sum(t["p_holm_vs_reference"] is not None for t in pairwise),
        },
        "significance_level": SIGNIFICANCE_LEVEL,
        "version_mix": version_mix(out, rows),
    }
    results.atomic_write_json(out / RESULTS_JSON, document)
    results.atomic_write_csv(out / RESULTS_CSV, rows)
    return document
