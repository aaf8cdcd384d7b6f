"""Precomputed text embeddings: the text-encoder cache (Imagen §2.1).

Imagen's text encoder is frozen, so the embeddings of a caption never change during training: they can be
computed once, offline (§2.1), and training then reads them instead of running (or even loading) the
encoder. ``scripts/precompute_text_embeddings.py`` writes the cache; ``text=cached`` reads it (imagen.text.source).

Layout, beside the shards, one folder per encoder identity (jobs of a sweep share it)::

    <shard dir>/text_cache/<fingerprint[:12]>/<shard name>.safetensors   one file per training shard
    <dir of the first shard>/text_cache/<fingerprint[:12]>/prompts.safetensors   the held-out eval prompts

Every file is safetensors (never pickle) with the same two tensors, ``emb`` (sum of lengths, D) -- each
caption's token embeddings truncated to its true length, in the storage dtype (float16 / bfloat16 /
float32) -- and ``lengths`` (N,) int64, and string metadata: ``format``, ``identity`` (JSON: the encoder's
weight-defining config, whose sha256 names the folder), ``storage_dtype``, ``dim``, ``keys`` (JSON list:
the samples' keys, or the prompts' captions), and for a shard ``shard`` (JSON: name, size, mtime_ns and
sha256 of the tar it was computed from).

A cache is used only if it is current: same encoder identity, every training shard unchanged (same size,
and same sha256 unless its mtime is the recorded one -- the stat shortcut git uses), every sample key
present. Anything else raises :class:`TextCacheError`, one line naming what differs and the command that
rebuilds the cache; a stale cache is never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

FORMAT = "imagen-text-cache/1"
CACHE_DIR = "text_cache"
PROMPTS_FILE = "prompts.safetensors"
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


class TextCacheError(ValueError):
    """A missing, stale or mismatched text cache (one line: what differs, and how to rebuild)."""


# ------------------------------------------------------------------------------------------ where


def fingerprint(identity: dict) -> str:
    """sha256 hex of the encoder identity (JSON, sorted keys): names the cache folder."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def local_shard(url: str) -> Path:
    """The local path of a shard URL; the cache lives beside the shards, so remote shards have none."""
    path = url[len("file:") :] if url.startswith("file:") else url
    if _REMOTE.match(path):
        raise TextCacheError(f"the text cache lives beside the shards, which must be local files; got {url}")
    return Path(path)


def cache_dir(url: str, identity: dict) -> Path:
    """``<shard dir>/text_cache/<fingerprint[:12]>``: the folder of this encoder's cache beside a shard."""
    return local_shard(url).parent / CACHE_DIR / fingerprint(identity)[:12]


def shard_cache_file(url: str, identity: dict) -> Path:
    """The cache file of one shard: ``shapes-000000.tar`` -> ``.../shapes-000000.safetensors``."""
    name = local_shard(url).name
    return cache_dir(url, identity) / f"{name[:-4] if name.endswith('.tar') else name}.safetensors"


def prompts_cache_file(urls: Sequence[str], identity: dict) -> Path:
    """The eval prompts' cache file, in the cache folder of the first training shard."""
    return cache_dir(urls[0], identity) / PROMPTS_FILE


# ------------------------------------------------------------------------------------ write / read


