"""Security rules, checked on the source tree and on hostile inputs: weights load from safetensors
only, nothing is ever unpickled, no code from model folders runs, configs cannot construct objects,
and the server binds to loopback by default with nothing but its four routes."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import yaml

from sentitune import config
from sentitune.cli import EXIT_USER_ERROR, build_parser, main
from sentitune.models import ModelNotAvailable, check_model_folder, resolve_model
from sentitune.results import RunFolderError


SOURCE = Path(__file__).resolve().parents[1] / "src" / "sentitune"
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
# Classes whose from_pretrained reads weights; tokenizers, configs and peft (checked separately) do not.
WEIGHT_LOADERS = ("AutoModel", "BertModel", "BertFor")


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_calls(path: Path) -> list[str]:
    """Code (not comments or docstrings) that could execute what a file or request contains."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []

    def flag(node, what):
        found.append(f"{path.name}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLING_MODULES:
                    flag(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLING_MODULES:
            flag(node, f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name.endswith("torch.load") and _keyword(node, "weights_only") is not True:
                flag(node, "torch.load without weights_only=True")
            if name.endswith(("jit.load", "np.load", "numpy.load")) and _keyword(node, "allow_pickle") is not False:
                if name.endswith("jit.load") or _keyword(node, "allow_pickle") is True:
                    flag(node, f"{name} can unpickle")
            if name in ("eval", "exec", "compile", "__import__"):
                flag(node, f"{name}()")
            if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.load_all"):
                flag(node, name)
            if name == "yaml.load" and _dotted(_keyword(node, "Loader") or ast.Name("?")) not in (
                "_Yaml12Loader",
                "yaml.SafeLoader",
            ):
                flag(node, "yaml.load without a safe loader")
            if _keyword(node, "trust_remote_code") not in (None, False):
                flag(node, "trust_remote_code is not False")
            if _keyword(node, "shell") not in (None, False):
                flag(node, "subprocess with shell=True")
            if (
                name.endswith(".from_pretrained")
                and name.split(".")[-2].startswith(WEIGHT_LOADERS)
                and _keyword(node, "use_safetensors") is not True
            ):
                flag(node, f"{name} without use_safetensors=True")
    return found


def test_source_tree_never_unpickles_or_runs_remote_code():
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 20
    problems = [problem for path in files for problem in unsafe_calls(path)]
    assert problems == [], "\n".join(problems)


def test_the_source_check_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\n"
        "import torch, yaml, subprocess\n"
        "torch.load('x')\n"
        "torch.load('x', weights_only=False)\n"
        "yaml.load(open('c'), Loader=yaml.Loader)\n"
        "AutoModelForSequenceClassification.from_pretrained('m', trust_remote_code=True)\n"
        "subprocess.run('ls', shell=True)\n"
        "eval('1')\n"
        "# torch.load in a comment is fine\n"
        "x = 'pickle in a string is fine'\n"
        "model.eval()\n"
        "torch.load('x', weights_only=True)\n"
    )
    problems = unsafe_calls(bad)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "import pickle",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "yaml.load without a safe loader",
        "trust_remote_code is not False",
        "AutoModelForSequenceClassification.from_pretrained without use_safetensors=True",
        "subprocess with shell=True",
        "eval()",
    ], problems


def test_config_yaml_loader_is_safe(tmp_path):
    assert issubclass(config._Yaml12Loader, yaml.SafeLoader)
    evil = tmp_path / "evil.yaml"
    evil.write_text("train:\n  seed: !!python/object/apply:os.getpid []\n")  # runs under yaml.Loader
    with pytest.raises(config.ConfigError, match="could not determine a constructor"):
        config.RunConfig.from_yaml(evil)


def test_no_switch_turns_on_remote_code():
    options = {option for action in build_parser()._actions for option in action.option_strings}
    for sub in build_parser()._subparsers._group_actions[0].choices.values():
        options |= {option for action in sub._actions for option in action.option_strings}
    assert not [o for o in options if "remote" in o or "trust" in o or "pickle" in o]
    flat = json.dumps(config.RunConfig().to_dict())
    assert "remote_code" not in flat and "trust" not in flat


# ---- hostile model folders --------------------------------------------------------------------

MARKER_CODE = "open({marker!r}, 'w').write('ran')"


def _malicious_pickle(path: Path, marker: Path) -> None:
    """A pytorch_model.bin that runs code when unpickled (what torch.load without weights_only does)."""
    import pickle  # noqa: F401 (the test writes the hostile file; sentitune itself never imports pickle)

    class Payload:
        def __reduce__(self):
            return (exec, (MARKER_CODE.format(marker=str(marker)),))

    path.write_bytes(pickle.dumps({"weight": Payload()}))


@pytest.fixture
def hostile_folder(tiny_model_dir, tmp_path):
    """A copy of the tiny model whose weights are a code-running pickle."""
    folder = tmp_path / "hostile"
    shutil.copytree(tiny_model_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "pwned"
    _malicious_pickle(folder / "pytorch_model.bin", marker)
    return folder, marker


def test_pickle_only_model_folder_is_refused_without_unpickling(hostile_folder, tiny_data, tmp_path, capsys):
    folder, marker = hostile_folder
    with pytest.raises(ModelNotAvailable, match="only pickle-based weights"):
        resolve_model(str(folder))
    code = main(
        [
            "train",
            "--method",
            "full",
            "--model",
            str(folder),
            "--dataset",
            "files",
            "--train-file",
            str(tiny_data["train"]),
            "--test-file",
            str(tiny_data["test"]),
            "--output-dir",
            str(tmp_path / "run"),
        ]
    )
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"model folder {folder} has only pickle-based weights (pytorch_model.bin)" in err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_plain_hf_folder_with_pickle_weights_is_refused_by_the_predictor(hostile_folder):
    from sentitune.inference import Predictor

    folder, marker = hostile_folder
    with pytest.raises(RunFolderError, match="model.safetensors"):
        Predictor.load(folder)
    assert not marker.exists()


@pytest.mark.parametrize("method, weights", [("full", "model.safetensors"), ("lora", "adapter_model.safetensors")])
def test_run_folder_with_pickle_weights_is_refused(method, weights, trained_run, tmp_path):
    from sentitune.inference import Predictor

    run = tmp_path / "run"
    shutil.copytree(trained_run(method), run)
    (run / "model" / weights).unlink()
    marker = tmp_path / "pwned"
    # The names transformers and peft fall back to when the safetensors file is missing.
    _malicious_pickle(run / "model" / {"full": "pytorch_model.bin", "lora": "adapter_model.bin"}[method], marker)
    with pytest.raises(RunFolderError, match=weights):
        Predictor.load(run)
    assert not marker.exists()


def test_model_folder_asking_for_custom_code_is_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "imported"
    (folder / "modeling_evil.py").write_text(MARKER_CODE.format(marker=str(marker)) + "\n")
    settings = json.loads((folder / "config.json").read_text())
    settings["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ModelNotAvailable, match="custom code .*trust_remote_code stays off"):
        check_model_folder(folder)
    with pytest.raises(ModelNotAvailable):
        resolve_model(str(folder))
    assert not marker.exists()


def test_safetensors_folder_with_a_stray_bin_passes(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(b"never read: use_safetensors=True loads model.safetensors")
    check_model_folder(folder)
    assert resolve_model(str(folder)).is_local


# ---- the server -------------------------------------------------------------------------------


def test_server_binds_to_loopback_by_default():
    args = build_parser().parse_args(["serve", "--model", "runs/x"])
    assert args.host == "127.0.0.1"


def test_server_exposes_only_its_routes_and_their_schema(trained_run):
    from fastapi.testclient import TestClient

    from sentitune.inference import Predictor
    from sentitune.serve import create_app

    app = create_app(Predictor.load(trained_run("tfidf")))
    assert {route.path for route in app.routes} == {
        "/predict",
        "/explain",
        "/health",
        "/metrics",
        "/",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
    }
    with TestClient(app) as client:
        schema = client.get("/openapi.json")
        assert schema.status_code == 200 and set(schema.json()["paths"]) == {
            "/predict",
            "/explain",
            "/health",
            "/metrics",
            "/",
        }
        assert client.get("/docs").status_code == 200
        assert client.head("/health").status_code == 200
        for path in ("/redoc", "/static/../../etc/passwd", "/predict/../../etc/passwd"):
            response = client.get(path)
            assert response.status_code in (404, 405), (path, response.status_code)
            assert "root:" not in response.text
        # Paths in a request are data: a JSON body naming a file is a validation error, not a read.
        response = client.post("/predict", json={"text": "x", "file": "/etc/passwd"})
        assert response.status_code == 422 and "root:" not in response.text
