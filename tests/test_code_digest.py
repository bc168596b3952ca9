"""sentitune's code digest (runtime.code_digest): recorded by every run, and a run made by other code
is a version mix, refused by compare unless --allow-version-mix, named by the results and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from sentitune import compare
from sentitune.config import ConfigError
from sentitune.runtime import SENTITUNE_CODE, code_digest, code_mix_line, compared_versions, version_mix


def _fake_package(root: Path) -> Path:
    files = {
        "__init__.py": "VERSION = 1\n",
        "methods/subset.py": "def pick(rows):\n    return rows[::2]\n",
        "configs/quick.yaml": "train:\n  epochs: 1\n",
        "suites/negation.tsv": "text\tlabel\nnot good\tnegative\n",
        "reporting/templates/report.md.j2": "# {{ title }}\n",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def _variant(source: Path, target: Path, edit=None) -> Path:
    shutil.copytree(source, target)
    if edit:
        edit(target)
    return target


def test_the_digest_is_stable_and_changes_with_the_code_and_presets_only(tmp_path):
    original = _fake_package(tmp_path / "original")
    digest = code_digest(original)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert code_digest.__wrapped__(original) == digest  # the cache holds what hashing gives
    assert code_digest(_variant(original, tmp_path / "copy")) == digest  # where the tree lies does not count

    def same_length_edit(root):  # a one-byte change, same size: bytes are hashed, not sizes or times
        path = root / "methods/subset.py"
        path.write_text(path.read_text().replace("::2", "::3"))

    changed = {
        "code": same_length_edit,
        "preset": lambda root: (root / "configs/quick.yaml").write_text("train:\n  epochs: 2\n"),
        "suite": lambda root: (root / "suites/negation.tsv").write_text("text\tlabel\nnot bad\tpositive\n"),
        "renamed file": lambda root: (root / "methods/subset.py").rename(root / "methods/subsets.py"),
        "new module": lambda root: (root / "methods/extra.py").write_text(""),
    }
    for name, edit in changed.items():
        assert code_digest(_variant(original, tmp_path / name.replace(" ", "-"), edit)) != digest, name

    unchanged = {
        "template": lambda root: (root / "reporting/templates/report.md.j2").write_text("# changed\n"),
        "bytecode": lambda root: (root / "__pycache__").mkdir() or (root / "__pycache__/x.pyc").write_bytes(b"\0"),
    }
    for name, edit in unchanged.items():
        assert code_digest(_variant(original, tmp_path / name, edit)) == digest, name


def test_the_installed_package_digest_is_computed_once_per_process():
    first = code_digest()
    assert len(first) == 16 and code_digest() == first
    assert code_digest.cache_info().hits >= 1


def test_version_mix_names_each_digest_with_its_runs_and_the_runs_without_one():
    provenance = {
        "a": {"versions": {"torch": "2.13.0"}, "code_digest": "1111111111111111"},
        "b": {"versions": {"torch": "2.13.0"}, "code_digest": "1111111111111111"},
        "c": {"versions": {"torch": "2.13.0"}, "code_digest": "2222222222222222"},
        "d": {"versions": {"torch": "2.13.0"}},  # made before the digest existed
    }
    mix = version_mix({run: compared_versions(p) for run, p in provenance.items()})
    assert mix == [
        {
            "package": SENTITUNE_CODE,
            "versions": {"1111111111111111": ["a", "b"], "2222222222222222": ["c"], "not recorded": ["d"]},
        }
    ]
    assert code_mix_line(mix[0]) == (
        "2 runs by sentitune code 1111111111111111 (a, b); 1 run by sentitune code 2222222222222222 (c); "
        "1 run records no code digest (d)"
    )
    # An old comparison, none with a digest: no mix, nothing to warn about.
    assert version_mix({run: compared_versions(provenance["d"]) for run in ("x", "y")}) == []
    assert compared_versions({}) == {}


def _finished_run(trained_run, out: Path, name: str, digest: str | None) -> Path:
    run_dir = out / compare.RUNS_DIR / name
    shutil.copytree(trained_run("tfidf"), run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if digest is None:
        metrics["provenance"].pop("code_digest")
    else:
        metrics["provenance"]["code_digest"] = digest
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def test_compare_refuses_runs_made_by_other_code_unless_allowed(trained_run, tiny_model_dir, tiny_data, tmp_path):
    from conftest import make_tiny_config

    from sentitune.reporting.render import _version_mix

    recorded = json.loads((trained_run("tfidf") / "metrics.json").read_text())["provenance"]
    assert recorded["code_digest"] == code_digest()

    out = tmp_path / "comparison"
    cfg = make_tiny_config(tiny_model_dir, tiny_data, "tfidf")
    planned = [compare.PlannedRun(name, "tfidf", cfg) for name in ("same-s1", "other-s1", "old-s1")]
    _finished_run(trained_run, out, "same-s1", code_digest())
    _finished_run(trained_run, out, "old-s1", None)
    compare.check_versions(out, planned, allow_mix=False)  # no digest recorded: unknown, not refused

    other = "0" * 16 if code_digest() != "0" * 16 else "1" * 16
    _finished_run(trained_run, out, "other-s1", other)
    with pytest.raises(ConfigError) as refused:
        compare.check_versions(out, planned, allow_mix=False)
    message = str(refused.value)
    assert "\n" not in message and "other-s1" in message
    assert f"sentitune code {other}, this is sentitune code {code_digest()}" in message
    assert "--allow-version-mix" in message
    compare.check_versions(out, planned, allow_mix=True)

    rows = [{"run_name": p.name, "run_dir": f"{compare.RUNS_DIR}/{p.name}", "status": "ok"} for p in planned]
    expected = {code_digest(): ["same-s1"], other: ["other-s1"], "not recorded": ["old-s1"]}
    assert compare.version_mix(out, rows) == [{"package": SENTITUNE_CODE, "versions": expected}]

    runs = [
        SimpleNamespace(name=p.name, metrics=json.loads((out / compare.RUNS_DIR / p.name / "metrics.json").read_text()))
        for p in planned
    ]
    line = _version_mix(SimpleNamespace(ok_runs=runs))
    assert f"1 run by sentitune code {other} (other-s1)" in line
    assert "1 run records no code digest (old-s1)" in line