def shard_stat(path: str | os.PathLike, with_sha256: bool = True) -> dict[str, Any]:
    """Name, size, mtime_ns (and sha256) of a shard file: what its cache was computed from."""
    st = os.stat(path)
    info: dict[str, Any] = {"name": Path(path).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_sha256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        info["sha256"] = h.hexdigest()
    return info


def write_cache_file(
    path: Path,
    keys: Sequence[str],
    rows: Sequence[Tensor],
    identity: dict,
    storage_dtype: str,
    shard: dict | None = None,
) -> None:
    """Write one cache file atomically (temporary file, then rename): rows[i] (L_i, D) is keys[i]'s embedding."""
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got {storage_dtype!r}")
    if len(keys) != len(rows) or len(set(keys)) != len(keys):
        raise ValueError(f"{path}: need one row per key and unique keys ({len(keys)} keys, {len(rows)} rows)")
    dim = rows[0].shape[1] if rows else 0
    emb = torch.cat([r.detach().cpu() for r in rows]) if rows else torch.zeros(0, dim)
    emb = emb.to(STORAGE_DTYPES[storage_dtype]).contiguous()
    if not torch.isfinite(emb).all():
        raise ValueError(f"{path}: non-finite embeddings in {storage_dtype} (float16 overflow? use bfloat16)")
    meta = {
        "format": FORMAT,
        "identity": json.dumps(identity, sort_keys=True),
        "storage_dtype": storage_dtype,
        "dim": str(dim),
        "keys": json.dumps(list(keys)),
    }
    if shard is not None:
        meta["shard"] = json.dumps(shard, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(
            {"emb": emb, "lengths": torch.tensor([r.shape[0] for r in rows], dtype=torch.int64)},
            str(tmp),
            metadata=meta,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def encode_rows(encoder, captions: Sequence[str], batch_size: int, progress=None) -> list[Tensor]:
    """What the cache stores: each caption's token embeddings truncated to its true length, (L_i, D), from
    ``encoder.encode`` (no memo); every distinct caption is encoded once, in batches of similar length."""
    unique = sorted(set(captions), key=lambda c: (len(c), c))
    rows: dict[str, Tensor] = {}
    for i in range(0, len(unique), batch_size):
        chunk = unique[i : i + batch_size]
        emb, mask = encoder.encode(chunk)  # (B, L, D) float32, (B, L) bool
        for caption, e, m in zip(chunk, emb, mask):
            rows[caption] = e[m].cpu()
        if progress is not None:
            progress.update(len(chunk))
    return [rows[c] for c in captions]


def read_meta(path: Path) -> dict[str, Any]:
    """A cache file's metadata with the JSON fields parsed (reads the header only)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != FORMAT:
        raise TextCacheError(f"{path} is not a text cache file of format {FORMAT} (format {meta.get('format')!r})")
    for field in ("identity", "keys", "shard"):
        if field in meta:
            meta[field] = json.loads(meta[field])
    meta["dim"] = int(meta["dim"])
    return meta


def read_rows(path: Path) -> dict[str, Tensor]:
    """A whole (small) cache file as {key: (L, D) float32}: the eval prompts."""
    meta = read_meta(path)
    with safe_open(str(path), framework="pt") as f:
        emb, lengths = f.get_tensor("emb").float(), f.get_tensor("lengths").tolist()
    return dict(zip(meta["keys"], emb.split(lengths)))


def pad_rows(rows: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Rows (L_i, D) -> embeddings (B, max L_i, D) float32 zero-padded and the (B, L) bool mask of valid tokens."""
    emb = pad_sequence([r.float() for r in rows], batch_first=True, padding_value=0.0)  # (B, max L_i, D)
    if emb.shape[1] == 0:  # every row empty: still one (padding) token per row
        emb = emb.new_zeros(emb.shape[0], 1, emb.shape[2])
    lengths = torch.tensor([r.shape[0] for r in rows], device=emb.device)
    mask = torch.arange(emb.shape[1], device=emb.device) < lengths[:, None]  # (B, L) bool
    return emb, mask


def _diff(cached: dict, run: dict) -> str:
    keys = sorted(k for k in set(cached) | set(run) if cached.get(k) != run.get(k))
    return ", ".join(f"{k}: cache {cached.get(k)!r} vs run {run.get(k)!r}" for k in keys)


def stale_reason(
    path: Path, identity: dict, shard_url: str | None = None, storage_dtype: str | None = None
) -> str | None:
    """Why the cache file ``path`` cannot be used for this identity (and shard, and storage dtype); None if current."""
    if not path.is_file():
        others = sorted(path.parent.parent.glob(f"*/{path.name}")) if path.parent.parent.is_dir() else []
        for other in others:  # name what differs from the caches of other encoder identities beside it
            try:
                differ = _diff(read_meta(other)["identity"], identity)
                return f"no text cache {path}; the one beside it ({other.parent.name}) was built with another encoder identity ({differ})"
            except (OSError, ValueError):
                continue
        return f"no text cache {path}"
    try:
        meta = read_meta(path)
    except (OSError, ValueError) as err:  # safetensors raises its own error types for a corrupt header
        return f"unreadable text cache {path} ({type(err).__name__}: {err})"
    if meta["identity"] != identity:
        return f"text cache {path} has another encoder identity ({_diff(meta['identity'], identity)})"
    if storage_dtype is not None and meta["storage_dtype"] != storage_dtype:
        return f"text cache {path} is stored in {meta['storage_dtype']}, not {storage_dtype}"
    if shard_url is not None:
        recorded, shard = meta.get("shard", {}), local_shard(shard_url)
        if not shard.is_file():
            return f"shard {shard_url} does not exist"
        now = shard_stat(shard, with_sha256=False)
        if now["size"] != recorded.get("size"):
            return f"shard {shard_url} changed since its text cache was built (size {recorded.get('size')} vs {now['size']} bytes)"
        if now["mtime_ns"] != recorded.get("mtime_ns"):
            sha = shard_stat(shard)["sha256"]
            if sha != recorded.get("sha256"):
                return f"shard {shard_url} changed since its text cache was built (sha256 {str(recorded.get('sha256'))[:12]} vs {sha[:12]})"
    return None


# ------------------------------------------------------------------------------------------ read side


class TextCache:
    """The current cache of one encoder identity over a dataset's training shards (§2.1).

    Construction checks every shard's cache file and the eval prompts' file (headers and shard stats only,
    plus a sha256 of any shard whose mtime changed) and raises :class:`TextCacheError` naming what differs
    and ``rebuild`` (the precompute command). Picklable (paths and metadata only), for DDP and workers.
    """

    def __init__(self, shard_urls: Sequence[str], identity: dict, rebuild: str):
        self.identity, self.rebuild = identity, rebuild
        self.files = {url: shard_cache_file(url, identity) for url in shard_urls}
        self.prompts_file = prompts_cache_file(list(shard_urls), identity)
        dtypes, dims = set(), set()
        for path, url in [(self.prompts_file, None), *((p, u) for u, p in self.files.items())]:
            reason = stale_reason(path, identity, shard_url=url)
            if reason is not None:
                raise TextCacheError(f"{reason}; rebuild it: {rebuild}")
            meta = read_meta(path)
            dtypes.add(meta["storage_dtype"])
            if meta["keys"]:  # an empty shard's file records no width
                dims.add(meta["dim"])
        if len(dtypes) > 1 or len(dims) > 1:
            raise TextCacheError(
                f"text cache {self.prompts_file.parent} mixes storage dtypes {sorted(dtypes)} / widths "
                f"{sorted(dims)}; rebuild it: {rebuild}"
            )
        self.storage_dtype, self.dim = dtypes.pop(), dims.pop()

    def prompt_embeddings(self, required: Iterable[str] = ()) -> PromptEmbeddings:
        """The eval prompts' embeddings; every ``required`` prompt must be cached."""
        prompts = PromptEmbeddings(read_rows(self.prompts_file), self.dim, self.prompts_file, self.rebuild)
        prompts(list(required))  # fail now, not at the first validation
        return prompts

    def attach(self) -> AttachEmbeddings:
        """The pipeline stage that adds each raw sample's cached ``text_emb``."""
        return AttachEmbeddings(self.files, self.rebuild)


class PromptEmbeddings:
    """The cached embeddings of the held-out eval prompts: captions -> (emb (B, L, D), mask (B, L)), like the
    encoder, which training with the cache never builds (§2.1). A prompt not in the cache is an error."""

    def __init__(self, rows: dict[str, Tensor], dim: int, path: Path, rebuild: str):
        self.rows, self.dim, self.path, self.rebuild = rows, dim, path, rebuild

    def to(self, device) -> PromptEmbeddings:  # the module moves its encoder; lookups are moved by the caller
        return self

    def __call__(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        missing = [c for c in captions if c not in self.rows]
        if missing:
            raise TextCacheError(
                f"prompt {missing[0]!r} is not in the text cache {self.path}; re-run precompute with it: {self.rebuild}"
            )
        if not captions:
            return torch.zeros(0, 1, self.dim), torch.zeros(0, 1, dtype=torch.bool)
        return pad_rows([self.rows[c] for c in captions])


class AttachEmbeddings:
    """Pipeline stage: each raw sample (with ``__url__`` and ``__key__``) gets ``text_emb``, its (L, D) cached
    embedding, read lazily (memory-mapped slices) from its shard's cache file. A sample with a caption
    whose key is not in the cache raises :class:`TextCacheError`."""

    def __init__(self, files: dict[str, Path], rebuild: str):
        self.files, self.rebuild = files, rebuild
        self._url: str | None = None
        self._emb: Any = None  # the open file's lazily sliced `emb`
        self._index: dict[str, tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:  # open handles stay in the process that opened them
        return {"files": self.files, "rebuild": self.rebuild}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["files"], state["rebuild"])

    def _open(self, url: str) -> None:
        if url not in self.files:
            raise TextCacheError(f"shard {url} has no text cache in this run; rebuild it: {self.rebuild}")
        path = self.files[url]
        keys = read_meta(path)["keys"]
        handle = safe_open(str(path), framework="pt")
        lengths = handle.get_tensor("lengths").tolist()
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        self._url, self._emb = url, handle.get_slice("emb")
        self._index = {k: (s, s + n) for k, s, n in zip(keys, starts, lengths)}

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for raw in src:
            url, key = raw.get("__url__"), raw.get("__key__")
            if url != self._url:
                self._open(url)
            span = self._index.get(key)
            if span is not None:
                raw["text_emb"] = self._emb[span[0] : span[1]]
            elif "txt" in raw:
                raise TextCacheError(
                    f"sample {key!r} of shard {url} is not in its text cache {self.files[url]}; rebuild it: {self.rebuild}"
                )
            yield raw
