"""The report: a tiny real comparison folder (2 methods x 2 seeds, a LoRA rank point, one failed run)
rendered to Markdown and self-contained HTML, then opened in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sentitune.reporting.render import build_report, tradeoff_statements, write_report
from sentitune.results import RunFolderError


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.fixture(scope="module")
def comparison(tiny_model_dir, tiny_data, tmp_path_factory):
    """A comparison folder in compare's own format: runs/<variant>-s<seed>/ plus results.json/csv."""
    from sentitune import compare
    from sentitune.cli import main
    from sentitune.config import RunConfig
    from sentitune.training import train

    out = tmp_path_factory.mktemp("comparison")
    base = RunConfig.from_dict(
        {
            "model": str(tiny_model_dir),
            "data": {
                "dataset": "files",
                "train_file": str(tiny_data["train"]),
                "test_file": str(tiny_data["test"]),
                "validation_size": 16,
                "max_length": 32,
            },
            "train": {
                "max_steps": 3,
                "batch_size": 8,
                "eval_batch_size": 16,
                "logging_steps": 1,
                "eval_strategy": "no",
                "warmup_steps_excluded_from_throughput": 1,
            },
        }
    )
    planned = []
    # full has one seed (its runs are the slow ones); lora's two seeds exercise the seed statistics.
    for variant, overrides, seeds in (
        ("full", {"method.name": "full"}, (1,)),
        ("lora", {"method.name": "lora"}, (1, 2)),
        ("lora-r2", {"method.name": "lora", "method.lora_r": 2}, (1,)),
    ):
        for seed in seeds:
            cfg = base.override({**overrides, "train.seed": seed})
            run = compare.PlannedRun(f"{variant}-s{seed}", variant, cfg, compare.method_knobs(cfg))
            train(cfg, out / "runs" / run.name)
            planned.append(run)
    # A run that crashed: it stays in the table, marked as failed.
    cfg = base.override({"method.name": "head", "train.seed": 1})
    failed = out / "runs" / "head-s1"
    failed.mkdir(parents=True)
    (failed / "config.yaml").write_text(cfg.to_yaml())
    (failed / "metrics.json").write_text(json.dumps({"status": "failed", "error": "TrainingError: loss became nan"}))
    planned.append(compare.PlannedRun("head-s1", "head", cfg, compare.method_knobs(cfg)))
    compare.score_eval_sets(out, planned, echo=lambda *_: None)  # the shipped negation suite, as compare does
    compare.write_results(out, planned)
    assert main(["analyze", str(out / "runs" / "lora-s1")]) == 0  # an analysis the report should pick up
    return out


@pytest.fixture(scope="module")
def built(comparison):
    md_path, html_path = build_report(comparison)
    return comparison, md_path, html_path


def test_markdown_has_every_section_and_the_failed_run(built):
    folder, md_path, _ = built
    text = md_path.read_text(encoding="utf-8")
    headings = ("Setup", "Results", "Tradeoffs", "Recommendation", "Slices", "Negation probe", "Figures")
    for heading in headings:
        assert f"## {heading}\n" in text, heading
    assert "## Learning curve" not in text and "## Hyperparameter search" not in text  # neither was run
    table = text.split("## Results", 1)[1].split("## Tradeoffs", 1)[0]
    for variant in ("| full |", "| lora |", "| lora-r2 |", "| head |"):
        assert variant in table, variant
    assert "| lora | lora | 2/2 |" in table and "| 0/1 | failed |" in table and "loss became nan" in table
    assert "| lora-s1 | lora |" in text  # the probe row from runs/lora-s1/analysis
    for name in ("accuracy_vs_params", "memory", "throughput", "curves", "confusion", "slices", "lora_rank", "pareto"):
        assert f"](report_files/{name}.png)" in text, name
        assert (folder / "report_files" / f"{name}.png").stat().st_size > 2000, name


