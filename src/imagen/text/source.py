"""Where a run's text embeddings come from (Imagen §2.1): the frozen encoder itself, or its embeddings computed
offline once (the text cache, imagen.text.cache). One class per option of the `text` config group."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from imagen.text.cache import TextCache


class TextSource:
    """Interface. `build_encoder` loads the frozen encoder; `open_cache` opens the run's text cache (a TextCacheError,
    one line with the rebuild command, when it is missing or stale). Both are called only when needed."""

    def sampling_encoder(
        self,
        build_encoder: Callable[[], nn.Module],
        open_cache: Callable[[], TextCache],
        eval_prompts: Callable[[], Iterable[str]],
    ) -> nn.Module:
        """What the module encodes captions with (the validation grid's prompts): captions -> (emb, mask)."""
        raise NotImplementedError

    def training_cache(self, open_cache: Callable[[], TextCache]) -> TextCache | None:
        """The cache whose embeddings the data pipeline attaches to the training batches, or None."""
        raise NotImplementedError


class OnlineText(TextSource):
    """The frozen encoder encodes every batch's captions."""

    def sampling_encoder(self, build_encoder, open_cache, eval_prompts) -> nn.Module:
        return build_encoder()

    def training_cache(self, open_cache) -> TextCache | None:
        return None


class CachedText(TextSource):
    """Precomputed embeddings for the training captions and the held-out prompts; the encoder is never built."""

    def sampling_encoder(self, build_encoder, open_cache, eval_prompts) -> nn.Module:
        return open_cache().prompt_embeddings(required=eval_prompts())

    def training_cache(self, open_cache) -> TextCache | None:
        return open_cache()
