"""Faults during training and writing: kill -9 then --resume, kills at random points while result files
are written, NaN/inf loss, out of memory, full and read-only disks.

The figures these tests produce are summarised in docs/reliability.md.
"""

from __future__ import annotations

import csv
import errno
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sentitune import results
from sentitune.cli import EXIT_USER_ERROR, main
from sentitune.training import last_complete_checkpoint


# A resumed run must end where an unbroken one does. On CPU the match is exact (0.0 measured); the
# tolerance leaves room for non-deterministic GPU kernels only.
RESUME_TOLERANCE = 1e-6

DRIVER = """
import sys, time
from transformers import Trainer

step = Trainer.training_step


def slow_step(self, *args, **kwargs):
    time.sleep(float(sys.argv[1]))  # room for the test to kill the process between checkpoints
    return step(self, *args, **kwargs)


Trainer.training_step = slow_step
from sentitune.cli import main

sys.exit(main(sys.argv[2:]))
"""


def train_args(model_dir, data, output_dir, *extra) -> list[str]:
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
        "--output-dir",
        str(output_dir),
        *extra,
    ]


def one_line_error(capsys) -> str:
    """The error line; progress bars of model loading may come before it, a traceback may not."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    assert errors[0].startswith("sentitune ") and "Traceback" not in err, err
    return errors[0]


# ---- kill -9 and --resume ---------------------------------------------------------------------


@pytest.mark.slow  # three training processes: about 20 s on an idle 2-core machine, up to a minute when loaded
def test_killed_training_resumes_to_the_same_result(tiny_model_dir, tiny_data, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    # 48 training examples / batch 8 = 6 steps per epoch: the kill and the resume fall mid-epoch and
    # the run crosses two epoch boundaries, where the data order is drawn again.
    extra = [
        "--max-steps",
        "16",
        "--learning-rate",
        "1e-3",
        "--threads",
        "1",
        "--set",
        "train.eval_strategy=no",
        "--set",
        "train.save_steps=2",
        "--set",
        "train.logging_steps=1",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def run(delay: float, folder: Path, *more: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(driver), str(delay), *train_args(tiny_model_dir, tiny_data, folder, *extra, *more)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )

    unbroken, killed = tmp_path / "unbroken", tmp_path / "killed"
    reference = run(0.0, unbroken)
    victim = run(0.15, killed)

    def saved_steps() -> list[int]:
        # checkpoint-4 is rotated away once checkpoint-6 is complete, so any later one counts too.
        return [int(p.parent.name.split("-")[1]) for p in killed.glob("checkpoints/checkpoint-*/trainer_state.json")]

    deadline = time.monotonic() + 120
    while not any(step >= 4 for step in saved_steps()):
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    # Anywhere from right after checkpoint-4 to a few steps later, possibly during a checkpoint save.
    delay = random.uniform(0.0, 0.6)
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL, "the run finished before the kill; the test proves nothing"
    assert reference.wait(300) == 0, reference.stderr.read().decode()
    assert results.read_status(killed) == "running"  # config.yaml written, no metrics.json: a killed run
    # A kill in the middle of a checkpoint save leaves a folder like this one.
    torn = killed / "checkpoints" / "checkpoint-99"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"\x00" * 100)

    resumed = run(0.0, killed, "--resume")
    assert resumed.wait(300) == 0, resumed.stderr.read().decode()

    a = json.loads((unbroken / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["status"] == "ok" and b["resumed_from_step"] >= 4, (delay, b["resumed_from_step"])
    assert a["resumed_from_step"] is None and a["train_steps"] == b["train_steps"] == 16
    assert b["test_accuracy"] == a["test_accuracy"]
    assert abs(b["test_loss"] - a["test_loss"]) <= RESUME_TOLERANCE, (delay, a["test_loss"], b["test_loss"])
    probs_a, probs_b = (_column(folder / "predictions.csv", "prob_positive") for folder in (unbroken, killed))
    np.testing.assert_allclose(probs_b, probs_a, rtol=0, atol=RESUME_TOLERANCE)
    # Same per-step losses before and after the kill: same data order, dropout and optimizer state.
    losses_a, losses_b = (_column(folder / "history.csv", "loss") for folder in (unbroken, killed))
    assert len(losses_a) == len(losses_b) == 16
    np.testing.assert_allclose(losses_b, losses_a, rtol=0, atol=RESUME_TOLERANCE)
    from safetensors.numpy import load_file

    weights_a, weights_b = (load_file(folder / "model" / "model.safetensors") for folder in (unbroken, killed))
    weight_gap = max(float(np.abs(weights_a[k] - weights_b[k]).max()) for k in weights_a)
    assert weight_gap <= RESUME_TOLERANCE
    assert not (killed / "checkpoints").exists()
    print(
        f"killed {delay:.2f} s after the first checkpoint at step >= 4, resumed from step {b['resumed_from_step']}: "
        f"|test_loss gap| {abs(b['test_loss'] - a['test_loss']):.2e}, "
        f"max |prob gap| {float(np.abs(np.subtract(probs_b, probs_a)).max()):.2e}, max |weight gap| {weight_gap:.2e}"
    )


def _column(path: Path, name: str) -> list[float]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [float(row[name]) for row in csv.DictReader(handle) if row[name]]


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    assert last_complete_checkpoint(folder) is None
    for step, state in [(2, "{}"), (4, '{"global_step": 4}'), (6, None), (8, '{"global_st')]:
        checkpoint = folder / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (checkpoint / "trainer_state.json").write_text(state)
    (folder / "checkpoint-notanumber").mkdir()
    assert last_complete_checkpoint(folder) == folder / "checkpoint-4"
    # The torn ones are gone, so the Trainer's own rotation cannot trip over them.
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-notanumber"]


def test_resume_without_checkpoints_is_refused(tiny_config, tmp_path):
    # It used to train from scratch silently; --resume now means "continue", or says there is nothing to.
    from sentitune.training import train

    with pytest.raises(results.RunFolderError, match="nothing to resume"):
        train(tiny_config("head"), tmp_path / "run", resume=True)
    assert not (tmp_path / "run").exists()


# ---- kills at random points while result files are written --------------------------------------

WRITTEN = {"metrics.json", "results.csv", "report.md", "figure.png"}


def _versions() -> list[dict[str, bytes]]:
    out = []
    for v in (0, 1):
        rows = [{"id": i, "text": f"v{v} row {i} " + "x" * (i % 50), "version": v} for i in range(5000)]
        out.append(
            {
                "metrics.json": (json.dumps({"version": v, "rows": rows}, indent=2) + "\n").encode(),
                "results.csv": results.rows_to_csv(rows).encode(),
                "report.md": (f"# report v{v}\n" + "line\n" * 50_000 + f"end v{v}\n").encode(),
                "figure.png": bytes([v]) * 500_000,
            }
        )
    return out


def _naive_write(path: Path, data: bytes) -> None:
    # What a streaming writer (json.dump, csv.writer, savefig into an open file) does.
    with open(path, "wb") as out:
        for i in range(0, len(data), 8192):
            out.write(data[i : i + 8192])


def _write_forever(folder: str, versions, naive: bool) -> None:
    write = _naive_write if naive else results.atomic_write_bytes
    n = 0
    while True:
        for name, data in versions[n % 2].items():
            write(Path(folder) / name, data)
        n += 1


def _torn(path: Path, versions) -> bool:
    return path.read_bytes() not in (versions[0][path.name], versions[1][path.name])


def _kill_writers(folder: Path, kills: int, naive: bool, rng: random.Random) -> tuple[int, int]:
    """(files checked, torn files) after `kills` SIGKILLs at random moments."""
    versions = _versions()
    # fork: the child starts writing at once, without re-importing anything.
    context = multiprocessing.get_context("fork")
    checked = torn = 0
    for _ in range(kills):
        writer = context.Process(target=_write_forever, args=(str(folder), versions, naive), daemon=True)
        writer.start()
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(10)
        for path in folder.iterdir():
            if path.name in WRITTEN:
                checked += 1
                torn += _torn(path, versions)
    return checked, torn


@pytest.mark.skipif(sys.platform != "linux", reason="fork + SIGKILL harness")
def test_results_survive_kills_at_random_points(tmp_path):
    rng = random.Random(20240611)
    atomic = tmp_path / "atomic"
    atomic.mkdir()
    checked, torn = _kill_writers(atomic, 40, naive=False, rng=rng)
    assert checked >= 100 and torn == 0, (checked, torn)
    # A kill can leave a hidden temp file next to the result, never a torn result.
    assert {p.name for p in atomic.iterdir() if not p.name.startswith(".")} <= WRITTEN
    assert all(p.name.endswith(".tmp") for p in atomic.iterdir() if p.name.startswith("."))
    # Control: the same kills tear plain writes, so the harness can see a torn file when there is one.
    naive = tmp_path / "naive"
    naive.mkdir()
    naive_checked, naive_torn = _kill_writers(naive, 12, naive=True, rng=rng)
    assert naive_torn > 0, (naive_checked, naive_torn)
    print(
        f"atomic: {checked} files checked after 40 kills, {torn} torn; "
        f"plain writes: {naive_torn} of {naive_checked} torn after 12 kills"
    )


@pytest.mark.parametrize("writer", ["json", "csv", "text"])
def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch, writer):
    path = tmp_path / f"out.{writer}"
    write = {
        "json": lambda: results.atomic_write_json(path, {"new": 1}),
        "csv": lambda: results.atomic_write_csv(path, [{"new": 1}]),
        "text": lambda: results.atomic_write_text(path, "new"),
    }[writer]
    path.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(results.OutputNotWritable, match=rf"{path}: cannot write \(disk full\)"):
        write()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "the temp file is cleaned up"


# ---- NaN / inf loss ---------------------------------------------------------------------------


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    tiny_model_dir, tiny_data, tmp_path, capsys, monkeypatch
):
    import torch
    from transformers import Trainer

    compute_loss = Trainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        # Steps 1-4 are fine, step 5 diverges.
        return loss * float("nan") if self.state.global_step >= 4 else loss

    monkeypatch.setattr(Trainer, "compute_loss", poisoned)
    run_dir = tmp_path / "run"
    code = main(
        train_args(
            tiny_model_dir,
            tiny_data,
            run_dir,
            "--max-steps",
            "8",
            "--set",
            "train.eval_strategy=no",
            "--set",
            "train.save_steps=2",
            "--set",
            "train.logging_steps=1",
        )
    )
    assert code == EXIT_USER_ERROR
    line = one_line_error(capsys)
    checkpoint = run_dir / "checkpoints" / "checkpoint-4"
    assert "loss became nan at step 5" in line and "method.learning_rate" in line and str(checkpoint) in line, line
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    from safetensors.torch import load_file

    weights = load_file(checkpoint / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values()), "the kept checkpoint holds finite weights"
    assert not (run_dir / "checkpoints" / "checkpoint-6").exists(), "nothing saved after the bad step"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "loss became nan" in metrics["error"]


def test_absurd_learning_rate_gives_a_clear_error(tiny_model_dir, tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(
        train_args(
            tiny_model_dir,
            tiny_data,
            run_dir,
            "--max-steps",
            "6",
            "--learning-rate",
            "1e30",
            "--set",
            "train.warmup_ratio=0",
            "--set",
            "train.eval_strategy=no",
        )
    )
    assert code == EXIT_USER_ERROR
    line = one_line_error(capsys)
    assert "loss became" in line and "1e+30" in line, line
    assert not (run_dir / "model").exists() and not (run_dir / "predictions.csv").exists()


# ---- out of memory ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cuda", "cpu"])
def test_out_of_memory_names_the_batch_size_and_a_way_out(
    tiny_model_dir, tiny_data, tmp_path, capsys, monkeypatch, kind
):
    import torch
    from transformers import Trainer

    def exhausted(self, *args, **kwargs):
        if kind == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 2147483648 bytes"
        )

    monkeypatch.setattr(Trainer, "training_step", exhausted)
    run_dir = tmp_path / "run"
    code = main(train_args(tiny_model_dir, tiny_data, run_dir, "--max-steps", "2", "--set", "train.eval_strategy=no"))
    assert code == EXIT_USER_ERROR
    line = one_line_error(capsys)
    assert "out of memory at batch size 8" in line and "--batch-size 4" in line, line
    assert "gradient_accumulation_steps 2" in line
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


def test_other_runtime_errors_keep_their_traceback(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    from transformers import Trainer

    def broken(self, *args, **kwargs):
        raise RuntimeError("shape mismatch: a bug, not the user's fault")

    monkeypatch.setattr(Trainer, "training_step", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(
            train_args(
                tiny_model_dir, tiny_data, tmp_path / "run", "--max-steps", "2", "--set", "train.eval_strategy=no"
            )
        )


# ---- full and read-only disks -----------------------------------------------------------------


def tfidf_args(tiny_data, output_dir) -> list[str]:
    return [
        "train",
        "--method",
        "tfidf",
        "--dataset",
        "files",
        "--train-file",
        str(tiny_data["train"]),
        "--test-file",
        str(tiny_data["test"]),
        "--validation-size",
        "16",
        "--set",
        "method.tfidf_c_grid=[1.0]",
        "--output-dir",
        str(output_dir),
    ]


@pytest.mark.parametrize(
    "code, reason, where",
    [
        (errno.ENOSPC, "disk full", "fsync"),
        (errno.EROFS, "read-only file system", "mkstemp"),
        (errno.EACCES, "permission denied", "mkstemp"),
    ],
)
def test_unwritable_output_is_one_line_naming_the_path(tiny_data, tmp_path, capsys, monkeypatch, code, reason, where):
    import tempfile

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail) if where == "fsync" else monkeypatch.setattr(tempfile, "mkstemp", fail)
    run_dir = tmp_path / "run"
    assert main(tfidf_args(tiny_data, run_dir)) == EXIT_USER_ERROR
    line = one_line_error(capsys)
    assert f"{run_dir / 'config.yaml'}: cannot write ({reason})" in line, line
    assert not any(p.name.endswith(".tmp") for p in run_dir.iterdir())


def test_library_write_errors_are_mapped_too():
    # safetensors and tokenizers (Rust) raise their own types around the OS error.
    class SafetensorError(Exception):
        pass

    mapped = results.not_writable(
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), "/out/model"
    )
    assert isinstance(mapped, results.OutputNotWritable) and "/out/model: cannot write (disk full)" in str(mapped)
    assert results.not_writable(OSError(errno.ENOENT, "gone")) is None
    assert results.not_writable(ValueError("os error 2")) is None


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    done = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return done.returncode == 0


NAMESPACE_SCRIPT = """
import contextlib, io, json, os, subprocess, sys
from sentitune.cli import main