def test_tradeoffs_are_generated_from_the_run_folders(built):
    folder, md_path, _ = built
    text = md_path.read_text(encoding="utf-8")
    section = text.split("## Tradeoffs", 1)[1].split("\n## ", 1)[0]
    lora = json.loads((folder / "runs" / "lora-s1" / "metrics.json").read_text())
    full = json.loads((folder / "runs" / "full-s1" / "metrics.json").read_text())
    statement = next(line for line in section.splitlines() if line.startswith("- lora trains"))
    assert f"{lora['params_trainable_percent']:.3g}% of parameters" in statement
    assert f"({lora['params_trainable']:,} vs {full['params_trainable']:,} for full)" in statement
    lora_accuracies = [
        json.loads((folder / "runs" / f"lora-s{s}" / "metrics.json").read_text())["test_accuracy"] for s in (1, 2)
    ]
    lora_mean = np.mean(lora_accuracies)
    assert f"({100 * lora_mean:.1f}% vs {100 * full['test_accuracy']:.1f}%" in statement
    assert "per training step" in statement and "McNemar p = " in statement
    assert "significant" in statement and "(seed" not in statement  # one shared seed: a single p-value
    # lora and lora-r2 against full: a family of 2 overall tests, Holm-corrected
    assert ", Holm p = " in statement and " over 2 tests, " in statement and "over 1 seeds" not in statement
    assert "after Holm correction over 2 tests" in section
    lora_ci = "t over 2 seeds" if len({round(a, 12) for a in lora_accuracies}) == 2 else "all 2 seeds scored the same"
    assert lora_ci in text.split("## Results", 1)[1].split("## Tradeoffs", 1)[0]  # lora's CI method
    assert "on negation (n = " in statement
    assert "Across LoRA ranks r = 2, 8" in section
    assert "| lora | full | 1 | all | 24 |" in section


def test_report_tests_match_compare_holm_against_the_reference(built):
    from sentitune.metrics import mcnemar
    from sentitune.reporting.render import load_comparison, paired_tests

    folder = built[0]
    document = json.loads((folder / "results.json").read_text())
    comparison = load_comparison(folder)
    tests = {(t["variant"], t["slice"]): t for t in paired_tests(comparison, "full")}
    assert document["reference"] == "full"
    for pair in document["pairwise"]:
        assert pair["p_value"] <= pair["p_holm"] and pair["significant"] == (pair["p_holm"] < 0.05)
        if "full" not in (pair["a"], pair["b"]):
            assert pair["p_holm_vs_reference"] is None
            continue
        other = pair["b"] if pair["a"] == "full" else pair["a"]
        overall = tests[(other, "all")]
        assert overall["seeds"] == pair["seeds"] == [1] and overall["holm_tests"] == 2
        assert overall["p_value"] == pytest.approx(pair["p_value"])
        assert overall["p_holm"] == pytest.approx(pair["p_holm_vs_reference"])  # same family, same numbers
        # one seed: the pooled test is plain McNemar on that seed's predictions
        run = {r.variant: r for r in comparison.ok_runs if r.seed == 1}
        assert overall["p_value"] == mcnemar(run[other].predictions.correct, run["full"].predictions.correct)["p_value"]
    assert document["multiplicity"] == {"method": "holm", "tests": 3, "tests_vs_reference": 2}
    assert {(t["a"], t["b"]): t["seeds"] for t in document["pairwise"]}[("lora", "lora-r2")] == [1]


