"""Self-attention over image tokens with text tokens concatenated to the keys/values (§2.5, App. F.1).

Imagen conditions the base U-Net on the full text sequence by "adding cross attention over the
text embeddings at multiple resolutions"; following Nichol et al. (GLIDE) this is implemented by
projecting the text tokens to keys/values of every attention layer and concatenating them to the
image tokens' own keys/values. With no text tokens the block is plain self-attention.

The attention kernel is a pluggable backend: a function (q, k, v, key_mask) -> out looked up by name
in a small registry, so another kernel (e.g. xformers) can be added with `register_attention_backend`
and selected with `set_attention_backend` without touching the U-Net.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (q (B,h,N,d), k (B,h,M,d), v (B,h,M,d), key_mask (B,M) bool or None, True = attend) -> (B,h,N,d)
AttentionBackend = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """PyTorch scaled_dot_product_attention with a boolean key-padding mask (True = valid key)."""
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, M)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


_BACKENDS: dict[str, AttentionBackend] = {"sdpa": sdpa_attention}
_DEFAULT_BACKEND = "sdpa"


def register_attention_backend(name: str, fn: AttentionBackend) -> None:
    """Make `fn` selectable by `name` (e.g. an xformers memory-efficient kernel)."""
    _BACKENDS[name] = fn


def set_attention_backend(name: str) -> None:
    """Select the backend used by every AttentionBlock created without an explicit one."""
    global _DEFAULT_BACKEND
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(_BACKENDS)}")
    _DEFAULT_BACKEND = name


def get_attention_backend(name: str | None = None) -> AttentionBackend:
    name = _DEFAULT_BACKEND if name is None else name
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(_BACKENDS)}")
    return _BACKENDS[name]


class AttentionBlock(nn.Module):
    """Residual multi-head attention on a (B, C, H, W) feature map, optionally attending to text.

    q/k/v of the image tokens come from GroupNorm'd features; if `context_dim` is given, the block
    owns a Linear(context_dim -> 2C) producing text keys/values that are concatenated to the image
    keys/values, with the text padding mask honoured (image keys are always valid, so a prompt whose
    mask is all False -- the classifier-free-guidance null condition -- reduces to self-attention).
    The output projection is zero-initialised so the block starts as the identity.
    """

    def __init__(
        self,
        channels: int,
        head_dim: int,
        groups: int,
        context_dim: int | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"head_dim {head_dim} does not divide the attention's channel count {channels}")
        self.num_heads = channels // head_dim
        self.backend = backend  # None = module default at call time (see set_attention_backend)
        self.norm = nn.GroupNorm(groups, channels)
        self.to_qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.to_text_kv = nn.Linear(context_dim, 2 * channels) if context_dim is not None else None
        self.to_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def _heads(self, x: Tensor) -> Tensor:
        # (B, N, C) -> (B, h, N, d)
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, tokens: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        # x (B, C, H, W); tokens (B, L, C_ctx) or None; mask (B, L) bool or None
        b, c, hgt, wdt = x.shape
        qkv = self.to_qkv(self.norm(x).view(b, c, hgt * wdt))  # (B, 3C, N)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)  # each (B, N, C)
        key_mask = None
        if tokens is not None:
            if self.to_text_kv is None:
                raise ValueError("text tokens given to an AttentionBlock built without context_dim")
            text_k, text_v = self.to_text_kv(tokens).chunk(2, dim=-1)  # each (B, L, C)
            k = torch.cat([k, text_k], dim=1)  # (B, N+L, C)
            v = torch.cat([v, text_v], dim=1)  # (B, N+L, C)
            if mask is not None:
                image_valid = mask.new_ones(b, hgt * wdt)  # (B, N) image keys are always valid
                key_mask = torch.cat([image_valid, mask.bool()], dim=1)  # (B, N+L)
        out = get_attention_backend(self.backend)(self._heads(q), self._heads(k), self._heads(v), key_mask)
        out = out.transpose(1, 2).reshape(b, hgt * wdt, c).transpose(1, 2)  # (B, C, N)
        return x + self.to_out(out).view(b, c, hgt, wdt)


class CrossAttentionBlock(nn.Module):
    """Residual attention of image tokens (queries) over text tokens only (keys/values): the explicit text
    cross-attention of the self-attention-free 256->1024 Efficient U-Net (App. B.1, F.2).

    A prompt whose mask is all False (the classifier-free-guidance null condition) attends to nothing: its
    update is zero, so the block is the identity for the unconditional pass. The output projection is
    zero-initialised so the block starts as the identity.
    """

    def __init__(self, channels: int, head_dim: int, groups: int, context_dim: int, backend: str | None = None) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"head_dim {head_dim} does not divide the attention's channel count {channels}")
        self.num_heads, self.backend = channels // head_dim, backend
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Conv1d(channels, channels, 1)
        self.to_text_kv = nn.Linear(context_dim, 2 * channels)
        self.to_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)  # (B, h, N, d)

    def forward(self, x: Tensor, tokens: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        # x (B, C, H, W); tokens (B, L, C_ctx); mask (B, L) bool
        if tokens is None:
            raise ValueError("a CrossAttentionBlock needs text tokens (a cond with tokens, e.g. cond=cross_attn)")
        b, c, hgt, wdt = x.shape
        q = self.to_q(self.norm(x).view(b, c, hgt * wdt)).transpose(1, 2)  # (B, N, C)
        k, v = self.to_text_kv(tokens).chunk(2, dim=-1)  # each (B, L, C)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        # A fully masked row would be NaN in softmax: give such prompts one dummy key and zero their output.
        any_valid = mask.any(dim=1)  # (B,)
        safe_mask = mask.clone()
        safe_mask[~any_valid, 0] = True
        out = get_attention_backend(self.backend)(self._heads(q), self._heads(k), self._heads(v), safe_mask)
        out = out * any_valid.view(b, 1, 1, 1).to(out.dtype)
        out = out.transpose(1, 2).reshape(b, hgt * wdt, c).transpose(1, 2)  # (B, C, N)
        return x + self.to_out(out).view(b, c, hgt, wdt)
