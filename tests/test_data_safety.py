"""Nothing lost (issue 19, sections 1 and 6): sentitune replaces only folders it created, only after the
new result is complete; one writer per output; children die with `compare`; killed writers' leftovers
are swept by the next run. Every refusal is one line and exit 2, and nothing outside the intended
output changes (checked by hashing the files around it).

docs/reliability.md ("Nothing lost") summarises these cases.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_tiny_config, sentiment_rows, write_rows

from sentitune import results
from sentitune.cli import EXIT_USER_ERROR, main


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}

SLOW_DRIVER = """
import os, sys, time
from transformers import Trainer
from sentitune import inference

delay = float(sys.argv[1])
step = Trainer.training_step


def slow_step(self, *args, **kwargs):
    time.sleep(delay)  # room for the test to act while this process trains
    return step(self, *args, **kwargs)


stream = inference.Predictor.predict_stream


def slow_stream(self, *args, **kwargs):
    gate = os.environ.get("GATE")
    for row in stream(self, *args, **kwargs):
        while gate and not os.path.exists(gate):  # holds its output until the test opens the gate
            time.sleep(0.05)
        time.sleep(delay)
        yield row


Trainer.training_step = slow_step
inference.Predictor.predict_stream = slow_stream
from sentitune.cli import main

sys.exit(main(sys.argv[2:]))
"""


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones included) -> SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.strip().endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


def tfidf_args(train_file: Path, test_file: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--method",
        "tfidf",
        "--dataset",
        "files",
        "--train-file",
        str(train_file),
        "--test-file",
        str(test_file),
        "--validation-size",
        "16",
        "--set",
        "method.tfidf_c_grid=[1.0]",
        "--output-dir",
        str(output_dir),
        *extra,
    ]


def full_args(model_dir: Path, data: dict[str, Path], output_dir: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--method",
        "full",
        "--model",
        str(model_dir),
        "--dataset",
        "files",
        "--train-file",
        str(data["train"]),
        "--test-file",
        str(data["test"]),
        "--validation-size",
        "16",
        "--max-length",
        "32",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--set",
        "train.eval_strategy=no",
        "--output-dir",
        str(output_dir),
        *extra,
    ]


def dead_pid() -> int:
    """The PID of a process that has exited (for leftovers of a 'killed' writer)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def wait_for(condition, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def finished_tfidf(tiny_data, tmp_path) -> Path:
    run = tmp_path / "runs" / "tfidf"
    assert main(tfidf_args(tiny_data["train"], tiny_data["test"], run)) == 0
    return run


# ---- 1. --overwrite replaces only sentitune's own run, only once the new one finished ------------


def test_overwrite_refuses_a_project_folder_and_the_csv_files_in_it(tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    train_file = write_rows(project / "train.csv", sentiment_rows(64, 0))
    test_file = write_rows(project / "test.csv", sentiment_rows(24, 1))
    (project / "config.yaml").write_text("train:\n  max_steps: 2\n")  # a user's config, not a run's
    (project / "notes").mkdir()
    (project / "notes" / "ideas.md").write_text("keep me")
    before = snapshot(tmp_path)
    for extra in (["--overwrite"], []):
        assert main(tfidf_args(train_file, test_file, project, *extra)) == EXIT_USER_ERROR
        line = one_line_error(capsys)
        assert f"{project}: not empty and not a sentitune run folder" in line, line
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_run_folder_holding_files_sentitune_did_not_write(finished_tfidf, tiny_data, capsys):
    (finished_tfidf / "my-notes.txt").write_text("mine")
    before = snapshot(finished_tfidf.parent)
    assert main(tfidf_args(tiny_data["train"], tiny_data["test"], finished_tfidf, "--overwrite")) == EXIT_USER_ERROR
    assert "my-notes.txt, which sentitune did not write" in one_line_error(capsys)
    assert snapshot(finished_tfidf.parent) == before


def test_failed_overwrite_leaves_the_finished_run_untouched(finished_tfidf, tiny_data, monkeypatch):
    from sentitune.methods import registry

    before = snapshot(finished_tfidf)
    assert (finished_tfidf / results.RUN_MARKER).is_file(), "a run folder carries sentitune's marker"

    def explode(*args, **kwargs):
        raise RuntimeError("the new run crashed")

    monkeypatch.setattr(registry.get("tfidf"), "fit", explode)
    with pytest.raises(RuntimeError, match="the new run crashed"):
        main(tfidf_args(tiny_data["train"], tiny_data["test"], finished_tfidf, "--overwrite"))
    assert snapshot(finished_tfidf) == before
    assert sorted(p.name for p in finished_tfidf.parent.iterdir()) == ["tfidf"], "no staging folder left"

    monkeypatch.undo()
    assert main(tfidf_args(tiny_data["train"], tiny_data["test"], finished_tfidf, "--overwrite")) == 0
    assert results.read_status(finished_tfidf) == "ok" and snapshot(finished_tfidf) != before
    assert sorted(p.name for p in finished_tfidf.parent.iterdir()) == ["tfidf"], "no staging or aside folder left"
    assert not (finished_tfidf / results.LOCK_FILE).exists()


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL harness")
def test_killed_overwrite_keeps_the_old_run_and_the_next_run_sweeps_the_staging(
    finished_tfidf, tiny_model_dir, tiny_data, tmp_path, capsys
):
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_DRIVER)
    before = snapshot(finished_tfidf)
    argv = full_args(tiny_model_dir, tiny_data, finished_tfidf, "--overwrite", "--max-steps", "400")
    process = subprocess.Popen(
        [sys.executable, str(driver), "0.5", *argv], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    staging = results.staging_path(finished_tfidf, process.pid)
    try:
        wait_for(lambda: (staging / results.LABELS_FILE).exists(), what="the new run to start in its staging folder")
        assert results.lock_holder(finished_tfidf) == process.pid
    finally:
        process.kill()
        process.wait()
    after = snapshot(finished_tfidf)
    after.pop(results.LOCK_FILE, None)  # the killed holder's lock file; the next run removes it
    assert after == before, "the finished run survives the killed --overwrite"
    assert staging.is_dir()
    # The next train of the same folder removes the dead process's staging folder first (here it then
    # refuses: the folder holds a finished run and --overwrite was not given).
    assert main(tfidf_args(tiny_data["train"], tiny_data["test"], finished_tfidf)) == EXIT_USER_ERROR
    assert "already holds a finished run" in one_line_error(capsys)
    assert not staging.exists()
    assert snapshot(finished_tfidf) == before


def test_a_swap_cut_short_is_undone_by_the_next_run(tmp_path):
    run = tmp_path / "run"
    aside = tmp_path / f".run.old-{dead_pid()}"  # killed after renaming the old run aside
    aside.mkdir()
    (aside / "metrics.json").write_text('{"status": "ok"}')
    results.sweep_leftovers(run)
    assert (run / "metrics.json").read_text() == '{"status": "ok"}' and not aside.exists()


def test_legacy_run_folders_still_count_as_runs(tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.yaml").write_text("model: x\n")
    assert not results.is_run_folder(legacy), "config.yaml alone may be a user's config"
    (legacy / "metrics.json").write_text('{"status": "ok"}')
    assert results.is_run_folder(legacy)


# ---- a user's own checkpoints/ ---------------------------------------------------------------------


def test_a_users_checkpoints_folder_is_never_removed(tiny_data, tmp_path, capsys):
    # An unfinished sentitune run (marker, config) where the user keeps a checkpoints/ folder of their own.
    run = tmp_path / "run"
    results.write_marker(run)
    (run / "config.yaml").write_text("model: x\n")
    (run / "checkpoints" / "mine").mkdir(parents=True)
    (run / "checkpoints" / "mine" / "weights.bin").write_bytes(b"\x00" * 1000)
    (run / "checkpoints" / "README").write_text("my own checkpoints")
    before = snapshot(tmp_path)
    assert main(tfidf_args(tiny_data["train"], tiny_data["test"], run)) == EXIT_USER_ERROR
    line = one_line_error(capsys)
    assert f"{run / 'checkpoints'}: not sentitune's" in line, line
    assert snapshot(tmp_path) == before
    # A plain folder of the user's with checkpoints/ inside is not a run folder at all.
    user = tmp_path / "user"
    shutil.copytree(run / "checkpoints", user / "checkpoints")
    before = snapshot(user)
    assert main(tfidf_args(tiny_data["train"], tiny_data["test"], user)) == EXIT_USER_ERROR
    assert "not a sentitune run folder" in one_line_error(capsys)
    assert snapshot(user) == before


def test_sentitunes_own_checkpoints_are_marked_and_removed_when_done(tiny_config, tmp_path, monkeypatch):
    from sentitune import training

    seen = {}
    real = training.training_arguments

    def spy(cfg, checkpoint_dir, precision):  # called as the Trainer is built, before it writes anything
        seen["marker"] = (checkpoint_dir / results.CHECKPOINTS_MARKER).is_file()
        return real(cfg, checkpoint_dir, precision)

    monkeypatch.setattr(training, "training_arguments", spy)
    training.train(tiny_config("head", **{"train.max_steps": 2}), tmp_path / "run")
    assert seen["marker"], "the checkpoints folder carries sentitune's marker while training"
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- evaluate --output-dir -----------------------------------------------------------------------


def test_evaluate_refuses_to_write_over_a_runs_own_results(trained_run, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run("tfidf"), run)
    elsewhere = tmp_path / "copy-of-metrics"
    elsewhere.mkdir()
    shutil.copy(run / "metrics.json", elsewhere / "metrics.json")
    before = snapshot(tmp_path)
    for target in (run, elsewhere):
        assert (
            main(["evaluate", str(run), "--data", str(tiny_data["test"]), "--output-dir", str(target)])
            == EXIT_USER_ERROR
        )
        line = one_line_error(capsys)
        assert f"{target}: holds a run's metrics.json" in line, line
    assert snapshot(tmp_path) == before
    # An evaluation folder can be written again.
    out = tmp_path / "eval"
    for _ in range(2):
        assert main(["evaluate", str(run), "--data", str(tiny_data["test"]), "--output-dir", str(out)]) == 0
    assert not (out / results.LOCK_FILE).exists()


# ---- one writer per output -----------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(tiny_config, tiny_data, trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    out = tmp_path / "out.jsonl"
    run.mkdir()
    with results.exclusive_lock(run):
        assert results.lock_holder(run) == os.getpid()
        assert main(tfidf_args(tiny_data["train"], tiny_data["test"], run)) == EXIT_USER_ERROR
        assert f"{run}: in use by another sentitune process (PID {os.getpid()})" in one_line_error(capsys)
        assert (
            main(["evaluate", str(trained_run("tfidf")), "--data", str(tiny_data["test"]), "--output-dir", str(run)])
            == EXIT_USER_ERROR
        )
        assert f"(PID {os.getpid()})" in one_line_error(capsys)
    with results.exclusive_lock(out):
        assert (
            main(["predict", "--model", str(trained_run("tfidf")), "--output", str(out), "a film"]) == EXIT_USER_ERROR
        )
        assert f"{out}: in use by another sentitune process (PID {os.getpid()})" in one_line_error(capsys)
    assert results.lock_holder(run) is None and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "lock files go with their holder"


@pytest.mark.skipif(sys.platform != "linux", reason="process harness")
def test_two_predicts_into_one_file_one_refused_the_other_intact(trained_run, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_DRIVER)
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"review number {i} was a gorgeous , witty film\n" for i in range(20)))
    out = tmp_path / "out" / "same.jsonl"
    out.parent.mkdir()
    argv = ["predict", "--model", str(trained_run("tfidf")), "--input", str(texts), "--output", str(out)]
    gate = tmp_path / "gate"
    first = subprocess.Popen(
        [sys.executable, str(driver), "0.01", *argv],
        env={**ENV, "GATE": str(gate)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: results.lock_holder(out) == first.pid, what="the first predict to hold its output")
        second = subprocess.run(
            [sys.executable, "-m", "sentitune", *argv], env=ENV, capture_output=True, text=True, timeout=120
        )
        assert first.poll() is None and results.lock_holder(out) == first.pid, "refused while the first writes"
    finally:
        gate.touch()
        _, first_err = first.communicate(timeout=120)
    assert second.returncode == EXIT_USER_ERROR, second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert line == (
        f"sentitune predict: error: {out}: in use by another sentitune process (PID {first.pid}); "
        "wait for it to finish or stop it"
    ), second.stderr
    assert first.returncode == 0, first_err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["text"] for row in rows] == texts.read_text().splitlines()
    assert sorted(p.name for p in out.parent.iterdir()) == ["same.jsonl"], "no temp or lock file left"


# ---- one atomic writer -----------------------------------------------------------------------------


def test_only_one_temp_then_rename_writer_in_the_source():
    source = Path(__file__).resolve().parents[1] / "src" / "sentitune"
    users = set()
    for path in source.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("mkstemp", "replace")
                and isinstance(node.value, ast.Name)
                and node.value.id in ("tempfile", "os")
            ):
                users.add(path.name)
    assert users == {"results.py"}, users