def test_eval_sets_and_calibration_are_reported_as_compare_computed_them(built):
    folder, md_path, html_path = built
    text = md_path.read_text(encoding="utf-8")
    document = json.loads((folder / "results.json").read_text())
    suite = document["eval_sets"]["negation"]
    assert set(suite["variants"]) == {"full", "lora", "lora-r2"} and suite["reference"] == "full"
    section = text.split("## Robustness and out-of-domain sets", 1)[1].split("\n## ", 1)[0]
    lora = suite["variants"]["lora"]
    row = next(line for line in section.splitlines() if line.startswith("| negation |"))
    assert f"| {suite['examples']} |" in row
    assert f"{100 * lora['mean']:.1f} ({100 * lora['ci95_low']:.1f}–{100 * lora['ci95_high']:.1f})" in row
    assert next(line for line in section.splitlines() if line.startswith("| test split | 24 |"))
    for test in suite["pairwise_vs_reference"]:
        assert f"| negation | {test['a']} | full |" in section
        assert f"| {test['p_holm']:.3g} (over 2) |" in section
    assert "](report_files/eval_sets.png)" in text and (folder / "report_files" / "eval_sets.png").stat().st_size > 2000
    assert 'id="eval-sets-table"' in html_path.read_text(encoding="utf-8")
    # calibration: ECE before -> after temperature scaling, and the temperature, per variant
    full = json.loads((folder / "runs" / "full-s1" / "metrics.json").read_text())
    results_table = text.split("## Results", 1)[1].split("## Tradeoffs", 1)[0]
    full_row = next(line for line in results_table.splitlines() if line.startswith("| full |"))
    assert f"| {full['test_ece_uncalibrated']:.3f} → {full['test_ece_calibrated']:.3f} |" in full_row
    assert f"| {full['temperature']:.2f} |" in full_row


def test_html_is_self_contained(built):
    from PIL import Image

    _, _, html_path = built
    html = html_path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html)
    assert "<script" not in html and "<link" not in html and "{{" not in html
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 9  # 8 in Figures, the Pareto figure under Recommendation
    for data in images:
        picture = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
        assert len(set(picture.get_flattened_data())) > 20  # a real plot, not a blank canvas
    assert 'id="results-table"' in html and "lora-r2" in html


def test_tradeoff_wording_follows_the_p_values():
    summary = [
        {
            "variant": "full",
            "n_seeds": 2,
            "accuracy_mean": 0.90,
            "accuracy_std": 0.01,
            "params_trainable": 1000,
            "params_trainable_percent": 100.0,
            "peak_memory_mib": 400.0,
            "train_sps": 10.0,
            "neural": True,
            "batch_size": 32,
            "checkpoint_mib": 80.0,
        },
        {
            "variant": "lora",
            "n_seeds": 2,
            "accuracy_mean": 0.85,
            "accuracy_std": 0.02,
            "params_trainable": 3,
            "params_trainable_percent": 0.3,
            "peak_memory_mib": 500.0,
            "train_sps": 5.0,
            "neural": True,
            "batch_size": 32,
            "checkpoint_mib": 1.0,
        },
    ]
    negation = {"full": {"accuracy": 0.8, "count": 50}, "lora": {"accuracy": 0.7, "count": 50}}

    def tests(p_all, p_neg, seeds=(1, 2), k=2):
        """One test per slice over all shared seeds, as paired_tests() makes them: (p, Holm p) each."""
        return [
            {"variant": "lora", "slice": scope, "seeds": list(seeds), "p_value": p, "p_holm": p_holm, "holm_tests": k}
            for scope, (p, p_holm) in (("all", p_all), ("negation", p_neg))
        ]

    one = tradeoff_statements(summary, tests((0.01, 0.03), (0.04, 0.08)), "full", negation)[0]
    assert "uses 25% more peak training memory (500 vs 400 MiB)" in one
    assert "is 2× slower per training step" in one
    assert (
        "is 5.0 points lower in test accuracy (85.0% vs 90.0%; McNemar p = 0.01 over 2 seeds, "
        "Holm p = 0.03 over 2 tests, significant)" in one
    )
    # raw p < 0.05 but Holm-adjusted p >= 0.05: not significant
    assert (
        "10.0 points lower on negation (n = 50; McNemar p = 0.04 over 2 seeds, Holm p = 0.08 over 2 tests, "
        "not significant)" in one
    )
    single = tradeoff_statements(summary, tests((0.049, 0.049), (0.05, 0.05), seeds=(1,), k=1), "full", negation)[0]
    assert "McNemar p = 0.049, Holm p = 0.049 over 1 test, significant)" in single
    assert "McNemar p = 0.05, Holm p = 0.05 over 1 test, not significant)" in single
    tfidf = {
        "variant": "tfidf",
        "n_seeds": 1,
        "accuracy_mean": 0.8,
        "params_trainable": 1021,
        "params_total": 1021,
        "params_trainable_percent": 100.0,
        "peak_memory_mib": 401.0,
        "train_sps": 700.0,
        "neural": False,
        "batch_size": 32,
    }
    with_totals = [{**summary[0], "params_trainable": 110_000_000, "params_total": 110_000_000}, tfidf]
    line = tradeoff_statements(with_totals, [], "full")[0]
    assert line.startswith("tfidf trains 1,021 parameters (107,738× fewer than full's 110,000,000)")
    assert "uses about the same peak training memory (401 vs 400 MiB)" in line
    assert "is 70× faster in training samples/s" in line and "no shared seed to test" in line
    others = tradeoff_statements(summary, tests((0.3, 0.6), (0.3, 0.6)), "full", negation)
    assert "Most accurate: full at 90.0% ± 1.0 over 2 seed(s)." in others
    assert any(s.startswith("Smallest checkpoint: lora at 1.00 MiB, 80× smaller than full") for s in others)


