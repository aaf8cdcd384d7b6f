"""Self-attention over image tokens with text tokens concatenated to the keys/values (§2.5, App. F.1).

Imagen conditions the base U-Net on the full text sequence by "adding cross attention over the
text embeddings at multiple resolutions"; following Nichol et al. (GLIDE) this is implemented by
projecting the text tokens to keys/values of every attention layer and concatenating them to the
image tokens' own keys/values. With no text tokens the block is plain self-attention.

The attention kernel is a pluggable backend: a function (q, k, v, key_mask) -> out looked up by name
in a small registry, chosen per U-Net by the config key `unet.attention` (passed to every block) or, for
blocks built without one, by `set_attention_backend`. Registered:

- ``sdpa``: PyTorch's scaled_dot_product_attention (the default; fused flash / memory-efficient kernels on GPU).
- ``xformers``: xformers' memory-efficient attention (CUDA and the xformers package: requirements-gpu.txt).
- ``math``: softmax(Q K^T / sqrt(d) + mask) V written out, the reference the others are tested against.

Every block hands the backends q/k/v whose last dimension is contiguous (stride 1): the fused SDPA kernels and
xformers refuse anything else (SDPA silently falls back to its unfused math path). `check_attention_backend`
validates a name (and the machine, for xformers) when a U-Net is built, before any compute.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (q (B,h,N,d), k (B,h,M,d), v (B,h,M,d), key_mask (B,M) bool or None, True = attend) -> (B,h,N,d)
AttentionBackend = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]

XFORMERS_UNAVAILABLE = (
    "unet.attention=xformers needs CUDA and the xformers package (pip install -r requirements-gpu.txt); "
    "use unet.attention=sdpa"
)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """PyTorch scaled_dot_product_attention with a boolean key-padding mask (True = valid key)."""
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, M)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def math_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """The reference: softmax(Q K^T / sqrt(d) + mask) V, with mask 0 on valid keys and -inf on padded ones; the
    softmax in float32. A query with no valid key gets a zero output (as SDPA gives it)."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # (B, h, N, M)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    weights = scores.softmax(dim=-1)
    if key_mask is not None:  # all -inf rows are NaN in softmax: zero them
        weights = weights.masked_fill(~key_mask.any(dim=-1)[:, None, None, None], 0.0)
    return weights.to(v.dtype) @ v


def xformers_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """xformers.ops.memory_efficient_attention (layout (B, M, H, K)) with the key-padding mask as an additive bias:
    0 on valid keys, -inf on padded ones. xformers wants the bias' memory rows aligned (to 16 bytes), so the bias
    is a slice of a (B, 1, 1, M rounded up to 16) tensor, broadcast (stride 0) over heads and queries. The blocks
    never give a query without a valid key."""
    import xformers.ops  # the optional GPU extra, imported on use (checked when the U-Net is built)

    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, N, h, d): xformers' BMHK layout, a view
    bias = None
    if key_mask is not None:
        b, m = key_mask.shape
        padded = -(-m // 16) * 16
        storage = q.new_zeros(b, 1, 1, padded)
        storage[..., :m].masked_fill_(~key_mask[:, None, None, :], float("-inf"))
        bias = storage[..., :m].expand(b, q.shape[2], q.shape[1], m)  # (B, h, N, M), aligned rows
    return xformers.ops.memory_efficient_attention(q, k, v, attn_bias=bias).transpose(1, 2)  # (B, h, N, d)


def _xformers_problem() -> str | None:
    if not torch.cuda.is_available() or importlib.util.find_spec("xformers") is None:
        return XFORMERS_UNAVAILABLE
    return None


_BACKENDS: dict[str, AttentionBackend] = {
    "sdpa": sdpa_attention,
    "math": math_attention,
    "xformers": xformers_attention,
}
_REQUIREMENTS: dict[str, Callable[[], str | None]] = {"xformers": _xformers_problem}
_DEFAULT_BACKEND = "sdpa"


def register_attention_backend(
    name: str, fn: AttentionBackend, requirement: Callable[[], str | None] | None = None
) -> None:
    """Make `fn` selectable by `name`; `requirement()` returns the one-line error when this machine cannot run it."""
    _BACKENDS[name] = fn
    if requirement is not None:
        _REQUIREMENTS[name] = requirement


def check_attention_backend(name: str | None) -> str | None:
    """`name` if it is a registered backend this machine can run (None: the module default at call time); else a
    one-line ValueError naming the options or what the backend needs. Called when a U-Net is built."""
    if name is None:
        return None
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(_BACKENDS)}")
    problem = _REQUIREMENTS.get(name, lambda: None)()
    if problem:
        raise ValueError(problem)
    return name


