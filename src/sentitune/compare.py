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

import hashlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sentitune import results, tuning
from sentitune.config import SUITE_DIR, ConfigError, RunConfig, parse_distill_method, scaffolding_differences
from sentitune.data import load_splits
from sentitune.methods import registry
from sentitune.metrics import finite_mean, holm, is_significant, paired_seed_test, pareto_front, seed_summary
from sentitune.models import resolve_model
from sentitune.runtime import (
    COMPARED_PACKAGES,
    SENTITUNE_CODE,
    code_digest,
    compared_versions,
    package_versions,
    version_differences,
)
from sentitune.runtime import version_mix as runtime_version_mix


RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
BASE_CONFIG = "comparison.yaml"
RUNS_DIR = "runs"
LOGS_DIR = "logs"
SEARCH_DIR = "search"
SEARCH_RECORD = "searches.json"
SIGNIFICANCE_LEVEL = 0.05


@dataclass
class PlannedRun:
    name: str
    variant: str
    config: RunConfig
    knobs: dict[str, Any] = field(default_factory=dict)
    train_size: int | str | None = None
    """The learning-curve size this run belongs to (compare.train_sizes), else None."""
    teacher: str | None = None
    """A distilled student's teacher run (same seed and size, compare.methods `distill:...`): the
    student starts once it finished ok, and fails unstarted when it did not."""
    teacher_variant: str | None = None


def method_knobs(cfg: RunConfig) -> dict[str, Any]:
    """The method-specific settings of a run: what may legitimately differ inside a comparison.

    `layer_lr_decay`: training applies it to every neural method, so it is recorded for every neural
    run that uses it (decay != 1), and always for `full` (its column was always there).
    """
    m = cfg.method
    method = registry.get(m.name)
    neural = method.neural
    knobs: dict[str, Any] = {"learning_rate": cfg.learning_rate} if "learning_rate" in method.tunable_knobs else {}
    if cfg.train.gradient_checkpointing:
        knobs["gradient_checkpointing"] = True
    if neural:
        knobs["pooling"] = m.pooling
    if method.uses_trainer and m.name != "full":
        knobs["head"] = m.head
    if m.name == "full" or (neural and m.layer_lr_decay != 1.0):
        knobs["layer_lr_decay"] = m.layer_lr_decay
    knobs.update(method.knob_values(m))
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
        if parse_distill_method(method) is not None:
            continue  # students come last, below
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
        # Sweeps of the training loop's knobs mean nothing for methods that fit themselves (embed, setfit).
        if registry.get(method).uses_trainer and c.gradient_checkpointing_variants:
            variants[f"{method}-gc"] = {"method.name": method, "train.gradient_checkpointing": True}
        if registry.get(method).uses_trainer:
            for lr in c.learning_rates:
                variants[f"{method}-lr{_format_lr(lr)}"] = {"method.name": method, "method.learning_rate": lr}
    variants = {
        name + llrd_suffix(o["method.name"], o.get("method.layer_lr_decay", base.method.layer_lr_decay)): o
        for name, o in variants.items()
    }
    # Students last, so that one at a time their teachers run first. Until expand_runs turns it into the
    # teacher run's folder, `distill.teacher` holds the teacher's variant name.
    for method in c.methods:
        if (spec := parse_distill_method(method)) is not None:
            teacher, layers = spec
            variants[distill_variant_name(teacher, layers)] = {
                "method.name": "full",
                "model": f"{base.model}{STUDENT_LAYERS}{layers}",
                "distill.teacher": teacher + llrd_suffix(teacher, base.method.layer_lr_decay),
            }
    if not c.models:
        return list(variants.items())
    # Model sweep: each neural variant once per model; the classical baseline has no encoder, so
    # running it per model would only repeat one run under several names.
    out = []
    for model, short in zip(c.models, short_model_names(c.models)):
        out += [
            (f"{short}-{name}", _on_model(overrides, model, short))
            for name, overrides in variants.items()
            if registry.get(overrides["method.name"]).neural
        ]
    out += [
        (name, overrides) for name, overrides in variants.items() if not registry.get(overrides["method.name"]).neural
    ]
    return out


STUDENT_LAYERS = ":layers="
"""A student's model is `<the comparison's model>:layers=K` (distill.parse_student: shrunk to K layers)."""


def distill_variant_name(teacher: str, layers: int) -> str:
    """The variant of compare.methods `distill:TEACHER->lK`: `distill-TEACHER-lK` (a folder name)."""
    return f"distill-{teacher}-l{layers}"


def _on_model(overrides: dict[str, Any], model: str, short: str) -> dict[str, Any]:
    """A variant's overrides on one model of a sweep; a student shrinks that model and learns from
    that model's teacher."""
    if "distill.teacher" not in overrides:
        return {**overrides, "model": model}
    layers = overrides["model"].rsplit(STUDENT_LAYERS, 1)[1]
    return {
        **overrides,
        "model": f"{model}{STUDENT_LAYERS}{layers}",
        "distill.teacher": f"{short}-{overrides['distill.teacher']}",
    }


def source_model(run: PlannedRun) -> str:
    """The model a run starts from: a student's before it is shrunk."""
    return run.config.model.rsplit(STUDENT_LAYERS, 1)[0] if run.teacher is not None else run.config.model


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


def expand_cells(base: RunConfig) -> list[tuple[str, dict[str, Any], int | str | None]]:
    """(name, overrides, train size) per variant and learning-curve size: `expand_variants` itself
    without compare.train_sizes, else every variant at every size, named `<variant>@<size>`."""
    sizes = base.compare.train_sizes
    if not sizes:
        return [(name, overrides, None) for name, overrides in expand_variants(base)]
    return [(f"{name}@{size}", overrides, size) for name, overrides in expand_variants(base) for size in sizes]


def base_variant(name: str) -> str:
    """A variant's name without its learning-curve size: `lora@500` -> `lora`."""
    return name.split("@", 1)[0]


