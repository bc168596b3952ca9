"""Precision follows the hardware: bf16 autocast where the CPU has it natively, fp32 elsewhere, and a
clear refusal instead of a slow emulation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sentitune import runtime
from sentitune.runtime import PrecisionError, choose_precision


ZEN4 = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 sha_ni
"""
OLDER = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 fma
"""


@pytest.mark.parametrize(
    "cuda, cuda_bf16, cpu_bf16, expected",
    [
        (False, False, True, "bf16"),
        (False, False, False, "fp32"),
        (True, True, False, "bf16"),
        (True, False, True, "fp16"),
    ],
)
def test_auto_follows_the_hardware(cuda, cuda_bf16, cpu_bf16, expected):
    assert choose_precision("auto", cuda=cuda, cuda_bf16=cuda_bf16, cpu_bf16=cpu_bf16) == expected


def test_explicit_choices_the_cpu_cannot_run_well_are_refused_in_one_line():
    with pytest.raises(PrecisionError, match=r"^train\.precision=bf16: AMD EPYC 7B13 has no native bf16") as refused:
        choose_precision("bf16", cuda=False, cuda_bf16=False, cpu_bf16=False, cpu_model="AMD EPYC 7B13")
    assert "\n" not in str(refused.value)
    with pytest.raises(PrecisionError, match="needs a CUDA GPU"):
        choose_precision("fp16", cuda=False, cuda_bf16=False, cpu_bf16=True)
    assert choose_precision("bf16", cuda=False, cuda_bf16=False, cpu_bf16=True) == "bf16"
    assert choose_precision("fp32", cuda=False, cuda_bf16=False, cpu_bf16=True) == "fp32"


def test_cpu_features_are_read_from_cpuinfo(monkeypatch):
    monkeypatch.delenv(runtime.CPU_BF16_OVERRIDE, raising=False)
    zen4, older = runtime.cpu_info(ZEN4), runtime.cpu_info(OLDER)
    assert zen4["cpu_model"] == "AMD EPYC 9R14"
    assert zen4["isa"] == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert older["isa"] == ["avx2"]
    assert runtime.cpu_has_native_bf16(zen4) and not runtime.cpu_has_native_bf16(older)
    assert "AMD EPYC 9R14, " in runtime.machine_line(zen4) and "avx512_bf16" in runtime.machine_line(zen4)
    monkeypatch.setenv(runtime.CPU_BF16_OVERRIDE, "0")
    assert not runtime.cpu_has_native_bf16(zen4)


def test_bf16_on_a_cpu_without_it_fails_the_run_before_training(tiny_config, tmp_path, monkeypatch):
    from sentitune.training import TrainingError, train

    monkeypatch.setenv(runtime.CPU_BF16_OVERRIDE, "0")
    with pytest.raises(TrainingError, match="has no native bf16"):
        train(tiny_config("lora", **{"train.precision": "bf16", "train.max_steps": 1}), tmp_path / "run")


def test_auto_trains_and_predicts_in_bf16_where_the_cpu_has_it(tiny_config, tmp_path, monkeypatch):
    from sentitune.inference import Predictor
    from sentitune.training import train

    # Forced: this machine may lack native bf16, where the same kernels run emulated (slower, same maths).
    monkeypatch.setenv(runtime.CPU_BF16_OVERRIDE, "1")
    metrics = train(tiny_config("full", **{"train.max_steps": 2}), tmp_path / "run")
    assert metrics["status"] == "ok" and metrics["precision"] == "bf16"
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["precision"] == "bf16" and "isa" in saved["provenance"]["cpu"]

    texts = ["a gorgeous , witty film", "a dull , lifeless mess", "not bad at all"]
    bf16 = Predictor.load(tmp_path / "run", device="cpu")
    assert bf16.precision == "bf16"
    fp32 = Predictor.load(tmp_path / "run", device="cpu", precision="fp32")
    assert fp32.precision == "fp32"
    np.testing.assert_allclose(bf16.predict_proba(texts), fp32.predict_proba(texts), atol=3e-2)
    monkeypatch.setenv(runtime.CPU_BF16_OVERRIDE, "0")
    assert Predictor.load(tmp_path / "run", device="cpu").precision == "fp32"
    with pytest.raises(PrecisionError, match="no native bf16"):
        Predictor.load(tmp_path / "run", device="cpu", precision="bf16")