def test_report_refuses_folders_without_finished_runs(built, tmp_path, capsys):
    from sentitune.cli import main

    folder = tmp_path / "only-failed"
    shutil.copytree(built[0] / "runs" / "head-s1", folder / "runs" / "head-s1")
    with pytest.raises(RunFolderError, match="no finished runs.*head-s1: failed"):
        build_report(folder)
    assert main(["report", str(folder)]) == 2
    assert "no finished runs" in capsys.readouterr().err
    with pytest.raises(RunFolderError, match="not a comparison folder"):
        build_report(tmp_path)
    with pytest.raises(RunFolderError, match="not found"):
        build_report(tmp_path / "missing")


def test_report_cli_prints_paths_and_tradeoffs(built, monkeypatch, capsys):
    import webbrowser

    from sentitune.cli import main

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda uri: opened.append(uri) or False)
    assert main(["report", str(built[0]), "--open"]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "Tradeoffs (against full):" in out and "- lora trains" in out
    assert opened and opened[0].startswith("file://") and "no browser available" in out


def test_html_report_opens_in_headless_chromium(built, tmp_path):
    if not CHROMIUM.exists():
        print("SKIP REASON: /usr/bin/chromium is absent; install it with `apt-get install -y chromium`")
        pytest.skip("/usr/bin/chromium is absent (apt-get install -y chromium)")
    from PIL import Image

    uri = built[2].resolve().as_uri()
    profile = tmp_path / "profile"
    shot = tmp_path / "report.png"
    # One launch: the DOM after load on stdout, console messages on stderr, and a screenshot.
    dom = subprocess.run(
        [
            str(CHROMIUM),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            f"--screenshot={shot}",
            "--window-size=1200,6000",
            uri,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # no scripts, so any console message means a load problem
    assert 'id="results-table"' in dom.stdout and dom.stdout.count("<img") == 9 and "Tradeoffs" in dom.stdout
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels[::7]}
    assert len(colours) > 200, len(colours)  # text, tables and plots, not a blank page
    # matplotlib's first two default colours (tab:blue, tab:orange) only come from the embedded plots
    for rgb in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels.astype(int) - rgb).max(axis=1) <= 12).sum() > 500, rgb


# ---- learning curve, search, recommendation -----------------------------------------------------


