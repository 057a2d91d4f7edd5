"""Write a transformers ``CLIPTokenizer`` (vocab.json + merges.txt) from open_clip's bundled BPE.

The result gives the same token ids as the hub CLIP tokenizers, so CLIP text encoders and
SD-style pipelines can be built and saved fully offline.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path


def write_clip_tokenizer(folder: str | os.PathLike, model_max_length: int = 77):
    """Save a ``CLIPTokenizer`` to ``folder`` and return it (loaded back from disk)."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    st = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in st.encoder.items()}
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=model_max_length,
        pad_token="<|endoftext|>",
    )
    tok.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)