mount, train, predict = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
outcome = {}


def attempt(name, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except BaseException as exc:  # a traceback here is a failure the test reports
            code = repr(exc)
    outcome[name] = [code, err.getvalue()]


subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", mount], check=True)
attempt("full", [a.replace("OUT", mount + "/full") for a in train])
outcome["full_files"] = sorted(os.listdir(mount + "/full"))
os.mkdir(mount + "/ro")
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", mount + "/ro"], check=True)
attempt("ro", [a.replace("OUT", mount + "/ro/run") for a in train])
attempt("predict", predict + ["--output", mount + "/ro/p.jsonl"])
print(json.dumps(outcome))
"""


@pytest.mark.skipif(
    sys.platform != "linux" or not _unshare_works(),
    reason="needs `unshare -rm` (user + mount namespaces) for a private tmpfs",
)
def test_real_full_and_read_only_file_systems(tiny_model_dir, tiny_data, trained_run, tmp_path):
    """A 48 KiB tmpfs that fills up and a read-only tmpfs, mounted in a private mount namespace
    (nothing outside this one process sees them), written to through the CLI."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    train = train_args(tiny_model_dir, tiny_data, "OUT", "--max-steps", "2", "--set", "train.eval_strategy=no")
    predict = ["predict", "--model", str(trained_run("tfidf")), "a fine film"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", NAMESPACE_SCRIPT, str(mount), json.dumps(train), json.dumps(predict)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])

    for name, reason, where in [
        ("full", "disk full", mount / "full"),
        ("ro", "read-only file system", mount / "ro"),
        ("predict", "read-only file system", mount / "ro"),
    ]:
        code, err = outcome[name]
        line = err.strip().splitlines()[-1]
        assert code == EXIT_USER_ERROR, (name, code, err[-2000:])
        assert line.startswith(f"sentitune {name if name == 'predict' else 'train'}: error: {where}"), line
        assert f"cannot write ({reason})" in line and "Traceback" not in err, err[-2000:]
    assert "predictions.csv" not in outcome["full_files"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_output_folder_without_write_permission(tiny_data, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(tfidf_args(tiny_data, locked / "run")) == EXIT_USER_ERROR
        line = one_line_error(capsys)
        assert str(locked / "run") in line and "permission denied" in line, line
    finally:
        locked.chmod(0o700)
