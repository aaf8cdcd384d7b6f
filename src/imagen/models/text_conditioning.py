"""How the frozen text encoder's embeddings condition the U-Net: the seam of one ablation axis (§2.5, §4.4).

Imagen compares three ways of conditioning the base model on the text-embedding sequence
(B, L, D_text) (§4.4: "cross attention significantly outperforms" the pooling variants):

* MeanPoolConditioning        -- masked mean of the tokens -> MLP -> a vector added to the time embedding.
* AttentionPoolConditioning   -- learned attention pooling -> a vector added to the time embedding.
* CrossAttentionConditioning  -- attention pooling as above, *and* the tokens projected to a context
                                 width for the U-Net's attention layers (the paper's default): the text
                                 keys/values join the image's own in every self-attention layer (GLIDE).
* SeparateCrossAttentionConditioning -- the same text pathway, but each attention site is a self-attention
                                 layer followed by a text-only cross-attention layer with its own softmax
                                 (the layout of latent diffusion; §2.5 says "cross attention" without the detail).

Where the text enters the U-Net's attention is the conditioning's choice: `attention_layers` builds the layers
of one attention site (the U-Nets call it wherever they place attention).

`text_layernorm` applies LayerNorm to the text embeddings before pooling/projection (§2.5: "adding
Layer Normalization to text embedding in the attention and pooling layers" improves performance).

Padding never changes the output: padded positions (mask False) are zeroed on entry and excluded
from every pool and attention. A row whose mask is all False (the classifier-free-guidance null
condition, §2.2) gives a deterministic pooled vector -- zero mean for mean pooling, the learned
null token's value for attention pooling -- and no attendable tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagen.models.attention import AttentionBlock, CrossAttentionBlock


@dataclass
class TextCond:
    pooled: Tensor | None  # (B, E) added to the timestep embedding, or None
    tokens: Tensor | None  # (B, L, C_ctx) text tokens for attention, or None (no sequence attention)
    mask: Tensor | None  # (B, L) bool, True = real token


def _pool_heads(dim: int, head_dim: int = 64) -> int:
    """Heads of the attention pool: 64 channels per head where `dim` allows, else a single head."""
    return dim // head_dim if dim % head_dim == 0 else 1


class AttentionPool(nn.Module):
    """Multi-head attention pooling with one learned query (CLIP-style), (B, L, D_in) -> (B, dim).

    A learned null key/value is always attendable, so the pool is defined for an all-False mask
    (where it returns the null value, projected) and acts as an attention sink otherwise.
    Being a softmax-weighted sum with a position-independent query it is invariant to permuting tokens.
    """

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.num_heads = _pool_heads(dim)
        self.query = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.null_kv = nn.Parameter(torch.randn(2, dim) * dim**-0.5)
        self.to_kv = nn.Linear(in_dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # x (B, L, D_in); mask (B, L) bool -> (B, dim)
        b = x.shape[0]
        k, v = self.to_kv(x).chunk(2, dim=-1)  # each (B, L, dim)
        null_k, null_v = self.null_kv.to(k.dtype)[:, None, None, :].expand(2, b, 1, -1)  # each (B, 1, dim)
        k = torch.cat([null_k, k], dim=1)  # (B, 1+L, dim)
        v = torch.cat([null_v, v], dim=1)  # (B, 1+L, dim)
        key_mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)  # (B, 1+L)
        q = self.query.to(k.dtype).expand(b, 1, -1)  # (B, 1, dim)

        def heads(t: Tensor) -> Tensor:  # (B, n, dim) -> (B, h, n, d)
            return t.view(b, t.shape[1], self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=key_mask[:, None, None, :])
        return self.to_out(out.transpose(1, 2).reshape(b, -1))  # (B, dim)


class TextConditioning(nn.Module):
    """Interface: forward(emb (B, L, D_text) float, mask (B, L) bool) -> TextCond.

    `has_tokens` tells the U-Net whether to give its attention layers text key/value projections.
    """

    has_tokens: bool = False

    def __init__(self, text_dim: int, embed_dim: int, context_dim: int, text_layernorm: bool = True) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.embed_dim = embed_dim
        self.context_dim = context_dim
        self.norm = nn.LayerNorm(text_dim) if text_layernorm else nn.Identity()

    def attention_layers(self, channels: int, head_dim: int, groups: int, backend: str | None) -> list[nn.Module]:
        """The layers of one attention site of the U-Net at width `channels`: self-attention, with the text's
        keys/values concatenated to the image's when this conditioning has tokens."""
        context_dim = self.context_dim if self.has_tokens else None
        return [AttentionBlock(channels, head_dim, groups, context_dim, backend=backend)]

    def _prepare(self, emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # zero padded positions (whatever they held) then LayerNorm: (B, L, D_text), (B, L) bool
        mask = mask.bool()
        emb = torch.where(mask[..., None], emb, torch.zeros((), dtype=emb.dtype, device=emb.device))
        return self.norm(emb), mask

    def forward(self, emb: Tensor, mask: Tensor) -> TextCond:  # pragma: no cover - interface
        raise NotImplementedError


class MeanPoolConditioning(TextConditioning):
    """Masked mean of the (LayerNorm'd) tokens -> MLP -> pooled; no sequence attention (§4.4)."""

    def __init__(self, text_dim: int, embed_dim: int, context_dim: int, text_layernorm: bool = True) -> None:
        super().__init__(text_dim, embed_dim, context_dim, text_layernorm)
        self.mlp = nn.Sequential(nn.Linear(text_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, emb: Tensor, mask: Tensor) -> TextCond:
        x, mask = self._prepare(emb, mask)  # (B, L, D_text)
        weights = mask.to(x.dtype)[..., None]  # (B, L, 1)
        mean = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, D_text); zeros if mask all False
        return TextCond(pooled=self.mlp(mean), tokens=None, mask=None)


class AttentionPoolConditioning(TextConditioning):
    """Learned attention pooling of the (LayerNorm'd) tokens -> pooled; no sequence attention (§4.4)."""

    def __init__(self, text_dim: int, embed_dim: int, context_dim: int, text_layernorm: bool = True) -> None:
        super().__init__(text_dim, embed_dim, context_dim, text_layernorm)
        self.pool = AttentionPool(text_dim, embed_dim)

    def forward(self, emb: Tensor, mask: Tensor) -> TextCond:
        x, mask = self._prepare(emb, mask)
        return TextCond(pooled=self.pool(x, mask), tokens=None, mask=None)


class CrossAttentionConditioning(TextConditioning):
    """Attention-pooled vector + the token sequence projected to `context_dim` for attention (§2.5, default).

    tokens = Linear(LayerNorm(emb)), zeroed at padded positions; the mask is passed through so the
    U-Net's attention layers ignore padding. `pooled=False` drops the pooled vector (not in the paper): the text
    then reaches the U-Net through attention only, with no bag-of-words path into the time embedding.
    """

    has_tokens = True

    def __init__(
        self, text_dim: int, embed_dim: int, context_dim: int, text_layernorm: bool = True, pooled: bool = True
    ) -> None:
        super().__init__(text_dim, embed_dim, context_dim, text_layernorm)
        self.pool = AttentionPool(text_dim, embed_dim) if pooled else None
        self.to_context = nn.Linear(text_dim, context_dim)

    def forward(self, emb: Tensor, mask: Tensor) -> TextCond:
        x, mask = self._prepare(emb, mask)  # (B, L, D_text)
        tokens = self.to_context(x) * mask[..., None].to(x.dtype)  # (B, L, C_ctx)
        pooled = self.pool(x, mask) if self.pool is not None else None
        return TextCond(pooled=pooled, tokens=tokens, mask=mask)


class SeparateCrossAttentionConditioning(CrossAttentionConditioning):
    """Cross-attention conditioning whose text has its own attention layer at every site: image self-attention,
    then image queries over the text tokens only (CrossAttentionBlock), instead of text keys/values sharing one
    softmax with the image's (CrossAttentionConditioning). Same pooled vector and tokens.

    Why an option: at 16 x 16 px the image has 256 keys and a caption ~12, so in the shared softmax the text starts
    with ~5 % of the attention; here it has all of a layer's. Costs one (N x L) attention and a projection per site.
    """

    def attention_layers(self, channels: int, head_dim: int, groups: int, backend: str | None) -> list[nn.Module]:
        return [
            AttentionBlock(channels, head_dim, groups, None, backend=backend),
            CrossAttentionBlock(channels, head_dim, groups, self.context_dim, backend=backend),
        ]


def withhold_tokens(text_cond: TextConditioning) -> torch.utils.hooks.RemovableHandle:
    """A diagnostic, not a training option: from now on the U-Net's attention layers get the null condition (every
    text token masked) while the pooled vector still carries the caption. How much of what a model draws comes
    through attention rather than the pooled vector (`scripts/evaluate.py text_tokens=false`). Returns the hook's
    handle (`.remove()` restores the module)."""

    def hook(module: nn.Module, args: tuple, out: TextCond) -> TextCond:
        if out.mask is None:  # a pooling conditioning: no tokens to withhold
            return out
        return TextCond(pooled=out.pooled, tokens=out.tokens, mask=torch.zeros_like(out.mask))

    return text_cond.register_forward_hook(hook)
