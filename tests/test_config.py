"""Typed configs: defaults, YAML, unknown keys, type and value checks, overrides, presets, fingerprints."""

from __future__ import annotations

import re

import pytest

from sentitune.config import (
    ConfigError,
    RunConfig,
    load_config,
    preset_names,
    scaffolding_differences,
)
from sentitune.methods import registry


def test_defaults_are_valid():
    cfg = RunConfig()
    assert cfg.method.name == "full"
    assert cfg.train.batch_size == 32
    assert cfg.data.resolved_max_length == 128
    # Round trip through the resolved YAML that every run folder gets.
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_yaml_file_holds_only_differences(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: minilm-l6\nmethod:\n  name: lora\n  lora_r: 4\ntrain:\n  epochs: 1.5\n")
    cfg = RunConfig.from_yaml(path)
    assert (cfg.model, cfg.method.name, cfg.method.lora_r, cfg.train.epochs) == ("minilm-l6", "lora", 4, 1.5)
    assert cfg.train.batch_size == RunConfig().train.batch_size
    assert RunConfig.from_yaml(tmp_path / "run.yaml") == RunConfig.from_yaml(path)


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(overrides={"method.name": "lora", "method.lora_target_modules": "query,key,value"})
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert RunConfig.from_yaml(path) == cfg


@pytest.mark.parametrize(
    "text, named",
    [
        ("modle: minilm-l6\n", "modle"),
        ("train:\n  epoch: 3\n", "train.epoch"),
        ("data:\n  datset: sst2\n", "data.datset"),
        ("method:\n  lora_rank: 8\n", "method.lora_rank"),
    ],
)
def test_unknown_keys_fail_naming_the_key(tmp_path, text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"unknown key {named}\b"):
        RunConfig.from_yaml(path)


@pytest.mark.parametrize(
    "raw, named",
    [
        ({"train": {"batch_size": "big"}}, "train.batch_size"),
        ({"train": {"epochs": "three"}}, "train.epochs"),
        ({"train": {"length_grouped": "maybe"}}, "train.length_grouped"),
        ({"train": {"batch_size": True}}, "train.batch_size"),
        ({"method": {"lora_r": 2.5}}, "method.lora_r"),
        ({"method": {"lora_target_modules": 3}}, "method.lora_target_modules"),
        ({"train": 5}, "train"),
    ],
)
def test_wrong_types_fail_naming_the_field(raw, named):
    with pytest.raises(ConfigError, match=rf"{named}\b"):
        RunConfig.from_dict(raw)


def test_wrong_type_in_yaml_names_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text('train:\n  batch_size: "big"\n')
    with pytest.raises(ConfigError) as info:
        RunConfig.from_yaml(path)
    assert str(path) in str(info.value) and "train.batch_size" in str(info.value) and "'big'" in str(info.value)


@pytest.mark.parametrize(
    "raw, named",
    [
        ({"method": {"learning_rate": -1e-5}}, "method.learning_rate"),
        ({"method": {"learning_rate": 0}}, "method.learning_rate"),
        ({"method": {"name": "adapters"}}, "method.name"),
        ({"method": {"head": "everything"}}, "method.head"),
        ({"method": {"lora_dropout": 1.0}}, "method.lora_dropout"),
        ({"method": {"tfidf_word_ngrams": [3, 1]}}, "method.tfidf_word_ngrams"),
        ({"data": {"truncation": "middle"}}, "data.truncation"),
        ({"data": {"dataset": "yelp"}}, "data.dataset"),
        ({"data": {"max_length": 1024}}, "data.max_length"),
        ({"data": {"validation_size": 10.5}}, "data.validation_size"),
        ({"data": {"dataset": "files", "train_file": "a.csv"}}, "data.train_file"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"train": {"max_steps": 0}}, "train.max_steps"),
        ({"train": {"warmup_ratio": 1.0}}, "train.warmup_ratio"),
        ({"train": {"precision": "int4"}}, "train.precision"),
        ({"train": {"eval_strategy": "steps"}}, "train.eval_steps"),
    ],
)
def test_bad_values_fail_naming_the_field(raw, named):
    with pytest.raises(ConfigError, match=rf"{named}\b"):
        RunConfig.from_dict(raw)


def test_method_choices_come_from_the_registry():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"method": {"name": "nope"}})
    for name in registry.names():
        assert name in str(info.value)


def test_invalid_yaml_reports_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        RunConfig.from_yaml(path)


def test_missing_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.from_yaml(tmp_path / "absent.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        RunConfig.from_yaml(path)


def test_cli_style_overrides_are_coerced():
    # The CLI passes strings (and --set values parsed as YAML scalars): types come from the dataclasses.
    cfg = load_config(
        overrides={
            "method.name": "lora",
            "method.lora_target_modules": "query, key,value",
            "train.batch_size": "16",
            "train.epochs": "0.5",
            "train.length_grouped": "false",
            "data.label_names": "neg,pos",
            "method.learning_rate": None,  # unset flags are skipped
        }
    )
    assert cfg.method.lora_target_modules == ["query", "key", "value"]
    assert cfg.train.batch_size == 16 and cfg.train.epochs == 0.5 and cfg.train.length_grouped is False
    assert cfg.data.label_names == ["neg", "pos"]
    assert cfg.method.learning_rate is None
    assert cfg.learning_rate == registry.get("lora").default_learning_rate


def test_overrides_apply_on_top_of_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 2\n  batch_size: 8\n")
    cfg = load_config(path, overrides={"train.epochs": 1})
    assert (cfg.train.epochs, cfg.train.batch_size) == (1.0, 8)


@pytest.mark.parametrize(
    "key, named",
    [
        ("train.epoch", "train.epoch"),
        ("trian.epochs", "trian"),
        ("model.name", "model"),
    ],
)
def test_unknown_override_keys_fail(key, named):
    with pytest.raises(ConfigError, match=rf"{named}\b"):
        load_config(overrides={key: 1})


def test_bad_override_value_names_the_field():
    with pytest.raises(ConfigError, match=r"train\.batch_size.*'big'"):
        load_config(overrides={"train.batch_size": "big"})


def test_config_and_preset_are_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="--config"):
        load_config(tmp_path / "x.yaml", "sst2-quick")
    with pytest.raises(ConfigError, match="sst2-quick"):  # the error lists what exists
        load_config(preset="sst2-quik")


