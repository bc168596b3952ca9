from sentitune.training import train


def test_tiny_lora_run_writes_run_folder(tiny_config, tmp_path):
    metrics = train(tiny_config("lora"), tmp_path / "run")
    assert metrics["status"] == "ok"
    assert (tmp_path / "run" / "model" / "adapter_model.safetensors").exists()