def cell_config(base: RunConfig, overrides: dict[str, Any], size: int | str | None, seed: int) -> RunConfig:
    """One run's config: the variant's overrides, its training-set size and its seed."""
    cfg = base.override({**overrides, "train.seed": seed})
    if size is None:
        return cfg
    raw = cfg.to_dict()
    raw["data"]["train_subset"] = None if size == "all" else size  # override() skips None: set it here
    return RunConfig.from_dict(raw, "compare.train_sizes")


def expand_runs(base: RunConfig, selected: dict[str, dict[str, Any]] | None = None) -> list[PlannedRun]:
    """Every (variant, size, seed) run; `selected` holds the knob values a search chose per variant
    (compare --tune), which replace the method's defaults."""
    runs = []
    for (cell, overrides, size), seed in itertools.product(expand_cells(base), base.compare.seeds):
        tuned = {f"method.{knob}": value for knob, value in ((selected or {}).get(cell) or {}).items()}
        teacher = teacher_variant = None
        if "distill.teacher" in overrides:  # a student of this seed's (and size's) teacher run
            teacher_variant = overrides["distill.teacher"] + ("" if size is None else f"@{size}")
            teacher = f"{teacher_variant}-s{seed}"
            overrides = {**overrides, "distill.teacher": f"{RUNS_DIR}/{teacher}"}  # _run_one puts it in <out>
        cfg = cell_config(base, {**overrides, **tuned}, size, seed)
        runs.append(PlannedRun(f"{cell}-s{seed}", cell, cfg, method_knobs(cfg), size, teacher, teacher_variant))
    return runs


def scaffolding_config(cfg: RunConfig, model: str) -> RunConfig:
    """`cfg` as the scaffolding check sees it: a distilled student's model is its variant's own (a
    shrunk copy of `model`, the comparison's), so it is checked as if it were `model`."""
    return cfg.override({"model": model}) if cfg.distill.teacher is not None else cfg


def comparison_model(planned: list[PlannedRun]) -> str:
    """The comparison's model: that of its first run that is not a student (there is one: every
    student's teacher is a run of the comparison)."""
    return next((r.config.model for r in planned if r.teacher is None), planned[0].config.model)


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
    """The library versions a finished run recorded, with its code digest under SENTITUNE_CODE when it
    recorded one (runtime.compared_versions); None for a run that recorded no versions."""
    try:
        provenance = results.load_run(run_dir).metrics.get("provenance") or {}
    except results.RunFolderError:
        return None
    if not isinstance(provenance.get("versions"), dict):
        return None
    return compared_versions(provenance)


def check_versions(out: Path, planned: list[PlannedRun], allow_mix: bool) -> None:
    """Refuses, in one line, to add runs made with this environment's libraries to runs made with
    others: a version change can move accuracy and speed by more than the methods differ. The same
    for runs made by other sentitune code (runtime.code_digest): the fingerprint covers the config,
    not the code, so a changed algorithm would otherwise join an old comparison silently. A run that
    records no code digest (made before it existed) is not refused; version_mix names it."""
    if allow_mix:
        return
    here = package_versions(COMPARED_PACKAGES)
    our_code = code_digest()
    for run in planned:
        run_dir = out / RUNS_DIR / run.name
        if results.read_status(run_dir) != "ok":
            continue
        versions = run_versions(run_dir)
        if versions is None:
            continue
        differences = version_differences(versions, here)
        their_code = versions.get(SENTITUNE_CODE)
        if their_code is not None and their_code != our_code:
            raise ConfigError(
                f"{run_dir} was made by sentitune code {their_code}, this is sentitune code {our_code} "
                "(runtime.code_digest of the package's source); one comparison holds the code fixed: use "
                "another --output-dir, or --allow-version-mix (the results and the report then say which "
                "runs differ)"
            )
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
    model = comparison_model(planned)
    configs = {"this comparison": scaffolding_config(planned[0].config, model)}
    for folder in sorted((out / RUNS_DIR).glob("*")):
        if (folder / results.CONFIG_FILE).exists():
            configs[str(folder)] = scaffolding_config(RunConfig.from_yaml(folder / results.CONFIG_FILE), model)
    verify_same_scaffolding(configs)


# ---- running ----------------------------------------------------------------------------------


def _run_one(run: PlannedRun, out: Path) -> subprocess.Popen:
    config = run.config
    if run.teacher is not None:
        config = config.override({"distill.teacher": str(out / RUNS_DIR / run.teacher)})
    return _start_child(config, out / RUNS_DIR / run.name, out / LOGS_DIR / run.name)


def _fail_unstarted(run: PlannedRun, out: Path, error: str) -> None:
    """Records a run that cannot start (its teacher did not finish ok) as failed, in its own folder,
    so that the table says why and a re-run of the comparison retries it."""
    run_dir = out / RUNS_DIR / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run.config.override({"distill.teacher": str(out / RUNS_DIR / run.teacher)}) if run.teacher else run.config
    results.atomic_write_text(run_dir / results.CONFIG_FILE, config.to_yaml())
    results.atomic_write_json(run_dir / results.METRICS_FILE, {"status": "failed", "error": error})


def prepare_students(planned: list[PlannedRun], out: Path) -> None:
    """Shrinks each student model once, before any run starts (distill.student_folder, into the
    folder its children look in): a bad layer count is refused now, and students of several seeds
    running at once never write the same folder."""
    from sentitune.distill import student_folder

    for run in planned:
        if run.teacher is None:
            continue
        try:
            student_folder(run.config.model, out / RUNS_DIR / run.name)
        except ConfigError as exc:
            raise ConfigError(f"compare.methods: {run.variant}: {exc}") from None


