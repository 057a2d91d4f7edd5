"""diffusion_align.inputs: prompt files and suites, pipeline loading errors, seeded noise."""

import pytest
import torch

from diffusion_align.inputs import load_pipeline, noise_for_seeds, read_prompts


def test_read_prompts_suites_jsonl_and_text(tmp_path):
    train = read_prompts("shapes:train")
    assert read_prompts("train") == train and len(train) > 100
    assert len(read_prompts("shapes:eval")) == 432
    (tmp_path / "p.jsonl").write_text('{"prompt": "an astronaut riding a horse"}\n\n{"prompt": "a red circle", "x": 1}\n')
    assert read_prompts(str(tmp_path / "p.jsonl")) == ["an astronaut riding a horse", "a red circle"]  # any prompt, not only ShapesWorld
    (tmp_path / "p.txt").write_text("  a cat \n\na dog\n")
    assert read_prompts(str(tmp_path / "p.txt")) == ["a cat", "a dog"]


@pytest.mark.parametrize("content,suffix,match", [
    (None, ".txt", "no such file"),
    ("\n\n", ".txt", "holds no prompts"),
    ('{"text": "a cat"}\n', ".jsonl", "'prompt' field"),
    ('{"prompt": "  "}\n', ".jsonl", "prompt 0 is empty"),
])
def test_read_prompts_errors_name_the_problem(tmp_path, content, suffix, match):
    path = tmp_path / f"p{suffix}"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_prompts(str(path))
    with pytest.raises(ValueError, match="unknown ShapesWorld suite"):
        read_prompts("shapes:test")


def test_missing_pipeline_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        load_pipeline(str(tmp_path / "nope"))


def test_noise_for_seeds_is_per_seed_and_batch_independent():
    a = noise_for_seeds((3, 4, 8, 8), [5, 6, 5])
    assert a.shape == (3, 4, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    assert torch.equal(noise_for_seeds((1, 4, 8, 8), [6])[0], a[1])
    assert torch.equal(a[1], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(6)))


def test_load_pipeline_honours_dtype(tmp_path):
    """``dtype=`` reaches every component (diffusers >= 0.40 reads it; older releases ignored it silently)."""
    import torch

    from diffusion_align.embedded.shapes_t2i import build_components, save_pipeline

    save_pipeline(build_components(seed=0, tiny=True), tmp_path / "pipe")
    pipe = load_pipeline(str(tmp_path / "pipe"), dtype=torch.bfloat16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
