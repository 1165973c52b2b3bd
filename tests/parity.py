"""What the parity tests (ours against transformers) share: a ragged prefill over a fresh paged cache,
and transformers' greedy continuation."""

from __future__ import annotations

from typing import Any

import torch

from engine.batch import SeqChunk, make_batch
from engine.kv_cache import KVCache
from engine.model import Transformer


def prefill(model: Transformer, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of each prompt's last token [prompts, vocab] and the expert load [layers, experts],
    the prompts prefilled together as one ragged batch."""
    cfg, like = model.cfg, model.norm.weight
    kv = KVCache(cfg, 256, like.device, like.dtype)
    chunks = []
    for i, p in enumerate(prompts):
        kv.allocator.grow(i, len(p))
        chunks.append(SeqChunk(p, 0, kv.allocator.blocks(i, len(p)), kv.allocator.block_size, True))
    with torch.inference_mode():
        return model(make_batch(chunks, like.device), kv.k, kv.v)


def hf_greedy(hf: Any, prompt: list[int], new_tokens: int) -> list[int]:
    """transformers' greedy continuation of `prompt`, with no stop token."""
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    return out[0, len(prompt) :].tolist()
