"""Name lookup: shipped models, local folders, and a clear error for anything else."""

import pytest

from zoo import MiniDiTPipeline, MiniFlowPipeline, list_models, load_pipeline
from zoo.registry import model_path


def test_list_models() -> None:
    assert list_models() == ["mini-dit-digits", "mini-flow-digits"]


def test_shipped_names_and_folders_load() -> None:
    assert isinstance(load_pipeline("mini-dit-digits"), MiniDiTPipeline)
    assert isinstance(load_pipeline("mini-flow-digits"), MiniFlowPipeline)
    assert isinstance(MiniFlowPipeline.from_pretrained(str(model_path("mini-flow-digits"))), MiniFlowPipeline)
    assert isinstance(load_pipeline(model_path("mini-dit-digits")), MiniDiTPipeline)  # a folder, by path


def test_unknown_name_offline_lists_shipped_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="mini-dit-digits, mini-flow-digits"):
        load_pipeline("no-such-org/no-such-model")


def test_shipped_weights_are_small_safetensors() -> None:
    for name in list_models():
        files = list(model_path(name).rglob("*"))
        weights = [f for f in files if f.suffix == ".safetensors"]
        assert weights and all(f.stat().st_size <= 10 * 1024 * 1024 for f in weights)
        assert not [f for f in files if f.suffix in (".bin", ".pt", ".pkl", ".ckpt")]