def test_pngs_and_jsonl_go_through_the_shared_writer(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from sentitune.inference import write_jsonl
    from sentitune.reporting.plots import save_png

    umask = os.umask(0o022)
    os.umask(umask)
    calls = []
    real = results.atomic_writer

    def spy(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(results, "atomic_writer", spy)
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    png = save_png(figure, tmp_path / "figure.png")
    assert (png.stat().st_mode & 0o777) == 0o666 & ~umask, "shared like any other file, not 0600"
    assert write_jsonl(iter([{"a": 1}, {"b": 2}]), str(tmp_path / "rows.jsonl")) == 2
    assert calls == ["figure.png", "rows.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png", "rows.jsonl"]


# ---- compare's children die with it ----------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_killed_compare_leaves_no_training_child(tiny_model_dir, tiny_data, tmp_path):
    import psutil
    import yaml

    cfg = make_tiny_config(
        tiny_model_dir,
        tiny_data,
        "full",
        **{"compare.methods": ["full"], "compare.seeds": [1], "train.max_steps": 100_000, "train.threads": 1},
    )
    config_file = tmp_path / "compare.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "out"
    compare = subprocess.Popen(
        [sys.executable, "-m", "sentitune", "compare", "--config", str(config_file), "--output-dir", str(out)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_dir = out / "runs" / "full-s1"
    try:
        wait_for(lambda: results.lock_holder(run_dir) is not None, what="the training child to start")
        children = psutil.Process(compare.pid).children(recursive=True)
        assert children, "compare runs its training in a child"
    finally:
        compare.send_signal(signal.SIGKILL)  # compare only, not its process group
        compare.wait()
    gone, alive = psutil.wait_procs(children, timeout=30)
    for child in alive:  # clean up before failing
        child.kill()
    assert not alive, [c.cmdline() for c in alive]
    assert results.lock_holder(run_dir) is None


def test_compare_never_starts_a_trainer_in_a_folder_another_process_holds(tiny_config, tmp_path):
    from sentitune import compare

    cfg = tiny_config("tfidf", **{"compare.methods": ["tfidf"], "compare.seeds": [1], "method.tfidf_c_grid": [1.0]})
    run_dir = tmp_path / "runs" / "tfidf-s1"
    run_dir.mkdir(parents=True)
    lines = []
    with results.exclusive_lock(run_dir):
        document = compare.run_comparison(cfg, tmp_path, echo=lines.append)
    row = document["runs"][0]
    assert row["status"] == "failed" and f"(PID {os.getpid()})" in row["error"], row
    assert any(f"PID {os.getpid()}" in line for line in lines), lines
    assert not (tmp_path / "logs" / "tfidf-s1.log").exists(), "no trainer was started"
    assert list(run_dir.iterdir()) == [], "nothing written into the held folder"


# ---- leftovers of killed writers -------------------------------------------------------------------


def test_leftovers_of_killed_predict_and_train_are_swept(trained_run, tiny_data, tmp_path):
    pid = dead_pid()
    out = tmp_path / "out.jsonl"
    temp = tmp_path / f".out.jsonl.{pid}.abcd1234.tmp"
    temp.write_text('{"half": ')
    stale_lock = tmp_path / ".out.jsonl.lock"
    stale_lock.write_text(f"{pid}\n")  # a killed holder's lock file: flock died with it
    live = tmp_path / f".out.jsonl.{os.getpid()}.live0001.tmp"
    live.write_text("a live writer's")
    assert main(["predict", "--model", str(trained_run("tfidf")), "--output", str(out), "a film"]) == 0
    assert not temp.exists() and not stale_lock.exists() and live.exists()
    live.unlink()

    run = tmp_path / "run"
    staging = tmp_path / f".run.staging-{pid}"
    (staging / "model").mkdir(parents=True)
    (staging / "model" / "weights").write_bytes(b"\x00" * 100_000)
    assert main(tfidf_args(tiny_data["train"], tiny_data["test"], run)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "run"]


def test_leftover_staging_of_a_killed_export_is_swept(trained_run, tmp_path):
    output = tmp_path / "exported"
    staging = tmp_path / f".exported.staging-{dead_pid()}-k1ll3d"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"\x00" * 100_000)
    other = tmp_path / ".exported.staging-not-a-pid"  # not of sentitune's naming: left alone
    other.mkdir()
    assert main(["export", "--model", str(trained_run("full")), "--format", "hf", "--output", str(output)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".exported.staging-not-a-pid", "exported"]


# ---- outputs that are not regular files, and folders that hold a user's files ----------------------


def _special_output(kind: str, folder: Path) -> Path:
    import stat as stat_module

    path = folder / ("pipe" if kind == "named pipe" else "null")
    if kind == "named pipe":
        os.mkfifo(path)
    else:
        try:  # a /dev/null of our own: the real one must never be put at risk by a test
            os.mknod(path, 0o666 | stat_module.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("creating a device node needs root")
    return path


@pytest.mark.skipif(sys.platform != "linux", reason="mknod and mkfifo as on Linux")
@pytest.mark.parametrize("kind", ["character device", "named pipe"])
def test_predict_writes_through_a_device_or_pipe_and_never_replaces_it(kind, trained_run, tmp_path):
    """`--output /dev/null` (or /dev/stdout, a pipe) is written through. The atomic writer renamed a
    temp file over it: run as root, `predict --output /dev/null` turned /dev/null into a plain file."""
    import stat as stat_module
    import threading

    path = _special_output(kind, tmp_path)
    received: list[bytes] = []
    reader = None
    if kind == "named pipe":
        reader = threading.Thread(target=lambda: received.append(path.read_bytes()), daemon=True)
        reader.start()
    argv = ["predict", "--model", str(trained_run("tfidf")), "--output", str(path), "a fine film", "a dull mess"]
    assert main(argv) == 0
    if reader is not None:
        reader.join(30)
        assert len(received[0].decode().splitlines()) == 2
    mode = path.lstat().st_mode
    assert stat_module.S_ISFIFO(mode) if kind == "named pipe" else stat_module.S_ISCHR(mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "a lock or temp file was left beside it"


def test_evaluate_writes_beside_a_users_files_and_again_over_its_own(trained_run, tiny_data, tmp_path, capsys):
    """evaluate --output-dir may share a folder with a user's files, and may rewrite its own earlier
    evaluation there; a user's file of a name evaluate writes is refused (tests/test_adversarial.py)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.md").write_text("keep me\n")
    argv = ["evaluate", str(trained_run("tfidf")), "--data", str(tiny_data["test"]), "--output-dir", str(folder)]
    assert main(argv) == 0
    first = json.loads((folder / results.METRICS_FILE).read_text())
    assert main(argv) == 0  # its own earlier output: replaced
    assert json.loads((folder / results.METRICS_FILE).read_text())["test_accuracy"] == first["test_accuracy"]
    assert (folder / "notes.md").read_text() == "keep me\n"
    capsys.readouterr()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "errors.csv").write_text("my own\n")
    before = snapshot(tmp_path / "other")
    assert main(argv[:-1] + [str(tmp_path / "other")]) == EXIT_USER_ERROR
    assert "other/errors.csv: already there and not written by sentitune" in one_line_error(capsys)
    assert snapshot(tmp_path / "other") == before
