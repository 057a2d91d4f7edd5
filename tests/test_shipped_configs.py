"""Every config shipped in ``configs/`` passes the validator of the command it names, and the D3PO / DDPO
pair differs only where the methods do (the benchmark compares them on the same model, prompts and sampler)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from diffusion_align.config import SAMPLER_KEYS, ConfigError, DiffusionRLConfig
from diffusion_align.train import config_method, method_entry
from mmreward.train_reward import RewardTrainConfig
from vlm_rl.config import RLConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_class(path: Path):
    """The config class of the command the file's header names (``python -m vlm_rl.train``, ...); for
    ``diffusion_align/train.py``, the one its own dispatch on ``method`` picks."""
    text = path.read_text()
    if "mmreward.train_reward" in text:
        return RewardTrainConfig
    if "vlm_rl.train" in text:
        return RLConfig
    if "diffusion_align/train.py" in text:
        return method_entry(config_method(str(path), []))[0]
    raise AssertionError(f"{path.name}: its header names no known command")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_validates(path):
    cfg = config_class(path).from_yaml(path)
    assert vars(cfg) == {**vars(cfg), **yaml.safe_load(path.read_text())}  # every key of the file was taken as written


def test_config_directory_is_not_empty():
    assert len(list(CONFIGS.glob("*.yaml"))) >= 10


def test_d3po_and_ddpo_configs_match_where_the_comparison_needs_it():
    d3po, ddpo = (vars(DiffusionRLConfig.from_yaml(CONFIGS / f"{m}_shapes.yaml")) for m in ("d3po", "ddpo"))
    assert (d3po["method"], ddpo["method"]) == ("d3po", "ddpo")
    same = [*SAMPLER_KEYS, "prompts", "feedback", "samples_per_prompt", "sample_batch_size", "seed",
            "train_first_steps", "lora_rank", "lora_alpha", "learning_rate"]
    assert {k: d3po[k] for k in same} == {k: ddpo[k] for k in same}
    assert d3po["feedback"] == "evaluator:strict" and d3po["kl_coef"] == 20.0


def test_a_misspelt_key_in_a_shipped_config_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "d3po_shapes.yaml").read_text().replace("learning_rate:", "learnig_rate:"))
    with pytest.raises(ConfigError, match="learnig_rate"):
        DiffusionRLConfig.from_yaml(bad)
