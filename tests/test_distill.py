"""Knowledge distillation (issue 16): the loss, a student run folder that every reader accepts, its
teacher fields and agreement in metrics.json, and one clear line for each bad input."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from sentitune.cli import EXIT_USER_ERROR, main


# ---- the loss ------------------------------------------------------------------------------------


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


STUDENT = np.array([[2.0, -1.0, 0.5], [0.1, 0.3, -2.0], [-1.0, 1.5, 0.0]])
TEACHER = np.array([[1.0, 0.0, -1.0], [3.0, -1.0, 0.0], [0.0, 0.5, 2.5]])
GOLD = np.array([0, 2, 1])


def _hand_kl(temperature: float) -> np.ndarray:
    """T^2 x KL(softmax(teacher / T) || softmax(student / T)) per row, in numpy."""
    log_t, log_s = _log_softmax(TEACHER / temperature), _log_softmax(STUDENT / temperature)
    return temperature**2 * (np.exp(log_t) * (log_t - log_s)).sum(axis=1)


def _hand_ce() -> np.ndarray:
    return -_log_softmax(STUDENT)[np.arange(len(GOLD)), GOLD]


def _loss(alpha: float, temperature: float, gold=GOLD) -> float:
    import torch

    from sentitune.trainer import distillation_loss

    as_tensor = torch.tensor
    return float(distillation_loss(as_tensor(STUDENT), as_tensor(TEACHER), as_tensor(gold), alpha, temperature))


def test_alpha_zero_is_cross_entropy_and_alpha_one_is_scaled_kl():
    assert _loss(0.0, 3.0) == pytest.approx(_hand_ce().mean(), rel=1e-6)
    assert _loss(1.0, 3.0) == pytest.approx(_hand_kl(3.0).mean(), rel=1e-6)
    assert _loss(0.3, 2.0) == pytest.approx((0.3 * _hand_kl(2.0) + 0.7 * _hand_ce()).mean(), rel=1e-6)
    # The temperature matters: T^2 x KL at T=1 and T=4 differ on these logits.
    assert not math.isclose(_loss(1.0, 1.0), _loss(1.0, 4.0), rel_tol=1e-3)


def test_unlabelled_rows_carry_the_kl_term_alone():
    from sentitune.trainer import UNLABELLED

    gold = np.array([0, UNLABELLED, 1])
    rows = np.array([0.25 * _hand_kl(2.0)[0] + 0.75 * _hand_ce()[0], _hand_kl(2.0)[1], 0.0])
    rows[2] = 0.25 * _hand_kl(2.0)[2] + 0.75 * _hand_ce()[2]
    assert _loss(0.25, 2.0, gold) == pytest.approx(rows.mean(), rel=1e-6)
    # Even at alpha 0 an unlabelled row teaches: its KL term is not weighted by alpha.
    assert _loss(0.0, 2.0, np.array([UNLABELLED] * 3)) == pytest.approx(_hand_kl(2.0).mean(), rel=1e-6)


def test_the_distill_section_is_checked_and_stays_out_of_the_fingerprint(tiny_config):
    from sentitune.config import ConfigError

    plain = tiny_config()
    student = plain.override({"distill.teacher": "runs/teacher", "distill.alpha": 0.9})
    assert student.fingerprint() == plain.fingerprint()
    assert "distill" in student.to_dict() and student.to_dict()["distill"]["alpha"] == 0.9
    for overrides, field in [
        ({"distill.alpha": 1.5}, "distill.alpha"),
        ({"distill.temperature": 0}, "distill.temperature"),
        ({"distill.unlabelled": "more.txt"}, "distill.unlabelled"),
        ({"distill.teacher": "t", "method.name": "tfidf"}, "method.name"),
    ]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            plain.override(overrides)
    with pytest.raises(ConfigError, match="unknown key distill.alpah"):
        type(plain).from_dict({**plain.to_dict(), "distill": {"alpah": 0.5}})


# ---- hidden-state matching (TinyBERT style) --------------------------------------------------------


def test_the_hidden_knobs_are_checked_and_stay_out_of_the_fingerprint(tiny_config):
    from sentitune.config import ConfigError, DistillConfig

    plain = tiny_config()
    student = plain.override({"distill.teacher": "runs/teacher"})
    hidden = student.override({"distill.hidden_weight": 2.0, "distill.hidden_layers": [0, 2]})
    assert hidden.fingerprint() == plain.fingerprint()
    assert hidden.to_dict()["distill"]["hidden_layers"] == [0, 2]
    for overrides, message in [
        ({"distill.hidden_weight": -0.5}, "distill.hidden_weight: must be >= 0"),
        ({"distill.hidden_weight": float("nan")}, "distill.hidden_weight: must be a finite number"),
        ({"distill.hidden_layers": [0, 1]}, "distill.hidden_layers: read only with distill.hidden_weight > 0"),
        ({"distill.hidden_weight": 1.0, "distill.hidden_layers": [0, -1]}, "distill.hidden_layers: entries are"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            student.override(overrides)
    with pytest.raises(ConfigError, match=re.escape("distill.hidden_weight: read only with distill.teacher")):
        plain.override({"distill.hidden_weight": 1.0})

    # The uniform map (TinyBERT): embeddings to embeddings, the student's last layer to the teacher's.
    on = DistillConfig(teacher="t", hidden_weight=1.0)
    assert on.layer_map(3, 6) == [0, 2, 4, 6] and on.layer_map(1, 2) == [0, 2] and on.layer_map(2, 2) == [0, 1, 2]
    chosen = DistillConfig(teacher="t", hidden_weight=1.0, hidden_layers=[0, 1])
    assert chosen.layer_map(1, 2) == [0, 1]
    with pytest.raises(ConfigError, match=re.escape("distill.hidden_layers: 2 entries for a 2-layer student")):
        chosen.layer_map(2, 2)
    with pytest.raises(ConfigError, match=re.escape("distill.hidden_layers: 3 is out of range for a 2-layer")):
        DistillConfig(teacher="t", hidden_weight=1.0, hidden_layers=[0, 3]).layer_map(1, 2)


def _tiny_classifier(folder: Path):
    from sentitune.models import ModelSource, load_classifier

    return load_classifier(ModelSource(str(folder), str(folder), True), ["negative", "positive"])


@pytest.fixture(scope="module")
def tiny_batch(tiny_model_dir):
    """A padded batch of three texts of different lengths, with gold labels and teacher logits."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["a warm , witty film", "dull", "flat , lifeless and far too long for what it has to say"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    assert (batch["attention_mask"] == 0).any()  # padding present: the mask is exercised
    return {
        **batch,
        "labels": torch.tensor([1, 0, 0]),
        "teacher_logits": torch.tensor([[0.0, 1.0], [1.0, -1.0], [2.0, 0.0]]),
    }


