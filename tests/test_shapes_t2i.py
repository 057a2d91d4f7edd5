"""The embedded text-to-image architecture saves as a standard pipeline folder and samples through
``DiffusionPipeline.from_pretrained`` in one and several steps."""

import numpy as np
import pytest
import torch

from diffusion_align.embedded.shapes_t2i import build_components, save_pipeline


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_shapes_t2i")
    save_pipeline(build_components(seed=0, tiny=True), folder)
    return folder


def test_loads_as_stable_diffusion_pipeline(pipe_dir):
    from diffusers import DiffusionPipeline, LCMScheduler, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(pipe_dir)
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == 64
    assert pipe.scheduler.config.prediction_type == "sample"
    assert (pipe_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()


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
