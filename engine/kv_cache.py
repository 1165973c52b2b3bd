"""A paged KV cache: sequences come and go every tick without the cache ever being copied.

The cache is one flat pool of token slots per layer, carved into fixed-size blocks. A sequence holds
a list of blocks (its block table); admitting it takes free blocks, finishing it returns them. Token
`p` of a sequence lives in slot `table[p // block_size] * block_size + p % block_size`.
"""

from __future__ import annotations

import torch

from engine.config import ModelConfig


class BlockAllocator:
    """Block bookkeeping only (no tensors), so the scheduler can be tested without a model."""

    def __init__(self, capacity_tokens: int, block_size: int = 16) -> None:
        self.block_size = block_size
        self.num_blocks = capacity_tokens // block_size
        # a stack: the most recently freed block is reused first, while it is still warm in cache
        self._free: list[int] = list(range(self.num_blocks - 1, -1, -1))
        self.tables: dict[int, list[int]] = {}

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_tokens(self) -> int:
        """Token slots held by sequences, in whole blocks."""
        return (self.num_blocks - len(self._free)) * self.block_size

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def can_grow(self, seq_id: int, tokens: int) -> bool:
        """Whether `seq_id` could hold `tokens` tokens in all."""
        held = len(self.tables.get(seq_id, ()))
        return self.blocks_for(tokens) - held <= len(self._free)

    def try_grow(self, seq_id: int, tokens: int) -> bool:
        """`grow` if it fits (once per sequence per tick: one lookup, not two); whether it did."""
        table = self.tables.setdefault(seq_id, [])
        need = self.blocks_for(tokens) - len(table)
        if need > len(self._free):
            return False
        for _ in range(need):
            table.append(self._free.pop())
        return True

    def grow(self, seq_id: int, tokens: int) -> None:
        """Make `seq_id` hold at least `tokens` tokens. Check `can_grow` first."""
        if not self.try_grow(seq_id, tokens):
            need = self.blocks_for(tokens) - len(self.tables[seq_id])
            raise RuntimeError(f"KV cache out of blocks: sequence {seq_id} needs {need}, {len(self._free)} free")

    def free(self, seq_id: int) -> None:
        self._free.extend(reversed(self.tables.pop(seq_id, [])))

    def blocks(self, seq_id: int, length: int) -> list[int]:
        """The blocks holding positions 0..length-1 of `seq_id`, in order."""
        return self.tables[seq_id][: self.blocks_for(length)]


class KVCache:
    """K and V for every layer: [layers, slots, kv_heads, head_dim], plus the allocator over the slots.
    With multi-head latent attention (engine/mla.py) K is [layers, slots, 1, kv_lora_rank + head_dim],
    each token's latent and RoPE key, and V a view of its latent: the latent is every head's value.

    A pipeline stage in its own process holds only its `layers` (a count); every stage uses the same
    slots, the ones rank 0's allocator hands out. One block past them belongs to no sequence: padding
    rows of a fixed-shape batch write their K/V to its first slot, `scratch_slot`
    (engine/decode_graphs.py). A whole block, so that attention can view the cache as blocks."""

    def __init__(
        self,
        cfg: ModelConfig,
        capacity_tokens: int,
        device: torch.device,
        dtype: torch.dtype,
        block_size: int = 16,
        layers: int | None = None,
    ) -> None:
        self.allocator = BlockAllocator(capacity_tokens, block_size)
        self.scratch_slot = self.allocator.capacity_tokens
        leading = (cfg.layers if layers is None else layers, self.scratch_slot + block_size)
        if cfg.mla:
            self.k = torch.zeros(*leading, 1, cfg.kv_lora_rank + cfg.head_dim, device=device, dtype=dtype)
            self.v = self.k[..., : cfg.kv_lora_rank]
            return
        self.k = torch.zeros(*leading, cfg.kv_heads, cfg.head_dim, device=device, dtype=dtype)
        self.v = torch.zeros(*leading, cfg.kv_heads, cfg.head_dim, device=device, dtype=dtype)