@pytest.fixture(scope="module")
def curve(comparison, tmp_path_factory):
    """A learning-curve comparison in compare's format: full and lora at 24 training examples (trained
    here) and at all of them (the first fixture's runs, copied), compared with `--reference lora` and a
    memory budget; search/searches.json holds a hand-written `--tune` record of lora@24, as
    compare.run_searches writes it."""
    from sentitune import compare
    from sentitune.config import RunConfig
    from sentitune.training import train

    out = tmp_path_factory.mktemp("curve")
    planned = []
    for variant in ("full", "lora"):
        saved = RunConfig.from_yaml(comparison / "runs" / f"{variant}-s1" / "config.yaml")
        knobs = {"compare.reference": "lora", "compare.max_train_memory_mib": 100_000.0}
        for size in (24, "all"):
            cfg = compare.cell_config(saved, knobs, size, 1)
            run = compare.PlannedRun(f"{variant}@{size}-s1", f"{variant}@{size}", cfg, compare.method_knobs(cfg), size)
            if size == "all":
                shutil.copytree(comparison / "runs" / f"{variant}-s1", out / "runs" / run.name)
            else:
                train(cfg, out / "runs" / run.name)
            planned.append(run)
    search = {
        "lora@24": {
            "study": "lora@24:0123456789",
            "sampler": "grid",
            "budget": 2,
            "trials_run": 2,
            "space": {"learning_rate": [0.00025, 0.004]},
            "scored_on": "validation",
            "trials": [
                {
                    "number": 0,
                    "params": {"learning_rate": 0.00025},
                    "validation_accuracy": 0.5625,
                    "status": "ok",
                    "run_dir": "search/lora@24/trial-0",
                },
                {
                    "number": 1,
                    "params": {"learning_rate": 0.004},
                    "validation_accuracy": 0.6875,
                    "status": "ok",
                    "run_dir": "search/lora@24/trial-1",
                },
            ],
            "selected": {"learning_rate": 0.004},
            "selected_validation_accuracy": 0.6875,
        },
        "full@24": {"budget": 0, "trials": [], "selected": None, "note": "the test's stand-in for an untuned variant"},
    }
    (out / "search").mkdir()
    (out / "search" / "searches.json").write_text(json.dumps(search))
    compare.score_eval_sets(out, planned, echo=lambda *_: None)
    # The results table lists variants by method first (compare's order); the report groups them by size.
    compare.write_results(out, planned)
    md_path, html_path, context = write_report(out)
    return out, md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8"), context


def _section(text: str, heading: str) -> str:
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_learning_curve_section_states_when_each_method_reaches_the_reference(curve):
    folder, md, html, _ = curve
    document = json.loads((folder / "results.json").read_text())
    lines = document["learning_curve"]
    assert set(lines) == {"full", "lora"} and lines["full"]["reference"] == "lora"
    section = _section(md, "Learning curve")
    examples = {p["train_size"]: p["train_examples"] for p in lines["full"]["points"]}
    assert examples[24] == 24 and examples["all"] > 24
    assert f"| method | 24 | {examples['all']} (all) |" in section
    for method, line in lines.items():
        row = next(r for r in section.splitlines() if r.startswith(f"| {method}"))
        for p in line["points"]:
            low, high = 100 * p["test_accuracy_ci95_low"], 100 * p["test_accuracy_ci95_high"]
            assert f" {100 * p['test_accuracy_mean']:.1f} ({low:.1f}–{high:.1f}) |" in row
    reached = lines["full"]["within_reference_from"]
    expected = (
        f"- full comes within 1 point of lora from {examples[reached]:,} examples."
        if reached is not None
        else f"- full never comes within 1 point of lora (at 24, {examples['all']:,} examples)."
    )
    assert expected in section.splitlines()
    assert not any(line.startswith("- lora ") for line in section.splitlines())  # the reference itself
    assert "](report_files/learning_curve.png)" in section  # shown in its section, not under Figures
    assert "learning_curve.png" not in _section(md, "Figures")
    assert 'id="learning-curve-table"' in html and 'id="fig-learning_curve"' in html


