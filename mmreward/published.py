"""Loaders for published reward models, in their own key layouts and score conventions.

* ``pickscore:ID_OR_FOLDER`` (default ``yuvalkirstain/PickScore_v1``): a transformers CLIP-H fine-tuned on
  Pick-a-Pic; reward ``exp(logit_scale) · cos(text, image)``. Its tokenizer and preprocessing are
  those of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (``?processor=`` overrides; a local folder that holds
  its own tokenizer uses it).
* ``hps:v2.0|v2.1|FILE`` (default ``v2.1``): HPSv2 / HPSv2.1, an open_clip ViT-H-14 whose fine-tuned
  weights come as a torch checkpoint ``{"state_dict": ...}`` (``xswu/HPSv2`` on the hub); reward
  ``cos(text, image)`` with no logit scale (``hpsv2.score``). ``?arch=`` names the open_clip architecture
  (an open_clip folder works too).
* ``aesthetic:FILE`` (default: the LAION improved aesthetic predictor ``sac+logos+ava1-l14-linearMSE.pth``):
  the MLP (keys ``layers.0`` ... ``layers.7``) on the L2-normalised CLIP ViT-L/14 image embedding; reward
  the predicted rating (1–10 scale). ``?backbone=`` names another CLIP.
* ``imagereward``: :mod:`mmreward.image_reward`.

Torch checkpoints are read with ``torch.load(weights_only=True)`` (tensors only: no code is unpickled);
safetensors files are accepted wherever a ``.pt``/``.pth`` is.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .backbones import OFFLINE_HINT, OpenClipBackbone, _preprocess_from_open_clip, load_hf_clip
from .errors import ModelLoadError, RewardSpecError
from .hub import require_hub
from .zero_shot import CLIPScore

PICKSCORE = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
AESTHETIC_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_BACKBONE = "clip:ViT-L-14/openai"


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch checkpoint (``weights_only``; a ``state_dict`` /
    ``model`` entry is unwrapped and DDP's ``module.`` prefix removed)."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(f"could not read {path} as a tensors-only torch checkpoint: {str(e)[:300]}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _hub_file(repo: str, filename: str, family: str) -> str:
    """``filename`` of hub ``repo`` (cached or downloaded); offline, a quick error names ``family:FILE``."""
    require_hub(repo, f"{filename} from {repo}", f"pass '{family}:/path/to/{filename}'")
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo, filename)
    except Exception as e:
        raise ModelLoadError(f"could not fetch {filename} from {repo}. {OFFLINE_HINT}: '{family}:/path/to/{filename}'. "
                             f"Cause: {str(e)[:300]}") from e


# ------------------------------------------------------------------------------------- PickScore
def load_pickscore(arg: str = PICKSCORE, device="cpu", dtype=torch.float32, processor: str | None = None, **unknown):
    """PickScore: ``exp(logit_scale) · cos`` under the fine-tuned transformers CLIP."""
    if unknown:
        raise RewardSpecError(f"unknown option(s) {sorted(unknown)}; pickscore accepts 'processor'")
    has_tokenizer = os.path.isdir(arg) and any((Path(arg) / f).is_file() for f in ("tokenizer.json", "vocab.json"))
    proc = processor or (None if has_tokenizer else PICKSCORE_PROCESSOR)
    return CLIPScore(load_hf_clip(arg, device=device, dtype=dtype, processor=proc, family="pickscore"), mode="logit")


# ------------------------------------------------------------------------------------------ HPSv2
def load_hps(arg: str = "v2.1", device="cpu", dtype=torch.float32, arch: str = "ViT-H-14", **unknown):
    """HPSv2(.1): the open_clip architecture ``arch`` with the fine-tuned weights of ``arg``; cosine score."""
    import open_clip

    if unknown:
        raise RewardSpecError(f"unknown option(s) {sorted(unknown)}; hps accepts 'arch'")
    path = _hub_file(HPS_REPO, HPS_FILES[arg], "hps") if arg in HPS_FILES else arg
    if arg not in HPS_FILES and not os.path.isfile(os.path.expanduser(arg)):
        raise ModelLoadError(f"hps: {arg!r} is neither a version ({sorted(HPS_FILES)}) nor a checkpoint file")
    state = read_weights(path)
    name = arch if arch.startswith("local-dir:") or not os.path.isdir(arch) else "local-dir:" + arch
    try:
        model = open_clip.create_model(name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:
        raise ModelLoadError(f"hps: could not build the open_clip architecture {arch!r}: {str(e)[:300]}") from e
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelLoadError(f"hps: {path} does not fit the {arch} architecture: {str(e)[:300]}") from e
    backbone = OpenClipBackbone(model, tokenizer, _preprocess_from_open_clip(model), name=f"hps:{arg}")
    return CLIPScore(backbone.freeze().to(device=device, dtype=dtype), mode="cos")


# -------------------------------------------------------------------------------------- aesthetic
def load_aesthetic(arg: str | None = None, device="cpu", dtype=torch.float32, backbone: str = AESTHETIC_BACKBONE,
                   **unknown):
    """The LAION improved aesthetic predictor: its MLP on the normalised CLIP image embedding."""
    from .heads import HeadReward, MLPHead
    from .registry import load_backbone

    if unknown:
        raise RewardSpecError(f"unknown option(s) {sorted(unknown)}; aesthetic accepts 'backbone'")
    if arg is None:
        try:
            cache = Path(torch.hub.get_dir()) / "checkpoints" / "sac+logos+ava1-l14-linearMSE.pth"
            if not cache.is_file():
                require_hub(None, f"the aesthetic predictor ({AESTHETIC_URL})",
                            "pass 'aesthetic:/path/to/sac+logos+ava1-l14-linearMSE.pth'")
                cache.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(AESTHETIC_URL, str(cache), progress=False)
            arg = str(cache)
        except Exception as e:
            raise ModelLoadError(f"could not fetch the aesthetic predictor ({AESTHETIC_URL}). {OFFLINE_HINT}: "
                                 f"'aesthetic:/path/to/sac+logos+ava1-l14-linearMSE.pth'. Cause: {str(e)[:200]}") from e
    state = read_weights(arg)
    if "layers.0.weight" not in state:
        raise ModelLoadError(f"{arg} is not in the aesthetic predictor's layout (no layers.0.weight)")
    head = MLPHead(state["layers.0.weight"].shape[1])
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ModelLoadError(f"{arg} does not fit the aesthetic MLP (768-1024-128-64-16-1): {str(e)[:300]}") from e
    bb = load_backbone(backbone, device=device, dtype=dtype)
    reward = HeadReward(bb, head, "image", backbone_spec=backbone)
    return reward.eval().requires_grad_(False).to(device=device, dtype=dtype)
