"""Write a randomly initialised CLIP directory, shaped as `hf download openai/clip-vit-base-patch16` leaves one.

    python bench/random_clip.py --out /tmp/clip-random [--size base|tiny]

For checks that need a CLIP directory where none can be downloaded (the one-shot GPU check, tests):
a ``CLIPModel`` (``base``: ViT-B/16 towers, 512-d projections, CLIP's sizes; ``tiny``: 2 layers of
32), its image processor (CLIP's mean / std) and a byte-level BPE tokenizer shaped like CLIP's — the
256-byte alphabet, merges that make each of reid's common caption words one token, then
``<|startoftext|>`` / ``<|endoftext|>`` as the last two ids; it pads with ``<|endoftext|>``. The
weights are random: speed and memory are CLIP's, accuracy is not.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SIZES = {
    "base": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             image_size=224, patch_size=16),
                 text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
                 projection_dim=512),
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, patch_size=8),
                 text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
                 projection_dim=48),
}


def clip_tokenizer(words: Sequence[str]):
    """A CLIP-shaped byte-level BPE tokenizer in which each of ``words`` is one token."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges: list[tuple[str, str]] = []
    seen = set()
    for word in words:
        if not word.isalpha() or len(word) < 2:
            continue
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            merged = parts[0] + parts[1]
            vocab.setdefault(merged, len(vocab))
            parts = [merged] + parts[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def save_random_clip(directory: Path, size: str = "base", words: Sequence[str] | None = None, seed: int = 0,
                     eos_token_id: int = 2) -> Path:
    """Write the directory (model, tokenizer, image processor); ``eos_token_id`` 2 as openai's configs say."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from reid.data.tokenizer import COMMON_WORDS

    tokenizer = clip_tokenizer(COMMON_WORDS if words is None else words)
    shape = SIZES[size]
    config = CLIPConfig(
        vision_config=shape["vision"],
        text_config=dict(shape["text"], vocab_size=len(tokenizer), max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=1, eos_token_id=eos_token_id),
        projection_dim=shape["projection_dim"],
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    side = shape["vision"]["image_size"]
    CLIPImageProcessorPil(image_mean=CLIP_MEAN, image_std=CLIP_STD, size={"shortest_edge": side},
                          crop_size={"height": side, "width": side}).save_pretrained(directory)
    return Path(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    args = parser.parse_args()
    print(save_random_clip(args.out, args.size))


if __name__ == "__main__":
    main()