def test_the_hidden_term_is_zero_for_a_copy_and_positive_with_gradients_otherwise(tiny_model_dir, tiny_batch):
    import copy

    import torch

    from sentitune.trainer import HiddenMatching

    torch.manual_seed(0)
    student = _tiny_classifier(tiny_model_dir).eval()  # eval: no dropout, so a copy computes the same states
    inputs = {k: v for k, v in tiny_batch.items() if k not in ("labels", "teacher_logits")}
    matching = HiddenMatching(copy.deepcopy(student), 1.0, [0, 1, 2])
    with torch.no_grad():
        states = student(**inputs, output_hidden_states=True).hidden_states
    assert float(matching.loss(inputs, states)) == pytest.approx(0.0, abs=1e-10)

    # A teacher whose layers differ: a positive term that reaches the student's weights.
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for parameter in teacher.bert.encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    student.train()
    loss = HiddenMatching(teacher, 1.0, [0, 1, 2]).loss(
        inputs, student(**inputs, output_hidden_states=True).hidden_states
    )
    assert float(loss) > 0
    loss.backward()
    grads = [p.grad for p in student.bert.encoder.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is read, never trained

    # Padding is left out: changing the teacher's states at padded positions does not change the term.
    from sentitune.trainer import hidden_state_loss

    mask = inputs["attention_mask"]
    teacher_states = [s.detach().clone() for s in states]
    shifted = [s + 5.0 * (mask == 0).unsqueeze(-1) for s in teacher_states]
    assert float(hidden_state_loss(states, shifted, mask, [0, 1, 2])) == pytest.approx(0.0, abs=1e-10)


def test_the_trainer_adds_the_weighted_hidden_term_and_nothing_at_weight_zero(tiny_model_dir, tiny_batch, tmp_path):
    import copy

    import torch
    from transformers import TrainingArguments

    from sentitune.config import DistillConfig
    from sentitune.trainer import MeasuredTrainer, Meter, distillation_loss, hidden_state_loss
    from sentitune.training import Teacher, hidden_matching

    torch.manual_seed(0)
    student = _tiny_classifier(tiny_model_dir).eval()
    teacher_model = copy.deepcopy(student)
    with torch.no_grad():
        for parameter in teacher_model.bert.encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    teacher = Teacher(logits=lambda texts: None, label_names=["negative", "positive"], model=teacher_model)
    assert hidden_matching(teacher, DistillConfig(teacher="t"), student) is None  # the default: off

    def loss_with(matching) -> float:
        args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
        trainer = MeasuredTrainer(
            model=student, args=args, meter=Meter(0), sampler_seed=0, distillation=(0.5, 2.0), hidden_matching=matching
        )
        with torch.no_grad():
            return float(trainer.compute_loss(student, dict(tiny_batch)))

    inputs = {k: v for k, v in tiny_batch.items() if k not in ("labels", "teacher_logits")}
    with torch.no_grad():
        outputs = student(**inputs, output_hidden_states=True)
        before = float(distillation_loss(outputs.logits, tiny_batch["teacher_logits"], tiny_batch["labels"], 0.5, 2.0))
        teacher_states = teacher_model(**inputs, output_hidden_states=True).hidden_states
        hidden = float(hidden_state_loss(outputs.hidden_states, teacher_states, inputs["attention_mask"], [0, 2, 2]))
    assert loss_with(None) == pytest.approx(before, rel=1e-6)
    matching = hidden_matching(teacher, DistillConfig(teacher="t", hidden_weight=3.0, hidden_layers=[0, 2, 2]), student)
    assert matching.layer_map == [0, 2, 2]
    assert hidden > 0 and loss_with(matching) == pytest.approx(before + 3.0 * hidden, rel=1e-5)


def test_a_student_with_hidden_matching_from_a_lora_teacher(trained_run, tiny_model_dir, tmp_path, capsys):
    teacher = trained_run("lora")
    out = tmp_path / "student"
    argv = _argv(teacher, f"{tiny_model_dir}:layers=1", out, "--hidden-weight", "0.5", "--max-steps", "2")
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["teacher_method"] == "lora"
    assert metrics["distill_hidden_weight"] == 0.5 and metrics["distill_hidden_layers"] == [0, 2]
    assert math.isfinite(metrics["train_loss"])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["distill"]["hidden_weight"] == 0.5 and config["distill"]["hidden_layers"] == []


def test_hidden_matching_refusals_are_one_line_and_write_nothing(trained_run, tiny_model_dir, tmp_path, capsys):
    import torch
    from transformers import BertConfig, BertModel

    teacher = trained_run("full")
    student = f"{tiny_model_dir}:layers=1"
    for extra, message in [
        (["--set", "distill.hidden_layers=[0,5]"], "distill.hidden_layers: read only with distill.hidden_weight > 0"),
        (["--hidden-weight", "1", "--set", "distill.hidden_layers=[0,5]"], "5 is out of range for a 2-layer teacher"),
        (["--hidden-weight", "1", "--set", "distill.hidden_layers=[0,1,2]"], "3 entries for a 1-layer student"),
        (["--hidden-weight", "-1"], "distill.hidden_weight: must be >= 0"),
    ]:
        line = _refused(_argv(teacher, student, tmp_path / "out", *extra), capsys)
        assert message in line, line
    # Another width: refused (no projection is learned), naming both sizes.
    wide = tmp_path / "wide"
    torch.manual_seed(0)
    BertModel(
        BertConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    ).save_pretrained(wide)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, wide / name)
    line = _refused(_argv(teacher, wide, tmp_path / "out", "--hidden-weight", "1"), capsys)
    assert "distill.hidden_weight: the student's hidden size (48) differs from the teacher's (32)" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "students").exists()