def test_learning_curve_wording_and_figure_from_hand_made_points():
    from sentitune.reporting import plots
    from sentitune.reporting.render import learning_curve_context

    def line(within, small, large):
        """A compare.learning_curve line against full at 500 and all (6,920) examples."""
        points = [
            {
                "train_size": size,
                "train_examples": examples,
                "test_accuracy_mean": accuracy,
                "test_accuracy_ci95_low": accuracy - 0.02,
                "test_accuracy_ci95_high": accuracy + 0.02,
            }
            for size, examples, accuracy in ((500, 500, small), ("all", 6920, large))
        ]
        return {"reference": "full", "within_reference_from": within, "points": points}

    curve = {"full": line(500, 0.80, 0.90), "lora": line("all", 0.70, 0.895), "head": line(None, 0.60, 0.70)}
    context = learning_curve_context(curve)
    assert context["curve_statements"] == [
        "lora comes within 1 point of full from 6,920 examples.",
        "head never comes within 1 point of full (at 500, 6,920 examples).",
    ]
    assert context["curve_columns"] == ["500", "6,920 (all)"]
    assert not any(learning_curve_context({}).values())  # no learning curve, no section
    fig = plots.learning_curve_figure(context["curve_lines"])
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and len(ax.containers) == 3  # one error-bar line per method
    smallest = sorted(container.lines[0].get_xdata()[0] for container in ax.containers)
    assert smallest[0] < smallest[1] == 500 < smallest[2]  # nudged apart around the measured size
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["500", "6,920"]


def test_reference_comes_from_compare_and_tests_pair_within_a_training_size(curve):
    from sentitune.reporting.render import load_comparison, paired_tests

    folder, md, _, context = curve
    document = json.loads((folder / "results.json").read_text())
    # --reference lora: compare's choice, which the report now follows instead of preferring full
    assert document["reference"] == "lora@all" == context["reference"]
    assert document["references_by_train_size"] == {"24": "lora@24", "all": "lora@all"}
    assert context["references"] == ["lora@24", "lora@all"]
    results_table = _section(md, "Results")
    order = [line.split(" | ")[0][2:] for line in results_table.splitlines() if line.startswith("| ") and "@" in line]
    assert order == ["full@24", "lora@24", "full@all", "lora@all"]  # grouped by training-set size
    size = {r["variant"]: r["train_size"] for r in document["runs"]}
    for test in context["tests"]:
        assert size[test["variant"]] == size[test["reference"]] == test["train_size"]
        assert test["reference"] == document["references_by_train_size"][str(test["train_size"])]
    assert {(t["variant"], t["reference"]) for t in context["tests"]} == {
        ("full@24", "lora@24"),
        ("full@all", "lora@all"),
    }
    # the same family, so the same Holm-adjusted p-values, as compare's tests against its references
    tests = paired_tests(load_comparison(folder), {24: "lora@24", "all": "lora@all"})
    overall = {t["variant"]: t for t in tests if t["slice"] == "all"}
    for pair in document["pairwise"]:
        assert pair["train_size"] == size[pair["a"]] == size[pair["b"]]
        other = pair["a"] if pair["b"].startswith("lora@") else pair["b"]
        assert overall[other]["p_holm"] == pytest.approx(pair["p_holm_vs_reference"])
    tradeoffs = _section(md, "Tradeoffs")
    assert "the reference trained on as many examples (**lora@24**, **lora@all**)" in tradeoffs
    assert any(line.startswith("- full@24 trains") and "for lora@24)" in line for line in tradeoffs.splitlines())
    # compare's eval-set tests (and the report's, recomputed) also stay within one training-set size
    suite = document["eval_sets"]["negation"]
    assert suite["references_by_train_size"] == document["references_by_train_size"]
    assert {(t["a"], t["b"], t["train_size"]) for t in suite["pairwise_vs_reference"]} == {
        ("full@24", "lora@24", 24),
        ("full@all", "lora@all", "all"),
    }
    assert "| negation | full@24 | lora@24 |" in _section(md, "Robustness and out-of-domain sets")


