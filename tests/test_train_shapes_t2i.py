"""The three training stages of the embedded text-to-image model run end to end (tiny widths),
resume after a kill to the same weights, and produce a pipeline that samples in one step."""

import pytest
import torch
from safetensors.torch import load_file

from diffusion_align.embedded.train_shapes_t2i import main as train
from mmreward.errors import ModelLoadError


@pytest.mark.slow
def test_stages_resume_and_produce_a_one_step_pipeline(tmp_path):
    work, out = tmp_path / "work", tmp_path / "pipe"
    base = ["--tiny", "--batch", "8", "--ckpt-every", "2", "--work", str(work)]
    train(["vae", "--steps", "4", "--stop-after", "2", *base])
    assert not (work / "vae" / "model").exists()
    train(["vae", "--steps", "4", "--resume", *base])  # resumes at step 2
    train(["vae", "--steps", "4", *base[:-1], str(tmp_path / "uninterrupted")])
    a = load_file(str(work / "vae" / "model" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "uninterrupted" / "vae" / "model" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    train(["teacher", "--steps", "3", "--out", str(tmp_path / "teacher"), "--fp16", *base])
    train(["distill", "--steps", "3", "--trajectories", "16", "--out", str(out), *base])

    import json

    from diffusers import DDIMScheduler, DiffusionPipeline

    teacher = DiffusionPipeline.from_pretrained(tmp_path / "teacher")  # the multi-step model, exported in fp16
    assert isinstance(teacher.scheduler, DDIMScheduler)
    weights = load_file(str(tmp_path / "teacher" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values())
    # fp16 on disk, but the pipeline loads and samples in float32 by default (no dtype mismatch)
    assert teacher.text_encoder.dtype == teacher.unet.dtype == torch.float32
    img = teacher("a photo of a star", num_inference_steps=2, guidance_scale=3.0, output_type="np").images
    assert img.shape == (1, 64, 64, 3)
    record = json.loads((out / "training.json").read_text())
    assert [record[s]["steps"] for s in ("vae", "teacher", "distill")] == [4, 3, 3]
    assert record["teacher_trajectories"]["trajectories"] == 16
    assert record["total_wall_time_s"] == pytest.approx(
        sum(record[s]["wall_time_s"] for s in ("vae", "teacher", "distill", "teacher_trajectories")), abs=0.2)

    pipe = DiffusionPipeline.from_pretrained(out)
    img = pipe("a photo of a red circle", num_inference_steps=1, guidance_scale=0.0, output_type="np").images
    assert img.shape == (1, 64, 64, 3)
    traj = load_file(str(work / "distill" / "trajectories.safetensors"))["latents"]
    assert traj.shape == (16, 21, 4, 16, 16)

    # distilling from an exported (fp16) teacher folder: the earlier stages' record comes from its training.json
    work2, out2 = tmp_path / "work2", tmp_path / "pipe2"
    train(["distill", "--steps", "2", "--trajectories", "8", "--teacher", str(tmp_path / "teacher"), "--out", str(out2),
           *base[:-1], str(work2)])
    record2 = json.loads((out2 / "training.json").read_text())
    assert [record2[s]["steps"] for s in ("vae", "teacher", "distill")] == [4, 3, 2]
    assert record2["vae"] == record["vae"] and record2["teacher_trajectories"]["trajectories"] == 8
    assert not (work2 / "teacher").exists()


def test_distill_without_a_teacher_names_the_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no teacher pipeline.*--teacher"):
        train(["distill", "--tiny", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")])


def test_a_rerun_never_restarts_or_replaces_silently(tmp_path):
    from mmreward.config_file import ConfigError

    base = ["--tiny", "--batch", "4", "--ckpt-every", "1", "--work", str(tmp_path / "work")]
    train(["vae", "--steps", "1", "--stop-after", "1", *base])
    with pytest.raises(ConfigError, match="pass --resume to continue it, --overwrite to replace it"):
        train(["vae", "--steps", "2", *base])
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a model: pass --overwrite"):
        train(["distill", "--steps", "1", "--out", str(tmp_path / "pipe"), *base])