def _start_child(config: RunConfig, run_dir: Path, log_stem: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`sentitune train` of `config` into `run_dir` in a child process; its config and console output
    go to `<log_stem>.config.yaml` and `<log_stem>.log`."""
    pending = log_stem.with_name(log_stem.name + ".config.yaml")
    results.atomic_write_text(pending, config.to_yaml())
    log = log_stem.with_name(log_stem.name + ".log").open("w", encoding="utf-8")
    # A fresh interpreter per run: its peak RSS is that run's own, and no state leaks between runs.
    command = [sys.executable, "-m", "sentitune", "train", "--config", str(pending), "--output-dir", str(run_dir)]
    command += list(extra)
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


def _run_to_end(process: subprocess.Popen, while_running: Callable[[], None] | None = None) -> int:
    """Waits for a child, calling `while_running` every 0.2 s; Ctrl-C, SIGTERM or a bug here ends it too."""
    try:
        if while_running is None:
            return process.wait()
        while process.poll() is None:
            while_running()
            time.sleep(0.2)
        return process.returncode
    except BaseException:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def search_storage(base: RunConfig, out: Path) -> str:
    return base.compare.tune_storage or f"sqlite:///{(out / SEARCH_DIR / 'optuna.db').resolve()}"


def study_name(cell: str, base: RunConfig, space: dict[str, list], sampler: str) -> str:
    """One study per variant, scaffolding and search space: a changed grid or dataset starts a new
    search instead of counting another's trials."""
    blob = json.dumps({"fingerprint": base.fingerprint(), "space": space, "sampler": sampler}, sort_keys=True)
    return f"{cell}:{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def run_searches(base: RunConfig, out: Path, echo=print, progress: Any = None) -> dict[str, dict[str, Any]]:
    """compare --tune: for every variant (and learning-curve size), `compare.tune_trials` trials of the
    tuned knobs, each a `train --selection-only` child that scores on the validation slice and never
    reads the test split. Returns (and writes to search/searches.json) each variant's search record.
    `progress` (LineProgress or the CLI's live display) shows each trial's steps as for the final runs."""
    c = base.compare
    (out / SEARCH_DIR).mkdir(parents=True, exist_ok=True)
    storage = search_storage(base, out)
    records: dict[str, dict[str, Any]] = {}
    for cell, overrides, size in expand_cells(base):
        if "distill.teacher" in overrides:
            records[cell] = {
                "budget": 0,
                "trials": [],
                "selected": None,
                "note": "a distilled student is not searched; it trains at full's defaults from its tuned teacher",
            }
            continue
        cfg = cell_config(base, overrides, size, c.seeds[0])
        space = tuning.search_space(cfg.method.name, cfg.learning_rate, c.tune, c.tune_trials)
        if not space:
            records[cell] = {
                "budget": 0,
                "trials": [],
                "selected": None,
                "note": f"{cfg.method.name} has none of the tuned knobs ({', '.join(c.tune)}); it runs at its "
                "defaults" + (" (it chooses its own C on the validation slice)" if cfg.method.name == "tfidf" else ""),
            }
            continue
        echo(f"search {cell}: {c.tune_trials} trials over {', '.join(space)} ({c.tune_sampler}; validation slice only)")

        def evaluate(number: int, params: dict[str, Any], cfg=cfg, cell=cell) -> tuning.TrialOutcome:
            trial_cfg = cfg.override({f"method.{knob}": value for knob, value in params.items()})
            run_dir = out / SEARCH_DIR / cell / f"trial-{number}"
            (out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
            started, wall_start = time.perf_counter(), time.time()
            log_stem = out / LOGS_DIR / f"search-{cell}-trial-{number}"
            label = f"{cell} trial {number}"
            watch = None if progress is None else lambda: progress.update(label, read_progress(run_dir, wall_start))
            code = _run_to_end(_start_child(trial_cfg, run_dir, log_stem, ("--selection-only",)), watch)
            if progress is not None:
                progress.finish(label, read_progress(run_dir, wall_start))
            _mark_if_killed(run_dir, code)
            try:
                metrics = results.load_run(run_dir).metrics
            except results.RunFolderError as exc:
                metrics = {"status": "failed", "error": str(exc)}
            value = metrics.get("validation_final_accuracy") if metrics.get("status") == "ok" else None
            shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
            took = time.perf_counter() - started
            outcome = f"validation accuracy {value:.4f}" if value is not None else f"failed: {metrics.get('error')}"
            echo(f"    trial {number} ({shown}): {outcome} ({took:.0f} s)")
            return tuning.TrialOutcome(
                value, metrics.get("status") or "failed", str(run_dir.relative_to(out)), metrics.get("error")
            )

        name = study_name(cell, base, space, c.tune_sampler)
        record = tuning.run_search(name, space, c.tune_trials, evaluate, storage, c.tune_sampler, c.seeds[0])
        records[cell] = record
        if record["selected"] is None:
            echo(f"    {cell}: every trial failed; it runs at its defaults")
        else:
            best = record["selected_validation_accuracy"]
            echo(f"    selected {record['selected']} (validation accuracy {best:.4f})")
        results.atomic_write_json(out / SEARCH_DIR / SEARCH_RECORD, records)
    results.atomic_write_json(out / SEARCH_DIR / SEARCH_RECORD, records)
    return records


def check_train_sizes(base: RunConfig) -> None:
    """ConfigError, before any run starts, for a learning-curve size the training split cannot give."""
    counts = [s for s in base.compare.train_sizes if s != "all"]
    if not counts:
        return
    raw = base.to_dict()
    raw["data"]["train_subset"] = None
    available = len(load_splits(RunConfig.from_dict(raw, "compare").data, with_test=False).train)
    too_big = [s for s in counts if s > available]
    if too_big:
        raise ConfigError(
            f"compare.train_sizes: {too_big[0]} is more than the {available} training examples left beside the "
            "validation slice; use a smaller size or 'all'"
        )


def check_finished_knobs(out: Path, planned: list[PlannedRun]) -> None:
    """Refuses to reuse a finished run whose method settings are not the ones planned now (a search
    that selected other values, or a changed default): its figures would be another variant's."""
    for run in planned:
        run_dir = out / RUNS_DIR / run.name
        if results.read_status(run_dir) != "ok" or not (run_dir / results.CONFIG_FILE).exists():
            continue
        saved = RunConfig.from_yaml(run_dir / results.CONFIG_FILE)
        differences = scaffolding_differences(saved.to_dict()["method"], run.config.to_dict()["method"], "method.")
        if differences:
            raise ConfigError(
                f"{run_dir} finished with other method settings than planned now ({differences[0]}); "
                "use another --output-dir, or remove that run to redo it"
            )


def run_comparison(
    base: RunConfig,
    out: str | Path,
    parallel: int = 1,
    echo=print,
    allow_version_mix: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """Runs every planned run not finished yet, then writes and returns the results. Finished runs
    made with other versions of the compared libraries are refused unless `allow_version_mix`.
    `progress` (a LineProgress, or anything with its `update` and `finish`) hears each running
    child's progress.json a few times a second; None: only the echo lines."""
    out = Path(out)
    results.check_output_path(out, "--output-dir")
    # An earlier comparison is resumed; any other folder must not hold a file compare writes at its top
    # (below it, logs/ and runs/ get names of compare's own making).
    results.check_foreign_files(
        out,
        (RESULTS_CSV, RESULTS_JSON, BASE_CONFIG),
        ours=(out / BASE_CONFIG).is_file() or (out / RESULTS_JSON).is_file(),
    )
    planned = expand_runs(base)
    # A missing model fails every run of its variants; say so once, before anything starts.
    for model in dict.fromkeys(source_model(r) for r in planned if registry.get(r.config.method.name).neural):
        resolve_model(model)
    check_eval_files(base)  # a bad --eval-file is refused now, not after hours of training
    check_train_sizes(base)
    names = [name for name, _ in expand_variants(base)]
    if base.compare.reference and base.compare.reference not in names:
        raise ConfigError(f"compare.reference: {base.compare.reference!r} is not a variant here ({', '.join(names)})")
    (out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    _check_existing(out, planned)
    check_versions(out, planned, allow_version_mix)
    prepare_students(planned, out)
    results.atomic_write_text(out / BASE_CONFIG, base.to_yaml())
    if base.compare.tune:
        searches = run_searches(base, out, echo, progress)
        planned = expand_runs(base, {cell: record["selected"] for cell, record in searches.items()})
    check_finished_knobs(out, planned)
    todo = [r for r in planned if results.read_status(out / RUNS_DIR / r.name) != "ok"]
    done = len(planned) - len(todo)
    if done:
        echo(f"{done} of {len(planned)} runs already finished in {out}; running the other {len(todo)}")
    if parallel > 1:
        echo(f"warning: {parallel} runs at once share the CPU cores; speed and memory figures will be distorted")
    running: list[tuple[PlannedRun, subprocess.Popen, float, float]] = []
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

    def next_run() -> PlannedRun | None:
        """The first queued run that may start: a student only once its teacher is neither queued nor running."""
        waiting = {r.name for r in queue} | {r.name for r, *_ in running}
        for i, run in enumerate(queue):
            if run.teacher is None or run.teacher not in waiting:
                return queue.pop(i)
        return None

    def teacher_failed(run: PlannedRun) -> bool:
        if run.teacher is None or results.read_status(out / RUNS_DIR / run.teacher) == "ok":
            return False
        _fail_unstarted(run, out, f"its teacher {run.teacher} did not finish ok (see its row); not started")
        echo(f"    {run.name}: failed: its teacher {run.teacher} did not finish ok; not started")
        write_results(out, planned)
        return True

    def terminate(*_) -> None:
        raise SystemExit(128 + signal.SIGTERM)

    handler = None
    if threading.current_thread() is threading.main_thread():
        handler = signal.signal(signal.SIGTERM, terminate)  # SIGTERM ends the children too (below)
    try:
        while queue or running:
            while queue and len(running) < parallel:
                run = next_run()
                if run is None:
                    break  # every queued run waits for a teacher that is running
                if held_by_other(run) or teacher_failed(run):
                    done += 1
                    continue
                echo(f"[{done + len(running) + 1}/{len(planned)}] {run.name}: training ...")
                running.append((run, _run_one(run, out), time.perf_counter(), time.time()))
            time.sleep(0.2)
            for item in list(running):
                run, process, started, wall_start = item
                if process.poll() is None:
                    if progress is not None:
                        progress.update(run.name, read_progress(out / RUNS_DIR / run.name, wall_start))
                    continue
                running.remove(item)
                if progress is not None:
                    progress.finish(run.name, read_progress(out / RUNS_DIR / run.name, wall_start))
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
        for _, process, _, _ in running:
            process.terminate()
        for _, process, _, _ in running:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
    score_eval_sets(out, planned, echo)
    document = write_results(out, planned)
    for row in document["runs"]:
        if row["run_name"] in in_use:
            row.update(status="failed", error=in_use[row["run_name"]])
    return document


PROGRESS_EVERY_S = 30.0


def read_progress(run_dir: Path, since: float = 0.0) -> dict[str, Any] | None:
    """A run's progress.json when written at or after `since` (Unix time): None when there is none yet,
    or only one left by an earlier attempt."""
    try:
        record = json.loads((run_dir / results.PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("updated"), (int, float)):
        return None
    return record if record["updated"] >= since else None


def format_seconds(seconds: float | None) -> str:
    """72 -> '1m12s', 3725 -> '1h02m', None -> '?'."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(int(round(seconds)), 0)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(name: str, record: dict[str, Any]) -> str:
    """`    lora-s1: step 40/120 (33%), loss 0.5120, 85.3 samples/s, ETA 1m12s`"""
    step, total = record.get("step") or 0, record.get("max_steps") or 0
    parts = [f"step {step}/{total}" + (f" ({100 * step // total}%)" if total else "")]
    if record.get("loss") is not None:
        parts.append(f"loss {record['loss']:.4f}")
    if record.get("samples_per_second"):
        parts.append(f"{record['samples_per_second']:.1f} samples/s")
    parts.append(f"ETA {format_seconds(record.get('eta_s'))}" if step < total else "training done")
    return f"    {name}: {', '.join(parts)}"


class LineProgress:
    """Progress as plain lines, for output that is not a terminal (a log file, CI): a run's first
    progress, then one line every `every_s` seconds; a run that ends before any was shown gets its
    last one."""

    def __init__(self, echo=print, every_s: float = PROGRESS_EVERY_S, clock=time.monotonic):
        self.echo, self.every_s, self.clock = echo, every_s, clock
        self._shown: dict[str, float] = {}

    def update(self, name: str, record: dict[str, Any] | None) -> None:
        if record is None:
            return
        last = self._shown.get(name)
        if last is None or self.clock() - last >= self.every_s:
            self.echo(progress_line(name, record))
            self._shown[name] = self.clock()

    def finish(self, name: str, record: dict[str, Any] | None) -> None:
        if name not in self._shown and record is not None:
            self.echo(progress_line(name, record))
        self._shown.pop(name, None)


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
        "base_variant": base_variant(run.variant),
        "train_size": run.train_size,
        "model": run.config.model,
        "method": run.config.method.name,
        "seed": run.config.train.seed,
        "status": "not started",
        **run.knobs,
    }
    if run.teacher_variant is not None:
        # with the agreement the student's metrics.json records (teacher_agreement, teacher_mcnemar_p_value)
        row["teacher_variant"] = run.teacher_variant
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
            "base_variant": base_variant(variant),
            "train_size": group[0].get("train_size"),
            "train_examples": ok[0].get("train_examples") if ok else None,
            "model": group[0].get("model"),
            "method": group[0]["method"],
            "n_runs": len(group),
            "n_seeds": len(ok),
            **{k: v for k, v in group[0].items() if k in method_knobs_keys(group[0])},
        }
        if ok:
            accuracies = [r["test_accuracy"] for r in ok]
            stats = seed_summary(accuracies, _correctness(out, ok[0]) if len(set(accuracies)) == 1 else [])
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
                # calibration: test ECE before and after the temperature fitted on validation (NaN for
                # runs made before temperature scaling)
                "temperature",
                "test_ece_uncalibrated",
                "test_ece_calibrated",
            ):
                entry[f"{key}_mean"] = finite_mean([r.get(key) for r in ok])
            for key in ("params_trainable", "params_total", "params_trainable_percent"):
                entry[key] = ok[0].get(key)
        summary.append(entry)
    return summary


def method_knobs_keys(row: dict[str, Any]) -> list[str]:
    """The knob columns of a result row: the shared ones, then every registered method's own."""
    shared = ("learning_rate", "gradient_checkpointing", "layer_lr_decay", "head", "pooling")
    own = dict.fromkeys(knob for name in registry.names() for knob in registry.get(name).recorded_knobs)
    return [k for k in (*shared, *own) if k in row]


def size_order(size: int | str | None) -> float:
    """Sort key of a learning-curve size: counts ascending, `all` last."""
    return math.inf if size in ("all", None) else float(size)


def reference_variants(rows: list[dict[str, Any]], configured: str | None = None) -> dict[Any, str | None]:
    """Per learning-curve size (the key None without one): the variant the `*_vs_reference` statistics
    are taken against. `configured` (compare.reference), else "full", when it has a finished run at that
    size; else the first variant with one (None when no run there finished)."""
    references = {}
    for size in dict.fromkeys(r.get("train_size") for r in rows):
        finished = [r for r in rows if r["status"] == "ok" and r.get("train_size") == size]
        variants = list(dict.fromkeys(r["variant"] for r in finished))
        by_base = {base_variant(v): v for v in variants}
        references[size] = by_base.get(configured or "full") or (variants[0] if variants else None)
    return references


def reference_variant(rows: list[dict[str, Any]], configured: str | None = None) -> str | None:
    """The reference variant (reference_variants); with a learning curve, the one at the largest size."""
    references = reference_variants(rows, configured)
    return references[max(references, key=size_order)] if references else None


def pairwise_tests(out: Path, rows: list[dict[str, Any]], configured_reference: str | None = None) -> list[dict]:
    """One paired test per pair of variants over all their shared seeds (metrics.paired_seed_test:
    exact McNemar on discordant counts pooled over seeds, paired bootstrap CI of the difference).
    With a learning curve, only variants trained on the same number of examples are paired.

    Every entry carries `p_holm` (Holm over all the pairs here) and `significant` = p_holm < 0.05;
    pairs that involve their size's reference variant (reference_variants) also carry
    `p_holm_vs_reference` (Holm over those pairs only), the others None.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    size_of = {r["variant"]: r.get("train_size") for r in ok}
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
        if not seeds or size_of[a] != size_of[b]:
            continue
        ca = np.stack([correctness(a, seed) for seed in seeds])
        cb = np.stack([correctness(b, seed) for seed in seeds])
        test = paired_seed_test(ca, cb)
        # paired_seed_test's discordant counts b, c get mcnemar's names: "a" and "b" name the variants here
        discordant = {"a_only_correct": test.pop("b"), "b_only_correct": test.pop("c")}
        tests.append({"a": a, "b": b, "train_size": size_of[a], "seeds": seeds, **test, **discordant})
    references = reference_variants(rows, configured_reference)
    against = [i for i, t in enumerate(tests) if references.get(t["train_size"]) in (t["a"], t["b"])]
    vs_reference = dict(zip(against, holm([tests[i]["p_value"] for i in against])))
    for i, (test, p_holm) in enumerate(zip(tests, holm([t["p_value"] for t in tests]))):
        test.update(
            p_holm=p_holm,
            p_holm_vs_reference=vs_reference.get(i),
            significant=is_significant(
                p_holm, test["difference_ci95_low"], test["difference_ci95_high"], SIGNIFICANCE_LEVEL
            ),
        )
    return tests


def write_results(out: Path, planned: list[PlannedRun]) -> dict[str, Any]:
    rows = [_row(out, run) for run in planned]
    configured = planned[0].config.compare.reference
    pairwise = pairwise_tests(out, rows, configured)
    summary = summarize(out, rows)
    reference_config = scaffolding_config(planned[0].config, comparison_model(planned))
    document = {
        "fingerprint": reference_config.fingerprint(),
        "scaffolding": reference_config.scaffolding(),
        "runs": rows,
        "summary": summary,
        "reference": reference_variant(rows, configured),
        "references_by_train_size": {str(k): v for k, v in reference_variants(rows, configured).items()},
        "search": _read_searches(out),
        # The curve's reference is the comparison's (reference_variant's fallback included), by base name.
        "learning_curve": learning_curve(summary, base_variant(reference_variant(rows, configured) or "full")),
        "recommendation": recommend(
            summary, pairwise, {name: getattr(planned[0].config.compare, name) for name in BUDGETS}
        ),
        "pairwise": pairwise,
        "multiplicity": {
            "method": "holm",
            "tests": len(pairwise),
            "tests_vs_reference": sum(t["p_holm_vs_reference"] is not None for t in pairwise),
        },
        "significance_level": SIGNIFICANCE_LEVEL,
        "version_mix": version_mix(out, rows),
    }
    references = reference_variants(rows, configured)
    document["eval_sets"] = eval_set_statistics(out, rows, eval_sets(planned[0].config), references)
    results.atomic_write_json(out / RESULTS_JSON, document)
    results.atomic_write_csv(out / RESULTS_CSV, rows)
    return document


BUDGETS = {
    # budget field -> (summary field, True when the budget is an upper limit, unit, scale to the unit)
    "max_train_memory_mib": ("peak_memory_mib_mean", True, "MiB peak training memory", 1.0),
    "min_inference_sentences_per_s": ("eval_samples_per_second_mean", False, "sentences/s at test", 1.0),
    "max_checkpoint_mib": ("checkpoint_size_mib_mean", True, "MiB checkpoint", 1.0),
    "max_train_minutes": ("train_runtime_seconds_mean", True, "training minutes", 1 / 60),
}
PARETO_AXES = {
    "peak_memory_mib_mean": False,
    "train_runtime_seconds_mean": False,
    "eval_samples_per_second_mean": True,
}
"""Cost axes of the Pareto front, each against test accuracy; True where larger is better."""


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and value is not None else math.nan


def _test_between(pairwise: list[dict], a: str, b: str) -> dict | None:
    """The paired test of a against b (difference = a - b), whichever order compare ran it in."""
    for t in pairwise:
        if (t["a"], t["b"]) == (a, b):
            return t
        if (t["a"], t["b"]) == (b, a):
            low, high = -t["difference_ci95_high"], -t["difference_ci95_low"]
            return {**t, "a": a, "b": b, "difference": -t["difference"], "difference_ci95_low": low,
                    "difference_ci95_high": high}  # fmt: skip
    return None


def recommend(summary: list[dict], pairwise: list[dict], budgets: dict[str, float | None]) -> dict[str, Any]:
    """The Pareto-optimal variants and the one recommended under `budgets` (BUDGETS' fields; None = no
    limit), at the largest training-set size, with the sentence that justifies it.

    Among the variants within budget, the most accurate one and every variant not significantly less
    accurate than it (Holm-corrected paired test) are the contenders; the cheapest contender (peak
    training memory, then training time) is recommended. So when no variant is significantly more
    accurate, the cheapest wins, and the sentence says why.
    """
    sizes = [e.get("train_size") for e in summary if e.get("n_seeds")]
    largest = max(sizes, key=size_order) if sizes else None
    done = [e for e in summary if e.get("n_seeds") and e.get("train_size") == largest]
    given = {k: v for k, v in budgets.items() if v is not None}
    document: dict[str, Any] = {"budgets": given, "train_size": largest, "recommended": None}
    if not done:
        return {**document, "pareto_optimal": [], "frontiers": {}, "reason": "no variant finished"}
    accuracy = [e["test_accuracy_mean"] for e in done]
    costs = {axis: [_number(e.get(axis)) for e in done] for axis in PARETO_AXES}
    joint = pareto_front(
        [(a, *(costs[axis][i] for axis in PARETO_AXES)) for i, a in enumerate(accuracy)],
        (True, *PARETO_AXES.values()),
    )
    document["pareto_optimal"] = [done[i]["variant"] for i in joint]
    document["frontiers"] = {
        axis: [done[i]["variant"] for i in pareto_front(list(zip(accuracy, costs[axis])), (True, up))]
        for axis, up in PARETO_AXES.items()
    }

    def violation(entry: dict) -> float:
        """0 within every budget, else the largest relative overshoot (a missing measurement: inf)."""
        worst = 0.0
        for name, limit in given.items():
            field, upper, _, _ = BUDGETS[name]
            value = _number(entry.get(field)) * BUDGETS[name][3]
            if math.isnan(value):
                return math.inf
            worst = max(worst, (value - limit) / limit if upper else (limit - value) / limit)
        return worst

    feasible = [e for e in done if violation(e) <= 0]
    if not feasible:
        closest = min(done, key=violation)
        misses = []
        for name, limit in given.items():
            field, upper, unit, scale = BUDGETS[name]
            value = _number(closest.get(field)) * scale
            if math.isnan(value) or (value > limit if upper else value < limit):
                misses.append(f"{value:,.1f} {unit} against {'at most' if upper else 'at least'} {limit:,g}")
        document.update(
            closest=closest["variant"],
            reason=f"no variant meets the budgets; the closest is {closest['variant']} ({'; '.join(misses)})",
        )
        return document
    top = max(feasible, key=lambda e: e["test_accuracy_mean"])
    contenders = [top]
    for e in feasible:
        test = _test_between(pairwise, e["variant"], top["variant"]) if e is not top else None
        if test is not None and not test["significant"]:
            contenders.append(e)

    def cost(e: dict) -> tuple[float, float]:
        memory, seconds = _number(e.get("peak_memory_mib_mean")), _number(e.get("train_runtime_seconds_mean"))
        return (math.inf if math.isnan(memory) else memory, math.inf if math.isnan(seconds) else seconds)

    chosen = min(contenders, key=cost)
    document["recommended"] = chosen["variant"]
    document["contenders"] = [e["variant"] for e in contenders]
    within = f" within the budgets ({', '.join(given)})" if given else ""
    if chosen is top:
        others = [e for e in feasible if e is not top]
        if not others:
            reason = f"{top['variant']}: the only variant{within}"
        elif len(contenders) == 1:
            runner = max(others, key=lambda e: e["test_accuracy_mean"])
            test = _test_between(pairwise, top["variant"], runner["variant"])
            evidence = (
                f" [CI {100 * test['difference_ci95_low']:+.1f}, {100 * test['difference_ci95_high']:+.1f}], "
                f"Holm p = {test['p_holm']:.3g}"
                if test
                else ""
            )
            reason = (
                f"{top['variant']}: significantly more accurate than every other variant{within}, "
                f"{100 * (top['test_accuracy_mean'] - runner['test_accuracy_mean']):+.1f} points over "
                f"{runner['variant']}{evidence}"
            )
        else:
            close = []
            for e in contenders[1:]:
                test = _test_between(pairwise, e["variant"], top["variant"])
                low, high = 100 * test["difference_ci95_low"], 100 * test["difference_ci95_high"]
                close.append(
                    f"{e['variant']} {100 * test['difference']:+.1f} points [CI {low:+.1f}, {high:+.1f}], "
                    f"Holm p = {test['p_holm']:.3g}"
                )
            reason = (
                f"{top['variant']}: the most accurate{within} and also the cheapest of the variants not "
                f"significantly less accurate than it ({'; '.join(close)}: not significant)"
            )
    else:
        test = _test_between(pairwise, chosen["variant"], top["variant"])
        savings = []
        for field, label in (("peak_memory_mib_mean", "peak memory"), ("train_runtime_seconds_mean", "training time")):
            mine, theirs = _number(chosen.get(field)), _number(top.get(field))
            if theirs > 0 and mine < theirs:
                savings.append(f"{100 * (1 - mine / theirs):.0f}% less {label}")
        reason = (
            f"{chosen['variant']}: within {100 * (top['test_accuracy_mean'] - chosen['test_accuracy_mean']):.1f} "
            f"points of {top['variant']} [CI of the difference {100 * test['difference_ci95_low']:+.1f}, "
            f"{100 * test['difference_ci95_high']:+.1f}], Holm p = {test['p_holm']:.3g} (not significant), "
            f"with {' and '.join(savings) or 'no higher cost'}; no variant{within} is significantly more accurate, "
            "so the cheapest of them is recommended"
        )
    document["reason"] = reason
    return document


def _read_searches(out: Path) -> dict[str, Any]:
    """The search record of every tuned variant (run_searches), {} without --tune."""
    path = out / SEARCH_DIR / SEARCH_RECORD
    return results.read_json(path, dict) if path.is_file() else {}


LEARNING_CURVE_POINTS = 1.0
"""How close (accuracy points) a method must come to the reference for learning_curve's `within_reference_from`."""


def learning_curve(
    summary: list[dict[str, Any]], reference: str, within_points: float = LEARNING_CURVE_POINTS
) -> dict[str, Any]:
    """Per base variant: its test accuracy (mean and CI) at each training-set size, and the smallest size
    from which its mean stays within `within_points` of the reference's mean: at that size and at every
    larger one (None: never). A variant that is close at a small size and falls behind at a larger one
    has not "caught up", so it gets no size. Empty without compare.train_sizes.

    Example:
        >>> rows = [{"variant": f"{v}@{n}", "train_size": n, "n_seeds": 1, "test_accuracy_mean": a,
        ...          "test_accuracy_ci95_low": a - .01, "test_accuracy_ci95_high": a + .01}
        ...         for v, n, a in [("full", 500, .80), ("lora", 500, .70), ("full", 2000, .85), ("lora", 2000, .845)]]
        >>> learning_curve(rows, "full")["lora"]["within_reference_from"]
        2000
        >>> rows[1]["test_accuracy_mean"], rows[3]["test_accuracy_mean"] = .80, .80  # close at 500, not at 2000
        >>> learning_curve(rows, "full")["lora"]["within_reference_from"] is None
        True
    """
    curve: dict[str, Any] = {}
    done = [e for e in summary if e.get("train_size") is not None and e.get("n_seeds")]
    reference_at = {e["train_size"]: e["test_accuracy_mean"] for e in done if base_variant(e["variant"]) == reference}
    for entry in sorted(done, key=lambda e: size_order(e["train_size"])):
        name = base_variant(entry["variant"])
        point = {
            "train_size": entry["train_size"],
            "train_examples": entry.get("train_examples"),
            "test_accuracy_mean": entry["test_accuracy_mean"],
            "test_accuracy_ci95_low": entry["test_accuracy_ci95_low"],
            "test_accuracy_ci95_high": entry["test_accuracy_ci95_high"],
        }
        line = curve.setdefault(name, {"points": [], "within_reference_from": None, "reference": reference})
        line["points"].append(point)
        reference_mean = reference_at.get(entry["train_size"])
        if reference_mean is None:
            continue
        if 100 * (reference_mean - entry["test_accuracy_mean"]) <= within_points:
            if line["within_reference_from"] is None:
                line["within_reference_from"] = entry["train_size"]
        else:
            line["within_reference_from"] = None  # fell behind again at a larger size
    return curve


# ---- extra eval sets: the shipped suites and --eval-file ------------------------------------------


@dataclass(frozen=True)
class EvalSet:
    """A labelled file every finished run of a comparison is scored on, besides its test split."""

    name: str
    path: Path
    builtin: bool
    """A suite shipped with sentitune (config.SUITE_DIR); scored only on negative/positive runs."""
    text_column: str | None = None
    label_column: str | None = None


SUITE_LABELS = ["negative", "positive"]
"""The label names the shipped suites use; runs with other labels are not scored on them."""


def eval_sets(base: RunConfig) -> list[EvalSet]:
    """The shipped suites (compare.suites), then the user's files (compare.eval_files), in that order.

    Example:
        >>> [s.name for s in eval_sets(RunConfig())]
        ['negation']
    """
    c = base.compare
    out = [EvalSet(name, SUITE_DIR / f"{name}.tsv", True) for name in c.suites]
    out += [
        EvalSet(name, Path(path), False, c.eval_text_column, c.eval_label_column) for name, path in c.eval_files.items()
    ]
    return out


def check_eval_files(base: RunConfig) -> None:
    """Before any run starts: every --eval-file reads, has its columns and holds only labels the runs
    will have (the training data's label names). Each failure is one DataError line naming the file,
    and for a label, the line and the label."""
    from sentitune.data import load_splits, read_labelled_file

    given = [s for s in eval_sets(base) if not s.builtin]
    if not given:
        return
    if base.data.problem_type == "multi_label":
        raise ConfigError(
            f"compare.eval_files: {given[0].name} cannot be scored: eval sets score single-label runs, "
            "and this comparison's data is multi_label"
        )
    label_names = load_splits(base.data).label_names
    for s in given:
        read_labelled_file(s.path, label_names, s.text_column, s.label_column)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scored(folder: Path, digest: str) -> bool:
    """Whether `folder` holds a finished scoring of the file whose SHA-256 is `digest`."""
    try:
        metrics = results.read_json(folder / results.METRICS_FILE, dict)
    except results.RunFolderError:
        return False
    return (
        metrics.get("status") == "ok"
        and metrics.get("data_sha256") == digest
        and (folder / results.PREDICTIONS_FILE).is_file()
    )


def score_eval_sets(out: Path, planned: list[PlannedRun], echo=print) -> None:
    """Scores every finished run on every eval set into <run>/evaluations/<set>/ (predictions.csv,
    metrics.json; inference.write_scored_file). A run already scored on the same file content (its
    SHA-256) is skipped, so re-running a comparison scores only what is new."""
    sets = eval_sets(planned[0].config)
    if not sets:
        return
    digests = {s.name: _sha256(s.path) for s in sets}
    from sentitune.inference import Predictor, score_labelled_file, write_scored_file

    for run in planned:
        run_dir = out / RUNS_DIR / run.name
        if results.read_status(run_dir) != "ok" or run.config.data.problem_type == "multi_label":
            continue
        todo = [s for s in sets if not _scored(run_dir / results.EVALUATIONS_DIR / s.name, digests[s.name])]
        if not todo:
            continue
        try:
            # fp32: the eval sets are scored alike on every machine (auto would pick bf16 where CPUs have it).
            predictor = Predictor.load(run_dir, precision="fp32")
        except results.RunFolderError as exc:
            echo(f"    {run.name}: not scored on the eval sets: {exc}")
            continue
        scored = []
        for s in todo:
            if s.builtin and sorted(predictor.label_names) != SUITE_LABELS:
                continue  # a negation suite says nothing about star ratings or topics
            texts, gold, probabilities, metrics = score_labelled_file(predictor, s.path, s.text_column, s.label_column)
            metrics.update(run=str(run_dir), eval_set=s.name)
            folder = run_dir / results.EVALUATIONS_DIR / s.name
            with results.writing(folder):
                folder.mkdir(parents=True, exist_ok=True)
            with results.exclusive_lock(folder):
                write_scored_file(folder, texts, gold, probabilities, predictor.label_names, metrics)
            scored.append(f"{s.name} {metrics['test_accuracy']:.4f}")
        if scored:
            echo(f"    {run.name}: eval sets: {', '.join(scored)}")
        del predictor


def eval_set_statistics(
    out: Path, rows: list[dict[str, Any]], sets: list[EvalSet], references: dict[Any, str | None]
) -> dict:
    """Per eval set: each variant's accuracy over its seeds (metrics.seed_summary: t-interval over
    seeds, bootstrap over the set's examples with one seed) and mean ECE, and one paired test of every
    variant against the reference of its own training-set size (`references`: train size -> variant,
    as reference_variants gives them; the key None without a learning curve) over their shared seeds
    (metrics.paired_seed_test), Holm-corrected over that set's tests (`p_holm`; significant = p_holm < 0.05).

    Only scorings of the file as it is now count (their recorded SHA-256 matches); a run not scored
    on a set (a suite on runs with other labels, a run that failed) is left out of that set.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    document: dict[str, Any] = {}
    for s in sets:
        digest = _sha256(s.path) if s.path.is_file() else None
        correct: dict[tuple[str, Any], np.ndarray] = {}
        ece: dict[str, list[float]] = {}
        for row in ok:
            folder = out / row["run_dir"] / results.EVALUATIONS_DIR / s.name
            if digest is None or not _scored(folder, digest):
                continue
            correct[(row["variant"], row["seed"])] = results.load_predictions(folder).correct
            metrics = results.read_json(folder / results.METRICS_FILE, dict)
            ece.setdefault(row["variant"], []).append(metrics.get("test_ece"))
        variants: dict[str, Any] = {}
        for variant in dict.fromkeys(r["variant"] for r in ok):
            seeds = [seed for v, seed in correct if v == variant]
            if not seeds:
                continue
            accuracies = [float(correct[(variant, seed)].mean()) for seed in seeds]
            stats = seed_summary(accuracies, correct[(variant, seeds[0])] if len(set(accuracies)) == 1 else [])
            variants[variant] = {"seeds": seeds, **stats, "ece_mean": finite_mean(ece.get(variant, []))}
        size_of = {r["variant"]: r.get("train_size") for r in ok}
        tests = []
        for variant in variants:
            reference = references.get(size_of[variant])
            if reference is None or variant == reference or reference not in variants:
                continue
            seeds = [seed for seed in variants[variant]["seeds"] if seed in variants[reference]["seeds"]]
            if not seeds:
                continue
            test = paired_seed_test(
                np.stack([correct[(variant, seed)] for seed in seeds]),
                np.stack([correct[(reference, seed)] for seed in seeds]),
            )
            discordant = {"a_only_correct": test.pop("b"), "b_only_correct": test.pop("c")}
            tests.append(
                {"a": variant, "b": reference, "train_size": size_of[variant], "seeds": seeds, **test, **discordant}
            )
        for test, p_holm in zip(tests, holm([t["p_value"] for t in tests])):
            test.update(
                p_holm=p_holm,
                significant=is_significant(
                    p_holm, test["difference_ci95_low"], test["difference_ci95_high"], SIGNIFICANCE_LEVEL
                ),
            )
        examples = next(iter(correct.values())).size if correct else 0
        document[s.name] = {
            "file": str(s.path),
            "builtin": s.builtin,
            "examples": int(examples),
            # the reference at the largest size, as results.json's own `reference`
            "reference": references[max(references, key=size_order)] if references else None,
            "references_by_train_size": {str(k): v for k, v in references.items()},
            "variants": variants,
            "pairwise_vs_reference": tests,
            "multiplicity": {"method": "holm", "tests": len(tests)},
        }
    return document
