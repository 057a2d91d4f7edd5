"""The embedded text-to-image architecture saves as a standard pipeline folder and samples through
``DiffusionPipeline.from_pretrained`` in one and several steps."""

import numpy as np
import pytest
import torch

from diffusion_align.embedded.shapes_t2i import build_components, save_pipeline
from mmreward.errors import UserError


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_shapes_t2i")
    save_pipeline(build_components(seed=0, tiny=True), folder)
    return folder


@pytest.mark.slow
def test_loads_as_stable_diffusion_pipeline(pipe_dir):
    from diffusers import DiffusionPipeline, LCMScheduler, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(pipe_dir)
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == 64
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert (pipe_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 4])
def test_samples_in_one_and_several_steps(pipe_dir, steps):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(pipe_dir)
    gen = torch.Generator().manual_seed(0)
    out = pipe(["a photo of a red circle", "a photo of two squares"], num_inference_steps=steps, guidance_scale=0.0,
               generator=gen, output_type="np")
    assert out.images.shape == (2, 64, 64, 3) and np.isfinite(out.images).all()
    again = pipe(["a photo of a red circle", "a photo of two squares"], num_inference_steps=steps, guidance_scale=0.0,
                 generator=torch.Generator().manual_seed(0), output_type="np")
    assert np.array_equal(out.images, again.images)  # seeded sampling is reproducible
    if steps == 4:
        assert len(pipe.scheduler.timesteps) == 4 and pipe.scheduler.timesteps[0] == 999


@pytest.mark.slow
def test_generate_cli_writes_the_evaluators_format(pipe_dir, tmp_path):
    import json

    from PIL import Image

    from mmreward.shapes.__main__ import main as shapes_cli

    suite = tmp_path / "p.jsonl"
    suite.write_text('{"prompt": "a photo of a red circle"}\n{"prompt": "a photo of two squares"}\n')
    out = tmp_path / "gen"
    shapes_cli(["generate", "--model", str(pipe_dir), "--prompts", str(suite), "--out", str(out), "--seeds", "2",
                "--batch", "3", "--quiet"])
    rows = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == ["00000_0.png", "00000_1.png", "00001_0.png", "00001_1.png"]
    assert rows[2]["prompt"] == "a photo of two squares"
    a, b, c = (np.asarray(Image.open(out / n)) for n in ("00000_0.png", "00000_1.png", "00001_0.png"))
    assert a.shape == (64, 64, 3) and not np.array_equal(a, b)  # seeds differ
    # seed s gives the same noise for every prompt (GenEval convention): rerun reproduces exactly
    shapes_cli(["generate", "--model", str(pipe_dir), "--prompts", str(suite), "--out", str(tmp_path / "g2"),
                "--seeds", "2", "--batch", "4", "--quiet"])
    # (batch size changes float summation order only: equal up to rounding)
    c2 = np.asarray(Image.open(tmp_path / "g2" / "00001_0.png")).astype(int)
    assert np.abs(c.astype(int) - c2).max() <= 2 and np.abs(c.astype(int) - b.astype(int)).mean() > 5
    shapes_cli(["evaluate", "--images", str(out), "--out", str(tmp_path / "r.json"), "--quiet"])
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 4
    with pytest.raises(UserError, match="could not load a diffusers pipeline"):
        shapes_cli(["generate", "--model", str(tmp_path / "nope"), "--prompts", str(suite), "--out", str(tmp_path / "g3")])


def test_sample_pipeline_rejects_empty_prompts(pipe_dir):
    from diffusers import DiffusionPipeline

    from mmreward.shapes.generate import sample_pipeline

    pipe = DiffusionPipeline.from_pretrained(pipe_dir)
    with pytest.raises(ValueError, match="empty prompt"):
        list(sample_pipeline(pipe, ["a photo of a red circle", "  "]))
    with pytest.raises(ValueError, match="no prompts"):
        list(sample_pipeline(pipe, []))
    got = [(i, s) for i, s, _ in sample_pipeline(pipe, ["a photo of a star", "a photo of a circle"], seeds=3, batch=4,
                                                 progress=False)]
    assert got == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    # a repeated prompt continues with new seeds (repeats are new samples); a first occurrence keeps
    # GenEval's seeds 0..n-1 whatever else is in the list
    def images(prompts, seeds):
        return [np.asarray(im).astype(int) for _, _, im in sample_pipeline(pipe, prompts, seeds=seeds, progress=False)]

    once, twice = images(["a photo of a star"], 2), images(["a photo of a star", "a photo of a circle", "a photo of a star"], 1)
    assert np.abs(twice[0] - once[0]).max() <= 2 and np.abs(twice[2] - once[1]).max() <= 2
    assert np.abs(twice[2] - twice[0]).mean() > 5
