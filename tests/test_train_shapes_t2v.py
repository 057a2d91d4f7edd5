"""The embedded text-to-video model: the lifted UNet starts equal to the image UNet on every frame, a tiny run
trains the motion modules and the spatial LoRA only, resumes after a kill to the same weights, and exports an
AnimateDiff pipeline (and its motion adapter and LoRA) that loads by path and samples videos."""

import json

import pytest
import torch
from safetensors.torch import load_file

from diffusion_align.embedded.train_shapes_t2v import lift_to_video, main, spatial_attention_names


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from diffusion_align.embedded.shapes_t2i import build_components, save_pipeline

    folder = tmp_path_factory.mktemp("tiny_teacher")
    save_pipeline(build_components(seed=0, tiny=True), folder)
    return folder


def test_the_lifted_unet_starts_as_the_image_unet_per_frame(tiny_teacher):
    from diffusers import UNet2DConditionModel

    unet2d = UNet2DConditionModel.from_pretrained(tiny_teacher / "unet")
    unet = lift_to_video(unet2d)
    b, f = 2, 4
    x = torch.randn(b, 4, f, 16, 16)
    t = torch.tensor([300, 700])
    emb = torch.randn(b, 20, unet2d.config.cross_attention_dim)
    with torch.no_grad():
        video = unet(x, t, encoder_hidden_states=emb.repeat_interleave(f, 0)).sample
        frames = unet2d(x.permute(0, 2, 1, 3, 4).reshape(b * f, 4, 16, 16), t.repeat_interleave(f),
                        encoder_hidden_states=emb.repeat_interleave(f, 0)).sample
    torch.testing.assert_close(video.permute(0, 2, 1, 3, 4).reshape(b * f, 4, 16, 16), frames, atol=1e-4, rtol=1e-4)
    names = spatial_attention_names(unet)
    assert names and not any("motion_modules" in n for n in names) and any("attn2" in n for n in names)


@pytest.mark.slow
def test_training_resumes_exports_and_samples(tmp_path, tiny_teacher):
    from diffusers import AnimateDiffPipeline, MotionAdapter

    base = ["--teacher", str(tiny_teacher), "--frames", "4", "--batch", "2", "--steps", "3", "--ckpt-every", "1",
            "--threads", "1"]
    main([*base, "--work", str(tmp_path / "wa"), "--out", str(tmp_path / "a")])
    assert main([*base, "--work", str(tmp_path / "wb"), "--out", str(tmp_path / "b"), "--stop-after", "1"])["stopped"]
    main([*base, "--work", str(tmp_path / "wb"), "--out", str(tmp_path / "b"), "--resume"])
    a = load_file(str(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the resumed run = the uninterrupted one
    # only motion modules and LoRA trained: the exported spatial weights differ from the teacher by the LoRA alone
    teacher = load_file(str(tiny_teacher / "unet" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(a["conv_in.weight"], teacher["conv_in.weight"])
    moved = [k for k in a if "motion_modules" in k and k.endswith("proj_out.weight")]
    assert moved and any(a[k].abs().sum() > 0 for k in moved)  # the zero-initialised projections trained
    rows = [json.loads(x) for x in (tmp_path / "wb" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]

    pipe = AnimateDiffPipeline.from_pretrained(tmp_path / "a")
    out = pipe("a photo of a red circle moving left", num_frames=4, num_inference_steps=2, guidance_scale=2.0,
               height=64, width=64, output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    assert out.shape == (1, 4, 3, 64, 64) and torch.isfinite(out).all()
    # the adapter alone + the LoRA on the teacher reproduce the exported pipeline
    adapter = MotionAdapter.from_pretrained(tmp_path / "a" / "motion_adapter")
    again = AnimateDiffPipeline.from_pretrained(tiny_teacher, motion_adapter=adapter)
    again.load_lora_weights(tmp_path / "a" / "lora")
    out2 = again("a photo of a red circle moving left", num_frames=4, num_inference_steps=2, guidance_scale=2.0,
                 height=64, width=64, output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    torch.testing.assert_close(out2, out, atol=1e-4, rtol=1e-4)
    # a finished run re-exports elsewhere in fp16 without training again; it loads in float32
    assert main([*base, "--work", str(tmp_path / "wb"), "--out", str(tmp_path / "c"), "--resume", "--fp16"])["steps"] == 3
    c = load_file(str(tmp_path / "c" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in c.values()) and c.keys() == a.keys()
    assert all(v.dtype == torch.float16 for v in load_file(str(tmp_path / "c" / "lora" / "pytorch_lora_weights.safetensors")).values())
    half = AnimateDiffPipeline.from_pretrained(tmp_path / "c")
    assert half.unet.dtype == half.text_encoder.dtype == half.vae.dtype == torch.float32
    out3 = half("a photo of a red circle moving left", num_frames=4, num_inference_steps=2, guidance_scale=2.0,
                height=64, width=64, output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    torch.testing.assert_close(out3, out, atol=2e-2, rtol=0)
    assert (tmp_path / "wb" / "log.jsonl").read_text().count("\n") == 3  # no step ran again
