"""Frozen pretrained text encoders (Imagen §2.1, App. D.1).

Imagen conditions on the token embeddings of a frozen language model (T5-XXL in the paper; BERT, the T5
family and CLIP's text tower in the ablation). Every encoder goes through this one class: `from_pretrained`
of a hub name or a local folder, a chosen hidden layer, and (embeddings, mask) out.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from pathlib import Path

import torch
from hydra.utils import get_class
from torch import Tensor, nn


class TextEncoderUnavailable(OSError):
    """A named model is neither a local folder nor in the local Hugging Face cache, and cannot be fetched."""


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """One TCP connect instead of the hub client's slow retries when offline."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class FrozenTextEncoder(nn.Module):
    """A frozen transformer text encoder: captions -> (embeddings (B, L, D), mask (B, L) bool).

    Args:
        name: hub id (e.g. "google/t5-v1_1-xxl"); the model's identity in caches and logs.
        path: a local folder with the weights and tokenizer; used instead of the hub when given.
        model_class: the transformers class to load (T5 must use T5EncoderModel, never the full T5Model).
        layer: which hidden state to return (-1 = last; CLIP uses the penultimate, -2, App. D.1).
        max_length: tokens kept per caption (the paper uses 128 for T5-XXL... shorter captions are padded).
        dtype: weights' dtype ("float32", "bfloat16", "float16"); the embeddings are returned in float32.
        memo_size: captions whose embeddings are kept in memory (0 = none). Captions repeat across epochs,
            and a frozen encoder gives each the same embedding, so repeats skip the encoder; bounded LRU.
        random_init_seed: None loads the pretrained weights. An integer builds the same architecture and tokenizer
            with freshly initialised weights (seeded, so every load is the same network): the control arm of
            "does a pretrained language model matter" (App. D.1 compares pretrained encoders only).
    """

    def __init__(
        self,
        name: str,
        path: str | None = None,
        model_class: str = "transformers.AutoModel",
        layer: int = -1,
        max_length: int = 128,
        dtype: str = "float32",
        revision: str | None = None,
        memo_size: int = 0,
        random_init_seed: int | None = None,
    ):
        super().__init__()
        if memo_size < 0:
            raise ValueError(f"encoder.memo_size must be >= 0, got {memo_size}")
        self.memo_size, self._memo = memo_size, OrderedDict()
        if max_length < 1:
            raise ValueError(f"encoder.max_length must be >= 1, got {max_length}")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"encoder.dtype must be one of float32, bfloat16, float16, got {dtype!r}")
        self.name, self.path, self.layer, self.max_length = name, path, layer, max_length
        self.dtype_name, self.revision, self.random_init_seed = dtype, revision, random_init_seed
        source = self._resolve_source()
        from transformers import AutoTokenizer

        kwargs = dict(revision=revision, local_files_only=source["local_only"])
        self.tokenizer = AutoTokenizer.from_pretrained(source["id"], **kwargs)
        cls = get_class(model_class)
        if random_init_seed is None:
            self.model = cls.from_pretrained(source["id"], dtype=getattr(torch, dtype), **kwargs)
        else:  # the pretrained architecture, randomly initialised (the global RNG is left untouched)
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(source["id"], **kwargs)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(random_init_seed)
                self.model = (
                    cls.from_config(config).to(getattr(torch, dtype))
                    if hasattr(cls, "from_config")
                    else cls._from_config(config).to(getattr(torch, dtype))
                )
        self.model.eval().requires_grad_(False)
        self.dim = int(
            self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.d_model
        )

    def _resolve_source(self) -> dict:
        """Local folder > local HF cache > the hub if reachable; otherwise fail in seconds with both fixes."""
        if self.path:
            if not Path(self.path).is_dir():
                raise FileNotFoundError(
                    f"encoder.path {self.path} does not exist (a folder with the weights and tokenizer of {self.name})"
                )
            return {"id": self.path, "local_only": True}
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(self.name, "config.json", revision=self.revision), str):
            return {"id": self.name, "local_only": True}
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        if offline or not _hub_reachable():
            raise TextEncoderUnavailable(
                f"text encoder {self.name} is not available locally and the hub cannot be reached"
                f"{' (HF_HUB_OFFLINE=1)' if offline else ''}: download it ahead "
                f"(`hf download {self.name}`) or pass encoder.path=/folder/with/{self.name.split('/')[-1]}"
            )
        return {"id": self.name, "local_only": False}

    def train(self, mode: bool = True):  # frozen: always in eval mode
        return super().train(False)

    @property
    def identity(self) -> dict:
        """What defines this encoder's embeddings (for caches and logs)."""
        identity = {
            "name": self.name,
            "revision": self.revision,
            "layer": self.layer,
            "max_length": self.max_length,
            "dtype": self.dtype_name,
        }
        if self.random_init_seed is not None:
            identity["random_init_seed"] = self.random_init_seed
        return identity

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """The encoder itself: (B, L, D) float32 embeddings and the (B, L) bool mask, L = longest caption."""
        device = next(self.model.parameters()).device
        tok = self.tokenizer(
            list(captions), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=self.layer != -1)
        hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        return hidden.float(), mask.bool()

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        if self.memo_size == 0:
            return self.encode(captions)
        missing = list(dict.fromkeys(c for c in captions if c not in self._memo))
        for c in missing:
            # Alone, unpadded: a memoised embedding must not depend on the batch the caption first came in (padding
            # and batch shape change the float rounding), or a resumed run, whose memo starts empty, is not exact.
            emb, mask = self.encode([c])
            self._memo[c] = emb[0][mask[0]]  # (L_c, D): the caption's own tokens
        while len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
        rows = [self._memo[c] for c in captions]
        for c in captions:
            self._memo.move_to_end(c)
        length = max(r.shape[0] for r in rows)
        emb = rows[0].new_zeros(len(rows), length, rows[0].shape[1])  # (B, L, D)
        mask = torch.zeros(len(rows), length, dtype=torch.bool, device=emb.device)  # (B, L)
        for i, r in enumerate(rows):
            emb[i, : r.shape[0]], mask[i, : r.shape[0]] = r, True
        return emb, mask