def test_search_section_lists_every_trial_and_says_test_was_read_once(curve):
    folder, md, html, _ = curve
    section = _section(md, "Hyperparameter search")
    assert "scored on the validation slice only, never on test" in section
    assert "the test split was read once, by those final runs" in section
    assert "same budget of 2 trials (grid sampler)" in section
    assert "### lora@24" in section and "2 of 2 trials (grid sampler) over learning_rate: 0.00025, 0.004" in section
    assert "selected **learning_rate = 0.004** (validation accuracy 68.75%)" in section
    assert "| trial | learning_rate | validation accuracy % | status | |" in section
    assert "| 0 | 0.00025 | 56.25 | ok |  |" in section and "| 1 | 0.004 | 68.75 | ok | selected |" in section
    assert "- full@24: the test's stand-in for an untuned variant" in section
    assert md.index("## Hyperparameter search") < md.index("## Results")
    assert 'class="search-table"' in html and "<td>selected</td>" in html


def test_recommendation_section_has_the_pareto_frontier_and_compare_reason(curve):
    from sentitune.reporting.render import recommendation_context

    folder, md, html, context = curve
    document = json.loads((folder / "results.json").read_text())
    recommendation = document["recommendation"]
    assert recommendation["train_size"] == "all" and recommendation["budgets"] == {"max_train_memory_mib": 100_000.0}
    section = _section(md, "Recommendation")
    assert f"**Recommendation:** {recommendation['reason']}." in section
    assert f"together): {', '.join(recommendation['pareto_optimal'])}." in section
    assert "- Budgets: at most 100,000 MiB peak training memory." in section
    assert "](report_files/pareto.png)" in section and 'id="fig-pareto"' in html
    # the report's frontiers, computed from the run folders, are compare's
    pareto = context["pareto"]
    assert {p["label"] for p in pareto["points"]} == {"full@all", "lora@all"}
    for panel in pareto["panels"]:
        assert sorted(panel["frontier"]) == sorted(recommendation["frontiers"][panel["axis"]]), panel["axis"]
    memory = next(p for p in pareto["panels"] if p["key"] == "peak_memory_mib")
    assert memory["budget"] == 100_000.0 and not memory["larger_is_better"]
    # without a recorded recommendation (an older results.json) the figure stays, the sentence goes
    bare = recommendation_context(context["summary"], {})
    assert bare["recommendation"] is None and bare["pareto"]["points"] == pareto["points"]


def test_pareto_figure_draws_each_frontier_as_a_step_line():
    from sentitune.reporting import plots

    points = [
        {"label": "full", "accuracy": 0.90, "memory": 900.0, "speed": 100.0},
        {"label": "lora", "accuracy": 0.88, "memory": 400.0, "speed": 300.0},
        {"label": "bitfit", "accuracy": 0.80, "memory": 500.0, "speed": 90.0},  # dominated on both
        {"label": "tfidf", "accuracy": 0.75, "memory": 60.0, "speed": 5000.0},
    ]
    frontier = ["full", "lora", "tfidf"]
    panels = [
        {"key": "memory", "label": "MiB", "larger_is_better": False, "frontier": frontier, "budget": 800.0},
        {"key": "speed", "label": "sentences/s", "larger_is_better": True, "frontier": frontier, "budget": None},
    ]
    fig = plots.pareto_figure(points, panels, recommended="lora")
    memory_ax, speed_ax = fig.axes[:2]
    # cheaper is better: the best accuracy holds from a point's cost on ("post"); faster is better: up to it
    for ax, key, drawstyle in ((memory_ax, "memory", "steps-post"), (speed_ax, "speed", "steps-pre")):
        (step,) = [line for line in ax.get_lines() if line.get_drawstyle() == drawstyle]
        assert list(step.get_xdata()) == sorted(p[key] for p in points if p["label"] in frontier)
    assert memory_ax.get_xscale() == "log" and speed_ax.get_xscale() == "log"  # both span a decade or more
    assert [line.get_xdata()[0] for line in memory_ax.get_lines() if line.get_linestyle() == "--"] == [800.0]
    assert {t.get_text() for t in memory_ax.texts} == {"full", "lora", "bitfit", "tfidf"}