def set_attention_backend(name: str) -> None:
    """Select the backend used by every AttentionBlock created without an explicit one."""
    global _DEFAULT_BACKEND
    check_attention_backend(name)
    _DEFAULT_BACKEND = name


def get_attention_backend(name: str | None = None) -> AttentionBackend:
    name = _DEFAULT_BACKEND if name is None else name
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(_BACKENDS)}")
    return _BACKENDS[name]


@contextlib.contextmanager
def attention_backend(model: nn.Module, name: str | None) -> Iterator[nn.Module]:
    """Within the block, every attention block of `model` uses backend `name` (restored afterwards): the FLOP
    count runs the `math` backend, a benchmark compares backends on one set of weights."""
    blocks = [m for m in model.modules() if isinstance(m, (AttentionBlock, CrossAttentionBlock))]
    saved = [b.backend for b in blocks]
    try:
        for block in blocks:
            block.backend = name
        yield model
    finally:
        for block, backend in zip(blocks, saved):
            block.backend = backend


def _tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, N = H*W, C), a view for channels_last maps (a copy otherwise, by the projection)."""
    return x.flatten(2).transpose(1, 2)


def _project(tokens: Tensor, proj: nn.Conv1d) -> Tensor:
    """A kernel-1 Conv1d applied token-wise as a matmul: (B, N, C_in) -> (B, N, C_out), contiguous in its last dim
    (the layout the fused attention kernels need). Same weights (and state_dict) as the Conv1d."""
    return F.linear(tokens, proj.weight.squeeze(-1), proj.bias)


def _image(tokens: Tensor, hgt: int, wdt: int) -> Tensor:
    """(B, N, C) -> (B, C, H, W): a view with channels_last strides."""
    return tokens.transpose(1, 2).unflatten(2, (hgt, wdt))


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

    @property
    def takes_text(self) -> bool:
        """Whether the U-Net hands this block the text tokens (it has text key/value projections)."""
        return self.to_text_kv is not None

    def _heads(self, x: Tensor) -> Tensor:
        # (B, N, C) -> (B, h, N, d)
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, tokens: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        # x (B, C, H, W); tokens (B, L, C_ctx) or None; mask (B, L) bool or None
        b, c, hgt, wdt = x.shape
        qkv = _project(_tokens(self.norm(x)), self.to_qkv)  # (B, N, 3C)
        q, k, v = qkv.chunk(3, dim=-1)  # each (B, N, C), last dim contiguous
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
        out = out.transpose(1, 2).reshape(b, hgt * wdt, c)  # (B, N, C)
        return x + _image(_project(out, self.to_out), hgt, wdt)


class CrossAttentionBlock(nn.Module):
    """Residual attention of image tokens (queries) over text tokens only (keys/values): the explicit text
    cross-attention of the self-attention-free 256->1024 Efficient U-Net (App. B.1, F.2).

    A prompt whose mask is all False (the classifier-free-guidance null condition) attends to nothing: its
    update is zero, so the block is the identity for the unconditional pass. The output projection is
    zero-initialised so the block starts as the identity.
    """

    takes_text = True

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
        q = _project(_tokens(self.norm(x)), self.to_q)  # (B, N, C)
        k, v = self.to_text_kv(tokens).chunk(2, dim=-1)  # each (B, L, C)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        # A fully masked row would be NaN in some kernels: give such prompts one dummy key and zero their output
        # (elementwise, so no host-device sync; a boolean-index assignment would sync on CUDA).
        any_valid = mask.any(dim=1)  # (B,)
        first_key = torch.zeros_like(mask)
        first_key[:, 0] = True
        safe_mask = mask | (first_key & ~any_valid[:, None])
        out = get_attention_backend(self.backend)(self._heads(q), self._heads(k), self._heads(v), safe_mask)
        out = out * any_valid.view(b, 1, 1, 1).to(out.dtype)
        out = out.transpose(1, 2).reshape(b, hgt * wdt, c)  # (B, N, C)
        return x + _image(_project(out, self.to_out), hgt, wdt)