def test_presets_are_shipped():
    assert {"sst2-quick", "sst2-standard", "sst2-paper", "imdb-quick"} <= set(preset_names())


@pytest.mark.parametrize("preset", preset_names())
def test_every_shipped_preset_loads(preset):
    cfg = load_config(preset=preset)
    assert cfg != RunConfig(), "a preset should differ from the defaults"
    # Presets are diffs from the defaults: the resolved config must survive a round trip.
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_fingerprint_ignores_method_and_seed():
    base = load_config(preset="sst2-quick")
    for overrides in (
        {"method.name": "lora"},
        {"train.seed": 7},
        {"method.name": "tfidf", "train.seed": 1},
        {"method.learning_rate": 1e-4},
        # Where the curves are logged is not part of the experiment.
        {"train.report_to": ["tensorboard", "wandb"], "train.run_name": "sweep-3"},
    ):
        assert base.override(overrides).fingerprint() == base.fingerprint(), overrides


@pytest.mark.parametrize(
    "report_to, message",
    [
        (["tensorboard", "comet"], "train.report_to: 'comet' is not one of none, tensorboard, mlflow, wandb, trackio"),
        (["none", "tensorboard"], "train.report_to: 'none' cannot be combined with trackers"),
        (["wandb", "wandb"], "train.report_to: duplicates"),
    ],
)
def test_report_to_names_known_trackers_once(report_to, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig().override({"train.report_to": report_to})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.class_weights": "heavy"}, "train.class_weights: 'heavy' is not none, balanced or a list of weights"),
        ({"train.class_weights": [1.0, -2.0]}, "train.class_weights: must be > 0, got -2.0"),
        ({"train.best_metric": "f1"}, "train.best_metric: 'f1' is not one of accuracy, macro_f1,"),
        (
            {"train.best_metric": "macro_f1", "train.eval_strategy": "no"},
            "train.best_metric: needs train.eval_strategy",
        ),
        ({"train.early_stopping_patience": 0}, "train.early_stopping_patience: must be > 0, got 0"),
        (
            {"train.early_stopping_patience": 2, "train.eval_strategy": "no"},
            "train.early_stopping_patience: needs train.eval_strategy",
        ),
        (
            {"train.class_weights": "balanced", "data.problem_type": "multi_label"},
            "train.class_weights: applies to single_label data",
        ),
    ],
)
def test_imbalance_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig().override(overrides)


def test_class_weights_read_from_a_set_string_and_best_metric_auto_is_its_metric():
    base = RunConfig()
    assert base.override({"train.class_weights": "1,9"}).train.class_weights == [1.0, 9.0]
    assert base.best_metric == "accuracy"
    assert base.override({"data.problem_type": "multi_label"}).best_metric == "micro_f1"
    # `auto` and the metric it stands for are one experiment; another metric is another.
    assert base.override({"train.best_metric": "accuracy"}).fingerprint() == base.fingerprint()
    assert base.override({"train.best_metric": "macro_f1"}).fingerprint() != base.fingerprint()
    assert base.override({"train.class_weights": "balanced"}).fingerprint() != base.fingerprint()


def test_report_to_takes_a_comma_separated_string():
    cfg = RunConfig().override({"train.report_to": "tensorboard,mlflow"})
    assert cfg.train.report_to == ["tensorboard", "mlflow"]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"train.batch_size": 7}, "train.batch_size"),  # odd values: never a preset's own
        ({"data.train_subset": 333}, "data.train_subset"),
        ({"model": "bert-base-uncased"}, "model"),
        ({"data.split_seed": 1}, "data.split_seed"),
    ],
)
def test_fingerprint_changes_with_scaffolding(overrides, field):
    base = load_config(preset="sst2-quick")
    other = base.override(overrides)
    assert other.fingerprint() != base.fingerprint()
    differences = scaffolding_differences(base.scaffolding(), other.scaffolding())
    assert len(differences) == 1 and differences[0].startswith(f"{field} ("), differences


def test_fingerprint_uses_resolved_max_length():
    # sst2 defaults to 128 tokens: saying so explicitly is the same experiment.
    implicit = RunConfig()
    explicit = implicit.override({"data.max_length": 128})
    assert implicit.fingerprint() == explicit.fingerprint()
    assert scaffolding_differences(implicit.scaffolding(), explicit.scaffolding()) == []


def test_yaml_no_is_a_string_not_a_boolean(tmp_path):
    # YAML 1.1 reads `no` as false; `eval_strategy: no` is a documented value.
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  eval_strategy: no\n  length_grouped: false\n  gradient_checkpointing: yes\n")
    cfg = RunConfig.from_yaml(path)
    assert cfg.train.eval_strategy == "no"
    assert cfg.train.length_grouped is False and cfg.train.gradient_checkpointing is True
