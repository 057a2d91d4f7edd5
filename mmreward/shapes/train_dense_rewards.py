"""Train the embedded per-pixel reward models of ShapesWorld on clean renders only.

    mmalign assets dense-rewards segformer --out assets/shapesworld-segformer   # python -m mmreward.shapes.train_dense_rewards
    mmalign assets dense-rewards edges --out assets/shapesworld-edge-net

* ``segformer``: a small ``SegformerForSemanticSegmentation`` (transformers format, with its
  ``preprocessor_config.json``) that reads the per-pixel class (background + the four shapes) of a render.
* ``edges``: a small fully convolutional edge estimator (:class:`mmreward.dense_rewards.EdgeNet`,
  ``config.json`` + ``model.safetensors``) that reads the objects' outlines.

Scenes of every prompt category (training compositions), freshly drawn each step, as the ground-truth renders
ControlNet is conditioned on; nothing generated. So on generated images these models err as the references'
segmenters do, which is what Ctrl-U's uncertainty is meant to catch. The run checkpoints to ``--work``
(``--resume`` continues, ``--overwrite`` starts again); the export records the accuracy on fresh renders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..clip_training import optimizer_step
from ..command import run_command, with_examples
from ..dense_rewards import IMAGENET_MEAN, IMAGENET_STD, EdgeNet, EdgeReward, SegmentationReward
from ..schedules import warmup_cosine
from ..trainer import StepTrainer, add_run_args, start_run
from .conditions import SEG_CLASSES, edge_map, segmentation
from .data import sample_batch

WARMUP = 50  #: warm-up steps of the learning rate


def segformer_config():
    from transformers import SegformerConfig

    return SegformerConfig(num_channels=3, num_encoder_blocks=4, depths=[1, 1, 2, 1], sr_ratios=[4, 2, 1, 1],
                           hidden_sizes=[24, 48, 96, 128], patch_sizes=[3, 3, 3, 3], strides=[2, 2, 2, 2],
                           num_attention_heads=[1, 2, 4, 4], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=96,
                           num_labels=len(SEG_CLASSES), id2label=dict(enumerate(SEG_CLASSES)),
                           label2id={c: i for i, c in enumerate(SEG_CLASSES)}, semantic_loss_ignore_index=255)


def batch(rng: np.random.Generator, n: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Renders ``[n, 3, H, W]`` in [0, 1] (training compositions), their segmentations ``[n, H, W]`` and edge
    maps ``[n, H, W]``."""
    images, _, scenes = sample_batch(rng, n, size=size, return_scenes=True)
    seg = torch.from_numpy(np.stack([segmentation(s, size) for s in scenes])).long()
    edges = torch.from_numpy(np.stack([edge_map(s, size) for s in scenes]))
    return images, seg, edges


@torch.no_grad()
def accuracy(model, kind: str, n: int = 256, seed: int = 12345) -> dict:
    """On ``n`` fresh renders: segformer → pixel accuracy and mean IoU over the classes; edges → mean squared
    error and the F1 of edge pixels (map ≥ 0.5)."""
    images, seg, edges = batch(np.random.default_rng(seed), n)
    if kind == "segformer":
        pred = model.logits(images).argmax(1)
        ious = [((pred == c) & (seg == c)).sum().item() / max(((pred == c) | (seg == c)).sum().item(), 1)
                for c in range(len(SEG_CLASSES))]
        return {"pixel_accuracy": (pred == seg).float().mean().item(), "miou": float(np.mean(ious)),
                "iou": dict(zip(SEG_CLASSES, ious, strict=True)), "renders": n}
    pred = model.predict(images)
    p, t = pred >= 0.5, edges >= 0.5
    tp = (p & t).sum().item()
    return {"mse": F.mse_loss(pred, edges).item(), "edge_f1": 2 * tp / max(p.sum().item() + t.sum().item(), 1),
            "renders": n}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=("segformer", "edges"))
    p.add_argument("--work", default=None, help="checkpoints and logs (default outputs/dense_rewards_<model>)")
    p.add_argument("--out", default=None, help="the exported model folder (default assets/shapesworld-<model>)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--stop-after", type=int, default=None, help="checkpoint and exit after this step (simulates a kill)")
    p.add_argument("--threads", type=int, default=2)
    add_run_args(p)
    with_examples(p, "mmalign assets dense-rewards segformer --out outputs/shapesworld-segformer",
                  "mmalign assets dense-rewards edges --out outputs/shapesworld-edge-net --steps 1000")
    args = p.parse_args(argv)
    name = {"segformer": "segformer", "edges": "edge-net"}[args.model]
    args.work = args.work or f"outputs/dense_rewards_{args.model}"
    args.out = args.out or f"assets/shapesworld-{name}"
    start_run(args)
    if args.model == "segformer":
        from transformers import SegformerForSemanticSegmentation

        model = SegmentationReward(SegformerForSemanticSegmentation(segformer_config()))
    else:
        model = EdgeReward(EdgeNet())
    model.requires_grad_(True).train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    rng = np.random.default_rng(args.seed)

    def step(i: int) -> dict:
        images, seg, edges = batch(rng, args.batch)
        if args.model == "segformer":
            loss = model.loss_map(images, seg).mean()
        else:
            loss = F.binary_cross_entropy_with_logits(model.net(images * 2 - 1)[:, 0], edges)
        optimizer_step(opt, loss, params, warmup_cosine(i, args.steps, args.lr, warmup=WARMUP))
        return {"step": i + 1, "loss": loss.item()}

    trainer = StepTrainer(args.work, args.steps, model, opt, step, np_rng=rng, checkpoint_every=args.ckpt_every,
                          stop_after=args.stop_after, name=f"dense-rewards {args.model}", resume=args.resume,
                          overwrite=args.overwrite, config=vars(args))
    trainer.run()
    if trainer.position < args.steps:
        return {"steps": trainer.position, "stopped": True}
    model.eval()
    record = {"model": args.model, "steps": trainer.position, "wall_time_s": round(trainer.seconds, 1),
              "trained_on": "clean ShapesWorld renders (training compositions)", "renders": accuracy(model, args.model),
              "args": vars(args)}
    out = Path(args.out)
    if args.model == "segformer":
        from transformers import SegformerImageProcessor

        model.model.save_pretrained(out, safe_serialization=True)
        SegformerImageProcessor(do_resize=False, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                                do_reduce_labels=False).save_pretrained(out)
    else:
        model.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=2))
    print(f"{args.model} saved to {out}: {json.dumps(record['renders'])}")
    return record


if __name__ == "__main__":
    sys.exit(run_command(main))