# ---- attention matching (MiniLM style) ---------------------------------------------------------------


def test_the_attention_knobs_are_checked(tiny_config):
    from sentitune.config import ConfigError

    plain = tiny_config()
    student = plain.override({"distill.teacher": "runs/teacher"})
    on = student.override({"distill.attention_weight": 2.0, "distill.value_relation": False})
    assert on.fingerprint() == plain.fingerprint()
    assert on.to_dict()["distill"]["attention_weight"] == 2.0
    for overrides, message in [
        ({"distill.attention_weight": -0.5}, "distill.attention_weight: must be >= 0"),
        ({"distill.attention_weight": float("nan")}, "distill.attention_weight: must be a finite number"),
        ({"distill.value_relation": False}, "distill.value_relation: read only with distill.attention_weight > 0"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            student.override(overrides)
    with pytest.raises(ConfigError, match=re.escape("distill.attention_weight: read only with distill.teacher")):
        plain.override({"distill.attention_weight": 1.0})


def test_the_attention_kl_is_zero_for_identical_maps_positive_otherwise_and_ignores_padding():
    import torch

    from sentitune.trainer import attention_kl_loss

    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    scores = torch.randn(2, 3, 4, 4).masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    teacher, student = scores.softmax(-1), (scores * 0.5).softmax(-1)
    assert float(attention_kl_loss(teacher, teacher, mask)) == pytest.approx(0.0, abs=1e-7)
    kl = float(attention_kl_loss(student, teacher, mask))
    assert kl > 0
    # By hand: KL per (row, head, real query), averaged over heads and the 5 real queries.
    per_query = (teacher * (teacher.clamp_min(1e-30).log() - student.clamp_min(1e-30).log())).sum(-1)
    expected = sum(float(per_query[b, :, : int(mask[b].sum())].sum()) for b in range(2)) / (5 * 3)
    assert kl == pytest.approx(expected, rel=1e-5)
    # Padded queries are left out: what either side holds there does not change the term.
    garbage = student.clone()
    garbage[1, :, 2:] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert float(attention_kl_loss(garbage, teacher, mask)) == pytest.approx(kl, rel=1e-6)


def test_the_recorded_relations_are_the_models_own_attention(tiny_model_dir, tiny_batch):
    """The hooks' query/key relation of the last layer equals what eager attention returns for it (in
    eval mode, where no dropout applies), under the SDPA attention the model was loaded with."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from sentitune.trainer import LastLayerAttention

    model = _tiny_classifier(tiny_model_dir).eval()
    assert model.config._attn_implementation == "sdpa"
    inputs = {k: v for k, v in tiny_batch.items() if k not in ("labels", "teacher_logits")}
    recorder = LastLayerAttention(model, model.config.num_attention_heads)
    with torch.no_grad():
        model(**inputs)  # not recording: nothing is kept
        assert recorder.outputs == {}
        with recorder.recording():
            model(**inputs)
    attention, values = recorder.relations(inputs["attention_mask"], values=True)
    assert recorder.outputs == {}  # released
    eager = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = eager.eval()(**inputs, output_attentions=True).attentions[-1]
    mask = inputs["attention_mask"]
    real = mask[:, None, :, None].bool() & mask[:, None, None, :].bool()
    assert torch.allclose(attention[real.expand_as(attention)], expected[real.expand_as(expected)], atol=1e-5)
    assert values.shape == attention.shape and torch.allclose(values.sum(-1), torch.ones(values.shape[:-1]))


def _teacher_calls(model) -> list[int]:
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, output: calls.append(1))
    return calls


def test_the_trainer_adds_the_weighted_attention_term_and_runs_the_teacher_once(tiny_model_dir, tiny_batch, tmp_path):
    import copy

    import torch
    from transformers import TrainingArguments

    from sentitune.config import DistillConfig
    from sentitune.trainer import MeasuredTrainer, Meter, attention_kl_loss, distillation_loss, self_relation
    from sentitune.training import Teacher, hidden_matching

    torch.manual_seed(0)
    student = _tiny_classifier(tiny_model_dir).eval()
    teacher_model = copy.deepcopy(student)
    with torch.no_grad():
        for parameter in teacher_model.bert.encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    calls = _teacher_calls(teacher_model)
    teacher = Teacher(logits=lambda texts: None, label_names=["negative", "positive"], model=teacher_model)

    def loss_with(matching) -> float:
        args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
        trainer = MeasuredTrainer(
            model=student, args=args, meter=Meter(0), sampler_seed=0, distillation=(0.5, 2.0), hidden_matching=matching
        )
        with torch.no_grad():
            return float(trainer.compute_loss(student, dict(tiny_batch)))

    # Off (both weights 0): no matching, and the teacher's model is not run on the batch.
    assert hidden_matching(teacher, DistillConfig(teacher="t"), student) is None
    inputs = {k: v for k, v in tiny_batch.items() if k not in ("labels", "teacher_logits")}
    with torch.no_grad():
        logits = student(**inputs).logits
    before = float(distillation_loss(logits, tiny_batch["teacher_logits"], tiny_batch["labels"], 0.5, 2.0))
    assert loss_with(None) == pytest.approx(before, rel=1e-6) and calls == []

    # By hand: the last layer's query/key and value/value relations of both models.
    def relations(model):
        kept = {}
        layer = model.bert.encoder.layer[-1].attention.self
        hooks = [
            getattr(layer, name).register_forward_hook(lambda m, a, out, name=name: kept.__setitem__(name, out))
            for name in ("query", "key", "value")
        ]
        with torch.no_grad():
            model(**inputs)
        for hook in hooks:
            hook.remove()
        mask, heads = inputs["attention_mask"], model.config.num_attention_heads
        attention = self_relation(kept["query"], kept["key"], mask, heads)
        return attention, self_relation(kept["value"], kept["value"], mask, heads)

    (s_attn, s_values), (t_attn, t_values) = relations(student), relations(teacher_model)
    mask = inputs["attention_mask"]
    attention = float(attention_kl_loss(s_attn, t_attn, mask))
    value = float(attention_kl_loss(s_values, t_values, mask))
    assert attention > 0 and value > 0
    calls.clear()

    matching = hidden_matching(teacher, DistillConfig(teacher="t", attention_weight=2.0), student)
    assert matching.layer_map is None
    assert loss_with(matching) == pytest.approx(before + 2.0 * (attention + value), rel=1e-5)
    assert calls == [1]  # once per batch
    only = hidden_matching(teacher, DistillConfig(teacher="t", attention_weight=2.0, value_relation=False), student)
    assert loss_with(only) == pytest.approx(before + 2.0 * attention, rel=1e-5)
    # With hidden matching as well, the teacher still runs once per batch for both terms.
    calls.clear()
    both = hidden_matching(teacher, DistillConfig(teacher="t", hidden_weight=1.0, attention_weight=2.0), student)
    assert loss_with(both) > before + 2.0 * (attention + value) and calls == [1]


def test_the_student_learns_the_attention_term(tiny_model_dir, tiny_batch):
    import copy

    import torch

    from sentitune.trainer import HiddenMatching

    torch.manual_seed(0)
    student = _tiny_classifier(tiny_model_dir).train()  # attention dropout on: the term stays finite
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for parameter in teacher.bert.encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    matching = HiddenMatching(teacher, 0.0, None, attention_weight=1.0, student=student)
    inputs = {k: v for k, v in tiny_batch.items() if k not in ("labels", "teacher_logits")}
    with matching.recording_student():
        student(**inputs)
    loss = matching.loss(inputs)
    assert math.isfinite(float(loss)) and float(loss) > 0
    loss.backward()
    last = student.bert.encoder.layer[-1].attention.self
    assert all(float(getattr(last, name).weight.grad.abs().sum()) > 0 for name in ("query", "key", "value"))
    assert all(p.grad is None for p in teacher.parameters())


def test_a_student_with_attention_matching(trained_run, tiny_model_dir, tmp_path, capsys):
    teacher = trained_run("full")
    out = tmp_path / "student"
    argv = _argv(teacher, f"{tiny_model_dir}:layers=1", out, "--attention-weight", "0.5", "--max-steps", "2")
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and math.isfinite(metrics["train_loss"])
    assert metrics["distill_attention_weight"] == 0.5 and metrics["distill_hidden_layers"] is None
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["distill"]["attention_weight"] == 0.5 and config["distill"]["value_relation"] is True


def test_attention_matching_refusals_are_one_line_and_write_nothing(trained_run, tiny_model_dir, tmp_path, capsys):
    import torch
    from transformers import BertConfig, BertModel

    teacher = trained_run("full")
    line = _refused(_argv(teacher, f"{tiny_model_dir}:layers=1", tmp_path / "out", "--attention-weight", "-1"), capsys)
    assert "distill.attention_weight: must be >= 0" in line
    # Another number of heads (same width): refused, naming both counts.
    heads = tmp_path / "heads"
    torch.manual_seed(0)
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    ).save_pretrained(heads)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, heads / name)
    line = _refused(_argv(teacher, heads, tmp_path / "out", "--attention-weight", "1"), capsys)
    assert "distill.attention_weight: the student has 2 attention heads, the teacher 4" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "students").exists()


# ---- a student run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student(trained_run, tiny_model_dir, tiny_data, tmp_path_factory):
    """(teacher run, student run): the tiny model shrunk to 1 layer, distilled from a tiny full run,
    with a few unlabelled texts."""
    teacher = trained_run("full")
    folder = tmp_path_factory.mktemp("distill")
    unlabelled = folder / "more.txt"
    unlabelled.write_text("a witty , warm film\n\n   \nflat and dull\nsuperb\n", encoding="utf-8")
    out = folder / "student"
    argv = ["distill", "--teacher", str(teacher), "--student", f"{tiny_model_dir}:layers=1", "--output-dir", str(out)]
    argv += ["--unlabelled", str(unlabelled), "--alpha", "0.7", "--temperature", "3", "--seed", "7"]
    assert main(argv) == 0
    return teacher, out


def test_the_student_is_a_normal_run_that_names_its_teacher(student):
    teacher, out = student
    metrics = json.loads((out / "metrics.json").read_text())
    teacher_metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["method"] == "full"
    assert metrics["teacher_run"] == str(teacher)
    assert metrics["teacher_method"] == "full"
    assert metrics["teacher_test_accuracy"] == teacher_metrics["test_accuracy"]
    assert metrics["distill_unlabelled_examples"] == 3  # the blank lines are not texts
    assert metrics["distill_student"].endswith(":layers=1")
    assert metrics["distill_labelled_examples"] == metrics["train_examples"]
    # Half the layers of the 2-layer teacher model: fewer parameters.
    assert metrics["params_total"] < teacher_metrics["params_total"]

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["distill"] == {
        "teacher": str(teacher),
        "alpha": 0.7,
        "temperature": 3.0,
        "unlabelled": str(out.parent / "more.txt"),
        "unlabelled_column": None,
        "unlabelled_unit": "text",
        "unlabelled_limit": None,
        "hidden_weight": 0.0,
        "hidden_layers": [],
        "attention_weight": 0.0,
        "value_relation": True,
    }
    assert metrics["distill_hidden_weight"] == 0.0 and metrics["distill_hidden_layers"] is None
    assert metrics["distill_attention_weight"] == 0.0
    assert config["train"]["seed"] == 7
    assert json.loads((Path(config["model"]) / "shrink.json").read_text())["layers_kept"] == 1
    # The student trained on the teacher's data: same test rows.
    teacher_config = yaml.safe_load((teacher / "config.yaml").read_text())
    assert config["data"] == teacher_config["data"]


def test_agreement_and_mcnemar_match_the_two_runs_predictions(student):
    from sentitune.metrics import mcnemar
    from sentitune.results import load_predictions

    teacher, out = student
    metrics = json.loads((out / "metrics.json").read_text())
    mine, theirs = load_predictions(out), load_predictions(teacher)
    assert mine.texts == theirs.texts
    agreement = float(np.mean(np.asarray(mine.predicted) == np.asarray(theirs.predicted)))
    assert metrics["teacher_agreement"] == pytest.approx(agreement)
    assert metrics["teacher_paired_accuracy"] == pytest.approx(metrics["teacher_test_accuracy"])
    expected = mcnemar(theirs.correct, mine.correct)
    assert metrics["teacher_mcnemar_p_value"] == pytest.approx(expected["p_value"])
    assert (metrics["teacher_only_correct"], metrics["student_only_correct"]) == (
        expected["a_only_correct"],
        expected["b_only_correct"],
    )


def test_predict_and_evaluate_read_the_student(student, tiny_data, capsys):
    _, out = student
    metrics = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["predict", str(out), "a gorgeous , witty film", "a dull , lifeless mess"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(row["label"] in ("negative", "positive") for row in rows)
    assert main(["evaluate", str(out), "--data", str(tiny_data["test"])]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_train_of_a_config_with_a_distill_section_distils(student, tmp_path, monkeypatch, capsys):
    """compare runs every variant through `sentitune train --config`: a saved student config must
    reach distill, not train without its teacher."""
    import sentitune.distill
    from sentitune.config import ConfigError, RunConfig
    from sentitune.training import train

    _, out = student
    calls = []

    def fake(cfg, output_dir, **kwargs):
        calls.append((cfg.distill.teacher, str(output_dir)))
        return {"method": cfg.method.name, "dataset": cfg.data.dataset, "model": cfg.model}

    monkeypatch.setattr(sentitune.distill, "distill", fake)
    assert main(["train", "--config", str(out / "config.yaml"), "--output-dir", str(tmp_path / "again")]) == 0
    saved = RunConfig.from_yaml(out / "config.yaml")
    assert calls == [(saved.distill.teacher, str(tmp_path / "again"))]
    with pytest.raises(ConfigError, match="distill.teacher: set, but no teacher was loaded"):
        train(saved, tmp_path / "plain")
    assert not (tmp_path / "plain").exists()


# ---- bad input: one line each, nothing written ----------------------------------------------------


def _refused(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("sentitune distill: error: "), lines
    return lines[0]


def _argv(teacher, student, out, *extra) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--student", str(student), "--output-dir", str(out), *extra]


def _copy(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    return target


def test_a_folder_that_is_not_a_run(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "notes").mkdir()
    line = _refused(_argv(tmp_path / "notes", tiny_model_dir, tmp_path / "out"), capsys)
    assert str(tmp_path / "notes") in line and "not a run folder" in line
    line = _refused(_argv(tmp_path / "missing", tiny_model_dir, tmp_path / "out"), capsys)
    assert "run folder not found" in line
    assert not (tmp_path / "out").exists()


def test_a_teacher_whose_status_is_not_ok(trained_run, tmp_path, tiny_model_dir, capsys):
    teacher = _copy(trained_run("full"), tmp_path / "failed")
    metrics = json.loads((teacher / "metrics.json").read_text())
    (teacher / "metrics.json").write_text(json.dumps({**metrics, "status": "failed", "error": "boom"}))
    line = _refused(_argv(teacher, tiny_model_dir, tmp_path / "out"), capsys)
    assert "run status is 'failed'" in line and str(teacher) in line
    assert not (tmp_path / "out").exists()


def test_a_multi_label_teacher(trained_run, tmp_path, tiny_model_dir, capsys):
    teacher = _copy(trained_run("full"), tmp_path / "multi")
    config = yaml.safe_load((teacher / "config.yaml").read_text())
    config["data"]["problem_type"] = "multi_label"
    (teacher / "config.yaml").write_text(yaml.safe_dump(config))
    line = _refused(_argv(teacher, tiny_model_dir, tmp_path / "out"), capsys)
    assert "multi_label" in line and "single_label" in line
    assert not (tmp_path / "out").exists()


def test_a_student_with_another_vocabulary(trained_run, tmp_path, tiny_model_dir, capsys):
    from transformers import AutoTokenizer

    other = shutil.copytree(tiny_model_dir, tmp_path / "other-vocab")
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["zzyzx"])  # one token more than the teacher's bert-base-uncased vocabulary
    tokenizer.save_pretrained(other)
    line = _refused(_argv(trained_run("full"), other, tmp_path / "out"), capsys)
    assert "tokenizer vocabulary (30523 tokens)" in line and "'zzyzx' is only in the student's" in line
    assert not (tmp_path / "out").exists()


def test_an_unlabelled_file_without_text(trained_run, tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "blank.txt"
    empty.write_text("\n   \n\t\n", encoding="utf-8")
    line = _refused(_argv(trained_run("full"), tiny_model_dir, tmp_path / "out", "--unlabelled", str(empty)), capsys)
    assert str(empty) in line and "no usable text" in line
    line = _refused(_argv(trained_run("full"), tiny_model_dir, tmp_path / "out", "--alpha", "2"), capsys)
    assert "distill.alpha" in line
    line = _refused(_argv(trained_run("full"), f"{tiny_model_dir}:layers=5", tmp_path / "out"), capsys)
    assert f"model {tiny_model_dir}:layers=5: must be between 1 and 1" in line
    assert not (tmp_path / "students").exists()
    assert not (tmp_path / "out").exists()


# ---- compare: distill:TEACHER->lK variants ----------------------------------------------------------


def _comparison_config(tiny_config, methods, **compare_section):
    cfg = tiny_config("full", **{"train.max_steps": 2})
    section = {"methods": methods, "seeds": [1], "suites": [], **compare_section}
    return cfg.override({f"compare.{k}": v for k, v in section.items()})


def test_compare_runs_a_student_after_its_teacher_and_reports_it(tiny_config, tmp_path):
    from sentitune import compare
    from sentitune.reporting.render import build_report

    cfg = _comparison_config(tiny_config, ["full", "distill:full->l1"])
    lines: list[str] = []
    # Two at a time: the student must still wait for its teacher.
    document = compare.run_comparison(cfg, tmp_path, parallel=2, echo=lines.append)
    rows = {r["run_name"]: r for r in document["runs"]}
    assert [r["status"] for r in rows.values()] == ["ok", "ok"], rows
    teacher, student = rows["full-s1"], rows["distill-full-l1-s1"]
    started = next(i for i, line in enumerate(lines) if "distill-full-l1-s1: training" in line)
    finished = next(i for i, line in enumerate(lines) if line.strip().startswith("full-s1: ok"))
    assert finished < started, lines
    teacher_done = (tmp_path / "runs" / "full-s1" / "metrics.json").stat().st_mtime
    assert (tmp_path / "logs" / "distill-full-l1-s1.config.yaml").stat().st_mtime >= teacher_done

    assert student["teacher_variant"] == "full" and "teacher_variant" not in teacher
    assert student["teacher_run"] == str(tmp_path / "runs" / "full-s1")
    assert 0 <= student["teacher_agreement"] <= 1 and 0 <= student["teacher_mcnemar_p_value"] <= 1
    assert student["teacher_test_accuracy"] == teacher["test_accuracy"]
    assert student["params_total"] < teacher["params_total"]  # 1 of the tiny model's 2 layers
    assert document["fingerprint"] == cfg.fingerprint()
    csv_header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert {"teacher_variant", "teacher_agreement", "teacher_mcnemar_p_value"} <= set(csv_header)

    markdown = build_report(tmp_path)[0].read_text()
    section = markdown.split("## Distilled students", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| distill-full-l1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "full"
    assert cells[2] == f"{100 * student['test_accuracy']:.2f}" and cells[3] == f"{100 * teacher['test_accuracy']:.2f}"
    assert cells[4] == f"{100 * student['teacher_agreement']:.1f}"
    assert cells[5] == f"{student['teacher_mcnemar_p_value']:.3g}"

    # Resumed: both runs are finished, so nothing trains again (the student's scaffolding is its teacher's).
    again: list[str] = []
    compare.run_comparison(cfg, tmp_path, echo=again.append)
    assert not any("training ..." in line for line in again), again
    assert any("2 of 2 runs already finished" in line for line in again)


def test_a_student_whose_teacher_failed_fails_unstarted(tiny_config, tmp_path, monkeypatch):
    import subprocess
    import sys

    from sentitune import compare

    real = compare._run_one

    def teacher_crashes(run, out):
        if run.teacher is None:
            folder = out / "runs" / run.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text(run.config.to_yaml(), encoding="utf-8")
            return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        return real(run, out)

    monkeypatch.setattr(compare, "_run_one", teacher_crashes)
    cfg = _comparison_config(tiny_config, ["full", "distill:full->l1"])
    document = compare.run_comparison(cfg, tmp_path, echo=lambda *_: None)
    teacher, student = document["runs"]
    assert teacher["status"] == "failed" and "exited with code 3" in teacher["error"]
    assert student["status"] == "failed" and student["teacher_variant"] == "full"
    assert student["error"] == "its teacher full-s1 did not finish ok (see its row); not started"
    assert not (tmp_path / "logs" / "distill-full-l1-s1.log").exists()


def test_compare_distill_variants_are_checked_before_any_run(tiny_config, tmp_path):
    from sentitune import compare
    from sentitune.config import ConfigError

    for methods, message in [
        (["full", "distill:lora->l1"], "compare.methods: distill:lora->l1: its teacher 'lora' is not a method"),
        (["full", "tfidf", "distill:tfidf->l1"], "distill:tfidf->l1: tfidf has no neural network to distil from"),
        (["full", "distill:full->l0"], "compare.methods: 'distill:full->l0': expected distill:TEACHER->lK"),
        (["full", "distill:full->small"], "expected distill:TEACHER->lK with K >= 1"),
        (["full", "distill:->l1"], "expected distill:TEACHER->lK"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)) as caught:
            _comparison_config(tiny_config, methods)
        assert "\n" not in str(caught.value)
    # As many layers as the tiny model has: refused when the comparison starts, before any training.
    cfg = _comparison_config(tiny_config, ["full", "distill:full->l2"])
    with pytest.raises(ConfigError, match=r"^compare\.methods: distill-full-l2: model .*:layers=2: must be between 1"):
        compare.run_comparison(cfg, tmp_path, echo=lambda *_: None)
    assert not list((tmp_path / "logs").glob("*.log"))


def test_compare_tune_does_not_search_a_student(tiny_config, tmp_path, monkeypatch):
    from sentitune import compare, tuning

    cfg = _comparison_config(tiny_config, ["tfidf", "full", "distill:full->l1"], tune=["learning_rate"])
    searched = []
    monkeypatch.setattr(tuning, "run_search", lambda name, *a, **k: searched.append(name) or {"selected": None})
    records = compare.run_searches(cfg, tmp_path, echo=lambda *_: None)
    assert records["distill-full-l1"]["budget"] == 0 and "not searched" in records["distill-full-l1"]["note"]
    assert [name.split(":")[0] for name in searched] == ["full"]
