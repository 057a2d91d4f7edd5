"""mmreward: the vision reward core of mmalign.

Every reward is a torch module ``reward(images [B,3,H,W] in [0,1], prompts) -> [B]``, named by a spec
string and built by :func:`load_reward`::

    from mmreward import load_reward
    reward = load_reward("clip:ViT-B-32/openai")
    r = reward(images, ["a red circle", "a blue square"])        # differentiable, [B]
    r = reward.score(["a.png", "b.png"], "a red circle")          # PIL images or paths
"""

from .backbones import (
    ClipBackbone,
    HFClipBackbone,
    OpenClipBackbone,
    load_hf_clip,
    load_open_clip,
    save_open_clip,
)
from .base import VisionReward
from .combine import Ensemble, EnsembleOutput, RunningNorm, WeightedSum
from .errors import ModelLoadError, RewardError, RewardSpecError
from .factory import (
    known_families,
    load_backbone,
    load_projection_reward,
    load_reward,
    parse_spec,
    register_family,
)
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipPreprocess
from .video_reward import SegmentalVideoReward, VideoScore, load_video_reward
from .zero_shot import CLIPScore, ProjectionReward

__all__ = [
    "CLIPScore",
    "ClipBackbone",
    "ClipPreprocess",
    "Ensemble",
    "EnsembleOutput",
    "HFClipBackbone",
    "ModelLoadError",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "OpenClipBackbone",
    "ProjectionReward",
    "SegmentalVideoReward",
    "VideoScore",
    "RewardError",
    "RewardSpecError",
    "RunningNorm",
    "VisionReward",
    "WeightedSum",
    "known_families",
    "load_backbone",
    "load_hf_clip",
    "load_open_clip",
    "load_projection_reward",
    "load_reward",
    "load_video_reward",
    "parse_spec",
    "register_family",
    "save_open_clip",
]
