"""Prompt -> token ids -> pooled text embedding (the text conditioning of the world model).

The vocabulary is the set of words the procedural captions can contain (`scenes.world.
caption_vocabulary()`) plus <pad> and <unk>: captions are the only text the model ever trains on, so
any other word carries no learnt meaning and maps to <unk> instead of crashing. The vocabulary is
stored in the checkpoint's config, so a checkpoint keeps reading prompts the way it was trained even
if the caption generator grows new words later.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from scenes.world import caption_vocabulary, tokenize_words

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


def default_vocabulary() -> list[str]:
    """<pad>, <unk>, then every caption word (sorted, as `caption_vocabulary` returns it)."""
    return [PAD, UNK] + [w for w in caption_vocabulary() if w not in (PAD, UNK)]


def split_words(text: str) -> list[str]:
    """The one word splitter shared with the caption writer (lower case, punctuation split)."""
    return tokenize_words(text)


class Tokenizer:
    """Word-level tokenizer over a fixed vocabulary; never fails on user text."""

    def __init__(self, vocab: Sequence[str], max_tokens: int) -> None:
        if list(vocab[:2]) != [PAD, UNK]:
            raise ValueError("vocabulary must start with <pad>, <unk>")
        self.vocab = list(vocab)
        self.max_tokens = int(max_tokens)
        self._index = {w: i for i, w in enumerate(self.vocab)}

    def encode(self, text: str) -> list[int]:
        """Ids of `text`: unknown words -> <unk>, empty -> [<pad>], truncated to max_tokens."""
        ids = [self._index.get(w, UNK_ID) for w in split_words(text or "")]
        return ids[: self.max_tokens] or [PAD_ID]

    def encode_batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids int64 [B, L] (padded with <pad>) and mask bool [B, L] (True = real token).

        An empty prompt is one <pad> token that counts as real, so pooling never divides by zero and
        "no prompt" is a learnable condition of its own.
        """
        rows = [self.encode(t) for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
        return ids, mask


class TextBlock(nn.Module):
    """Pre-norm self-attention + MLP over the prompt tokens (padding masked out as keys)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], mask bool [B, L] (True = real token) -> [B, L, dim]."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # [B, h, L, dh]
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Embedding + a small pre-norm transformer; mean-pooled over real tokens -> [B, text_dim]."""

    def __init__(self, vocab_size: int, dim: int, layers: int, heads: int, max_tokens: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(max_tokens, dim))
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList([TextBlock(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids int64 [B, L], mask bool [B, L] -> pooled float [B, dim]."""
        x = self.embed(ids) + self.pos[: ids.shape[1]]  # [B, L, dim]
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        w = mask.to(x.dtype)[..., None]  # [B, L, 1]
        return (x * w).sum(1) / w.sum(1).clamp_min(1.0)
