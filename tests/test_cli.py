"""The command line as a user meets it: one ``mmalign`` command whose subcommands all show an example in
``--help``; user errors end in one line naming the file, line or key (exit status 2, no traceback;
``--debug`` shows it); embedded models and shipped configs are found from any working folder; hub ids fail
fast offline with their family's local-path hint; over-long prompts warn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmalign.cli import COMMANDS, cli
from mmreward import load_reward
from mmreward.errors import ModelLoadError, RewardSpecError

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> str:
    """Assert a user error: status 2, one line on stderr starting ``error:`` that contains ``needles``."""
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith(("Loading", "\r"))]
    errors = [x for x in lines if x.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


# ------------------------------------------------------------------------------------------- commands
def _leaves():
    for name, entry in COMMANDS.items():
        if isinstance(entry, dict):
            for sub in entry:
                yield (name, sub)
        else:
            yield (name,)


def test_every_subcommand_has_help_with_an_example(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and all(name in out for name in COMMANDS) and "--debug" in out
    for path in _leaves():
        code, out, err = run_cli(capsys, *path, "--help")
        assert code == 0, (path, err)
        assert f"usage: mmalign {' '.join(path)}" in out, (path, out[:200])
        examples = out.split("examples:")[-1]
        assert "examples:" in out and ("mmalign " in examples or "reno " in examples), path
    code, _, err = run_cli(capsys, "no-such-command")
    assert code == 2 and "unknown command 'no-such-command'" in err
    code, out, _ = run_cli(capsys, "shapes")
    assert code == 2 and "render" in out


@pytest.mark.slow
def test_console_scripts_and_python_m_forms_exit_zero():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for cmd in ([sys.executable, "-m", "mmalign", "--help"], [sys.executable, "-m", "diffusion_align.reno", "--help"],
                [sys.executable, "-m", "mmreward.shapes", "render", "--help"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, (cmd, proc.stderr[-2000:])


# ------------------------------------------------------------------------------------- user errors
def test_bad_reward_spec_in_reno_is_one_line_before_any_model_loads(capsys, tmp_path):
    start = time.time()
    code, _, err = run_cli(capsys, "reno", "--prompt", "a photo of a star", "--rewards", "bogus:x",
                           "--out", str(tmp_path / "o"), "--no-progress")
    one_line_error(code, err, "--rewards", "unknown reward family 'bogus'")
    assert time.time() - start < 20 and not (tmp_path / "o").exists()
    with pytest.raises(RewardSpecError):  # --debug: the traceback instead
        cli(["reno", "--prompt", "a photo of a star", "--rewards", "bogus:x", "--out", str(tmp_path / "o"), "--debug"])


def test_prompt_outside_the_grammar_in_shapes_evaluate_names_file_and_line(capsys, tmp_path):
    Image.new("RGB", (64, 64), "white").save(tmp_path / "a.png")
    (tmp_path / "prompts.jsonl").write_text(
        json.dumps({"image": "a.png", "prompt": "a photo of a red circle"}) + "\n\n"
        + json.dumps({"image": "a.png", "prompt": "a photo of a dog on the moon"}) + "\n")
    code, _, err = run_cli(capsys, "shapes", "evaluate", "--images", str(tmp_path), "--out", str(tmp_path / "r.json"),
                           "--quiet")
    one_line_error(code, err, f"{tmp_path / 'prompts.jsonl'}, line 3", "not in the ShapesWorld grammar")
    (tmp_path / "prompts.jsonl").write_text('{"image": "a.png", "prompt": "a photo of a red circle"}\n{"image": \n')
    code, _, err = run_cli(capsys, "shapes", "evaluate", "--images", str(tmp_path), "--out", str(tmp_path / "r.json"))
    one_line_error(code, err, "line 2: not valid JSON")


def test_shapes_render_missing_prompts_limit_and_overwrite(capsys, tmp_path):
    code, _, err = run_cli(capsys, "shapes", "render", "--prompts", str(tmp_path / "none.jsonl"), "--out",
                           str(tmp_path / "r"), "--quiet")
    one_line_error(code, err, "prompt suite not found", "none.jsonl")
    out = tmp_path / "r"
    assert run_cli(capsys, "shapes", "render", "--limit", "3", "--out", str(out), "--quiet")[0] == 0
    assert len(list(out.glob("*.png"))) == 3 and len((out / "prompts.jsonl").read_text().splitlines()) == 3
    code, _, err = run_cli(capsys, "shapes", "render", "--limit", "2", "--out", str(out), "--quiet")
    one_line_error(code, err, "already holds images", "--overwrite")
    assert run_cli(capsys, "shapes", "render", "--limit", "2", "--out", str(out), "--quiet", "--overwrite")[0] == 0
    assert len(list(out.glob("*.png"))) == 2  # no stale image beside the new index


@pytest.mark.parametrize("setting, needle", [("reward_model=garbage", "reward_model: unknown reward family 'garbage'"),
                                             ("algo_kwargs={bogus: 1}", "algo_kwargs ['bogus'] not accepted by PPO")])
def test_rl_train_config_errors_are_one_line(capsys, tmp_path, setting, needle):
    code, _, err = run_cli(capsys, "rl", "train", "--config", "cartpole", "--set", f"output_dir={tmp_path / 'run'}",
                           "--set", "total_steps=64", "--set", "n_envs=1", "--set", setting)
    one_line_error(code, err, needle)


def test_rl_evaluate_missing_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(capsys, "rl", "evaluate", "--config", "cartpole", "--set", f"output_dir={tmp_path / 'run'}")
    one_line_error(code, err, "no policy weights at", str(tmp_path / "run" / "checkpoint"))


def test_bench_with_a_file_that_is_not_an_image(capsys, tmp_path, open_clip_dir):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("this is not an image")
    (tmp_path / "prefs.jsonl").write_text(json.dumps({"prompt": "a red image", "images": ["a.png", "b.png"],
                                                      "choice": 0}) + "\n")
    code, _, err = run_cli(capsys, "bench", "--reward", f"clip:{open_clip_dir}", "--data", str(tmp_path / "prefs.jsonl"),
                           "--no-progress")
    one_line_error(code, err, str(tmp_path / "b.png"), "not a readable image")


def test_corrupt_reward_head_files_name_the_file(tmp_path, open_clip_dir):
    from mmreward.heads import HEAD_CONFIG, HEAD_WEIGHTS, HeadReward, MLPHead, save_head_reward
    from mmreward.registry import load_backbone

    backbone = load_backbone(f"clip:{open_clip_dir}")
    head = HeadReward(backbone, MLPHead(32), inputs="image", backbone_spec=f"clip:{open_clip_dir}")
    folder = save_head_reward(head, tmp_path / "h")
    assert load_reward(f"head:{folder}")(torch.rand(1, 3, 64, 64), "a photo").shape == (1,)
    weights = (folder / HEAD_WEIGHTS).read_bytes()
    (folder / HEAD_WEIGHTS).write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ModelLoadError, match=f"{folder / HEAD_WEIGHTS}: not a readable safetensors file"):
        load_reward(f"head:{folder}")
    (folder / HEAD_WEIGHTS).write_bytes(weights)
    (folder / HEAD_CONFIG).write_text('{"in_dim": 32, "hidden": [')
    with pytest.raises(ModelLoadError, match=f"{folder / HEAD_CONFIG}: not a valid reward head config"):
        load_reward(f"head:{folder}")


def test_prompt_files_that_are_not_json_or_not_utf8_name_file_and_line(tmp_path):
    from diffusion_align.inputs import read_prompts
    from mmreward.errors import InputFileError

    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "a photo of a star"}\n\nnot json\n')
    with pytest.raises(InputFileError, match=r"prompts.jsonl, line 3: not valid JSON"):
        read_prompts(str(bad))
    bad.write_text('{"prompt": "a photo of a star"}\n{"text": "no prompt field"}\n')
    with pytest.raises(InputFileError, match=r"line 2: no 'prompt' field"):
        read_prompts(str(bad))
    latin = tmp_path / "prompts.txt"
    latin.write_bytes("a photo of a star\na photo of a caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputFileError, match=r"prompts.txt, line 2: not UTF-8 text \(byte 0xe9\)"):
        read_prompts(str(latin))


@pytest.mark.slow
def test_offline_hub_ids_fail_within_seconds_with_their_familys_hint():
    """Without HF_HUB_OFFLINE (as a user's shell has it), against a hub that cannot be reached."""
    code = (
        "import time\n"
        "import diffusers, open_clip, transformers\n"  # imported before the clock starts: only the hub calls are timed
        "from transformers import CLIPModel\n"
        "from mmreward import load_reward\n"
        "from mmreward.errors import ModelLoadError\n"
        "from diffusion_align.inputs import load_pipeline\n"
        "for spec in ['hfclip:openai/clip-vit-large-patch14', 'pickscore', 'clip:ViT-B-32/openai', 'hps', 'pipe']:\n"
        "    t = time.time()\n"
        "    try:\n"
        "        load_pipeline('stabilityai/sd-turbo') if spec == 'pipe' else load_reward(spec)\n"
        "    except ModelLoadError as e:\n"
        "        print(spec, '|', round(time.time() - t, 1), '|', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: the connection is refused at once
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    rows = [line.split(" | ") for line in proc.stdout.splitlines()]
    assert len(rows) == 5, proc.stdout + proc.stderr[-3000:]
    hints = {"hfclip:openai/clip-vit-large-patch14": "'hfclip:/path/to/folder'", "pickscore": "'pickscore:/path/to/folder'",
             "clip:ViT-B-32/openai": "'clip:MODEL//path/to/weights'", "hps": "'hps:/path/to/", "pipe": "its local folder"}
    for spec, seconds, message in rows:
        assert float(seconds) < 10, (spec, seconds)
        assert "no connection to the hub" in message and hints[spec] in message, (spec, message)


def test_over_long_prompts_warn(open_clip_dir, hf_clip_dir):
    long = "a photo of " + "a red circle and " * 200
    for spec in (f"clip:{open_clip_dir}", f"hfclip:{hf_clip_dir}"):
        reward = load_reward(spec)
        with pytest.warns(UserWarning, match=r"prompt of \d+ tokens is cut to the text encoder's \d+"):
            reward(torch.rand(1, 3, 64, 64), long)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            reward(torch.rand(1, 3, 64, 64), "a photo of a red circle")  # a prompt that fits: no warning


# ---------------------------------------------------------------------------- from any working folder
def test_embedded_models_and_configs_are_found_from_any_folder(tmp_path, monkeypatch, open_clip_dir):
    from mmreward.assets import ASSETS_ENV, resolve_asset, resolve_config
    from mmreward.config_file import ConfigError
    from vlm_rl.config import RLConfig

    monkeypatch.chdir(tmp_path)
    assert not (tmp_path / "assets").exists()
    assert Path(resolve_asset("assets/shapesworld-clip")) == ROOT / "assets" / "shapesworld-clip"
    assert load_reward("clip:assets/shapesworld-clip")(torch.rand(1, 3, 64, 64), "a photo of a star").shape == (1,)
    assert Path(resolve_config("cartpole")) == ROOT / "configs" / "cartpole.yaml"
    assert RLConfig.from_yaml("cartpole").algo == "ppo"
    with pytest.raises(ConfigError, match="shipped configs, usable by name: .*d3po_shapes"):
        RLConfig.from_yaml("no_such_config")
    # a folder of the working directory wins over the shipped one; MMALIGN_ASSETS points elsewhere
    (tmp_path / "mine" / "assets").mkdir(parents=True)
    os.symlink(open_clip_dir, tmp_path / "mine" / "assets" / "tiny")
    monkeypatch.setenv(ASSETS_ENV, str(tmp_path / "mine" / "assets"))
    assert resolve_asset("assets/tiny") == str(tmp_path / "mine" / "assets" / "tiny")
    assert load_reward("clip:assets/tiny")(torch.rand(1, 3, 64, 64), "a photo").shape == (1,)
    with pytest.raises(ModelLoadError, match=f"looked in the working folder and in {tmp_path / 'mine' / 'assets'}; "
                                             f"set {ASSETS_ENV}"):
        load_reward("clip:assets/shapesworld-clip")


# ------------------------------------------------------------------------------------------- pictures
def test_labelled_grid_wraps_every_caption_and_note_inside_its_cell():
    from mmreward.images import GREEN, labelled_grid

    img = Image.new("RGB", (64, 64), (240, 240, 240))
    short = [(img, "a red circle", [("reward 0.500", (0, 0, 0))])]
    long = "a red circle left of a blue square and " * 4
    tall = [(img, long, [("evaluator: wrong (" + "object unrecognised, " * 4 + ")", GREEN)])]
    a, b = labelled_grid(short, cols=1), labelled_grid(tall, cols=1)
    assert a.width == b.width == 192 and b.height > a.height + 5 * 18  # wrapped onto more lines, not cut
    text = np.asarray(b)[192:, :, :]  # below the image: dark (black or green) pixels on many text rows
    rows_with_ink = (text.min(axis=2) < 130).any(axis=1)
    assert rows_with_ink.sum() > 8 * 8
    assert not (np.asarray(b)[192:, -2:, :].min(axis=2) < 130).any()  # nothing runs over the right edge
    with_legend = labelled_grid(short * 3, cols=3, legend="what the notes mean " * 20)
    assert with_legend.width == 3 * 192 + 2 * 6 and with_legend.height > a.height + 2 * 18


def test_a_hub_repo_in_the_local_cache_counts_as_local(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from mmreward.hub import require_hub

    repo = tmp_path / "hub" / "models--org--name"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    require_hub("org/name", "'org/name'", "pass 'hfclip:/path/to/folder'")  # offline (conftest) but cached: fine
    with pytest.raises(ModelLoadError, match=r"could not fetch 'org/other' \(HF_HUB_OFFLINE is set\).*hfclip:/path"):
        require_hub("org/other", "'org/other'", "pass 'hfclip:/path/to/folder'")
