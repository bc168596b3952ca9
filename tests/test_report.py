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

from sentitune.reporting.render import build_report, tradeoff_statements
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
    for heading in ("## Setup", "## Results", "## Tradeoffs", "## Slices", "## Negation probe", "## Figures"):
        assert heading in text, heading
    table = text.split("## Results", 1)[1].split("## Tradeoffs", 1)[0]
    for variant in ("| full |", "| lora |", "| lora-r2 |", "| head |"):
        assert variant in table, variant
    assert "| lora | lora | 2/2 |" in table and "| 0/1 | failed |" in table and "loss became nan" in table
    assert "| lora-s1 | lora |" in text  # the probe row from runs/lora-s1/analysis
    for name in ("accuracy_vs_params", "memory", "throughput", "curves", "confusion", "slices", "lora_rank"):
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
    lora_mean = np.mean(
        [json.loads((folder / "runs" / f"lora-s{s}" / "metrics.json").read_text())["test_accuracy"] for s in (1, 2)]
    )
    assert f"({100 * lora_mean:.1f}% vs {100 * full['test_accuracy']:.1f}%" in statement
    assert "per training step" in statement and "McNemar p = " in statement
    assert "significant" in statement and "(seed" not in statement  # one shared seed: a single p-value
    # lora and lora-r2 against full: a family of 2 overall tests, Holm-corrected
    assert ", Holm p = " in statement and " over 2 tests, " in statement and "over 1 seeds" not in statement
    assert "after Holm correction over 2 tests" in section
    assert "t over 2 seeds" in text.split("## Results", 1)[1].split("## Tradeoffs", 1)[0]  # lora's CI method
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


def test_html_is_self_contained(built):
    from PIL import Image

    _, _, html_path = built
    html = html_path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html)
    assert "<script" not in html and "<link" not in html and "{{" not in html
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 7
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
    assert 'id="results-table"' in dom.stdout and dom.stdout.count("<img") == 7 and "Tradeoffs" in dom.stdout
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels[::7]}
    assert len(colours) > 200, len(colours)  # text, tables and plots, not a blank page
    # matplotlib's first two default colours (tab:blue, tab:orange) only come from the embedded plots
    for rgb in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels.astype(int) - rgb).max(axis=1) <= 12).sum() > 500, rgb
