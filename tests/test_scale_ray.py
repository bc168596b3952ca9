"""`predict --engine ray` and `serve --engine ray` on a local Ray cluster (2 CPUs, tiny model): every
input row is scored exactly once, with the probabilities of the single-process Predictor, even when a
worker dies mid-run; Ray Serve answers the same routes as `sentitune serve`."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sentitune.errors import DataError, OutputNotWritable, RunFolderError


ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module: 2 CPUs, no dashboard; shut down at the end."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Texts spread over a CSV, a TSV, a JSONL and a Parquet shard, every text unique so that each
    output row names its input row."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import NEGATIVE, POSITIVE

    folder = tmp_path_factory.mktemp("shards")
    base = POSITIVE + NEGATIVE
    texts = [f'{base[i % len(base)]} (review {i}, "quoted", comma)' for i in range(120)]
    texts[7] = "10"  # a number-like text stays a string
    (folder / "a.csv").write_text(
        "id,text\n" + "".join(f'{i},"{t.replace(chr(34), chr(34) * 2)}"\n' for i, t in enumerate(texts[:30])),
        encoding="utf-8",
    )
    (folder / "b.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t1\n" for t in texts[30:60]), encoding="utf-8")
    (folder / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[60:90]), encoding="utf-8")
    pq.write_table(pa.table({"text": texts[90:]}), folder / "d.parquet")
    return folder, texts


def read_jsonl_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]


def assert_same_as_single_process(rows: list[dict], texts: list[str], run: Path) -> None:
    from sentitune.inference import Predictor

    counts = Counter(row["text"] for row in rows)
    assert counts == Counter(texts), "rows lost or repeated"
    predictor = Predictor.load(run, device="cpu")
    expected = {row["text"]: row for row in predictor.predict(texts)}
    for row in rows:
        want = expected[row["text"]]
        assert set(row) == set(want)
        assert row["label"] == want["label"]
        got = np.array([row["probabilities"][k] for k in predictor.label_names])
        ref = np.array([want["probabilities"][k] for k in predictor.label_names])
        np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.slow
def test_every_row_once_with_single_process_probabilities(cluster, shards, trained_run, tmp_path):
    from sentitune.scale.ray_predict import MANIFEST, predict_with_ray

    folder, texts = shards
    run = trained_run("full")
    out = tmp_path / "preds"
    manifest = predict_with_ray(
        str(run), [str(folder / "*")], out, concurrency=2, batch_size=16, load_kwargs={"device": "cpu"}
    )
    rows = read_jsonl_rows(out)
    assert manifest["rows"] == len(texts) == len(rows)
    assert json.loads((out / MANIFEST).read_text())["files"] == sorted(p.name for p in out.glob("*.jsonl"))
    assert_same_as_single_process(rows, texts, run)


class _DiesOnce:
    """Mixed into the actor: the first batch any actor sees kills its process (os._exit, no cleanup),
    once per marker file; the restarted actor then scores the batch again."""

    marker: str = ""

    def __call__(self, batch):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().__call__(batch)


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_nothing_is_lost_or_repeated(cluster, shards, trained_run, tmp_path):
    """Also the Parquet output: its rows read back as the JSONL rows do."""
    import pyarrow.parquet as pq

    from sentitune.scale.ray_predict import PredictActor, predict_with_ray

    folder, texts = shards
    run = trained_run("full")
    marker = tmp_path / "died"

    class DiesOnce(_DiesOnce, PredictActor):  # defined here: Ray ships it by value to the workers
        pass

    DiesOnce.marker = str(marker)
    # Workers cannot import this test module: its classes travel by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = tmp_path / "preds"
    manifest = predict_with_ray(
        str(run),
        [str(folder / "*")],
        out,
        batch_size=16,
        output_format="parquet",
        actor_class=DiesOnce,
        load_kwargs={"device": "cpu"},
    )
    assert marker.exists(), "no worker died: the test did not test a restart"
    assert int(marker.read_text()) != os.getpid()
    rows = [row for path in sorted(out.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert manifest["rows"] == len(rows) == len(texts)
    assert_same_as_single_process(rows, texts, run)


def test_bad_inputs_and_outputs_are_one_line_before_any_work(trained_run, shards, tmp_path):
    from sentitune.scale.ray_predict import check_output_folder, expand_inputs

    folder, _ = shards
    with pytest.raises(DataError, match="matches no file"):
        expand_inputs([str(tmp_path / "nothing-*.csv")])
    (tmp_path / "notes.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown input format"):
        expand_inputs([str(tmp_path / "notes.*")])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("user data")
    with pytest.raises(RunFolderError, match="not empty"):
        check_output_folder(taken, False, [], str(trained_run("full")))
    with pytest.raises(RunFolderError, match="did not create"):
        check_output_folder(taken, True, [], str(trained_run("full")))
    assert (taken / "mine.txt").read_text() == "user data"
    with pytest.raises(OutputNotWritable, match="run folder"):
        check_output_folder(trained_run("full") / "preds", False, [], "elsewhere")
    with pytest.raises(OutputNotWritable, match="--input file"):
        check_output_folder(folder, True, [folder / "a.csv"], str(trained_run("full")))


def test_an_unreachable_address_is_reported_within_seconds():
    import socket
    import time

    from sentitune.scale.ray_predict import check_address

    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        start = time.perf_counter()
        with pytest.raises(DataError, match="no Ray cluster answers"):
            check_address(f"127.0.0.1:{port}", timeout_s=2)
    assert time.perf_counter() - start < 5
    with pytest.raises(DataError, match="expected HOST:PORT"):
        check_address("nonsense")


def test_the_cli_refuses_texts_and_stdin_with_the_ray_engine(trained_run, capsys):
    from sentitune.cli.main import EXIT_USER_ERROR, main

    assert main(["predict", "--model", str(trained_run("full")), "--engine", "ray", "a text"]) == EXIT_USER_ERROR
    assert "--engine ray reads files" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_serve_with_two_replicas_answers_like_sentitune_serve(cluster, trained_run):
    import contextlib
    import socket
    import urllib.error
    import urllib.request

    from fastapi.testclient import TestClient
    from ray import serve

    from sentitune.inference import Predictor
    from sentitune.scale.ray_serve import application, deploy
    from sentitune.serve import create_app, serve_settings

    run = str(trained_run("full"))
    settings = serve_settings()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    deploy(application(run, settings, {"device": "cpu"}, replicas=2, num_cpus=0.5), "127.0.0.1", port)
    stack = contextlib.ExitStack()
    try:
        assert serve.status().applications["sentitune"].deployments["sentitune"].replica_states == {"RUNNING": 2}
        reference = stack.enter_context(TestClient(create_app(Predictor.load(run, device="cpu"), settings)))

        def call(path, body=None):
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}", data=data, headers={"content-type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        code, health = call("/health")
        assert code == 200 and health["model"] == reference.get("/health").json()["model"]
        for body in ({"text": "a gorgeous , witty film"}, {"texts": ["dull", "great fun"]}, {"text": ""}, {"nope": 1}):
            code, answer = call("/predict", body)
            expected = reference.post("/predict", json=body)
            assert code == expected.status_code, body
            if code == 200:
                rows = answer if isinstance(answer, list) else answer.get("predictions", [answer])
                want = expected.json()
                want = want if isinstance(want, list) else want.get("predictions", [want])
                for got, ref in zip(rows, want):
                    assert got["label"] == ref["label"]
                    assert got["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-5)
            else:
                assert answer == expected.json()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            assert "sentitune" in response.read().decode()
    finally:
        stack.close()
        serve.shutdown()
