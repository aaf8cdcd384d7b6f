"""The encoder axis (§2.1, App. D.1): every BERT / T5 / CLIP option of conf/encoder, offline.

No hub access: each family gets a TINY RANDOM model (built from a config) and a tokenizer trained here with
`tokenizers`, saved with `save_pretrained` into a folder. Each option is then loaded the way a hub name is:
the real Hydra config `encoder=<option>` with `encoder.path=<folder>`, built by `imagen.build`. The tests
check the output contract (width, mask, float32, frozen, the configured layer), that padding never reaches
the U-Net's output, that every (encoder, cond) pair trains, that the encoder stays out of checkpoints, that a
hub-name option without network fails in seconds with both fixes, and that every (encoder, cond) composes.
"""

from __future__ import annotations

import json
import random
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from imagen.build import build_module, build_text_encoder, model_config
from imagen.text.encoder import FrozenTextEncoder, TextEncoderUnavailable

from conftest import CONF as CONF_DIR
from conftest import ROOT, compose_cfg

CONF = Path(CONF_DIR)

# The families of the encoder axis, by the transformers class a YAML loads.
FAMILY_OF_CLASS = {
    "transformers.BertModel": "bert",
    "transformers.T5EncoderModel": "t5",
    "transformers.CLIPTextModel": "clip",
}
# The tiny models' widths: all different, and T5's d_model (40) differs from its heads * d_kv (32).
WIDTH = {"bert": 24, "t5": 40, "clip": 48}


def _encoder_yaml(option: str) -> dict:
    """The option's YAML, merged over the options its defaults list names (minilm_random extends minilm)."""
    own = yaml.safe_load((CONF / "encoder" / f"{option}.yaml").read_text())
    merged: dict = {}
    for parent in [d for d in own.pop("defaults", []) if d != "_self_"]:
        merged.update(_encoder_yaml(parent))
    return {**merged, **own}


def family_options() -> dict[str, str]:
    """{option: family} of the encoder options that load a BERT / T5 / CLIP class (minilm is AutoModel)."""
    out = {}
    for p in sorted((CONF / "encoder").glob("*.yaml")):
        family = FAMILY_OF_CLASS.get(_encoder_yaml(p.stem).get("model_class"))
        if family:
            out[p.stem] = family
    return out


OPTIONS = family_options()
FAMILIES = sorted(WIDTH)
FIRST = {f: next(o for o, fam in OPTIONS.items() if fam == f) for f in FAMILIES}  # one option per family
HUB_OPTIONS = sorted(
    o for o in (p.stem for p in (CONF / "encoder").glob("*.yaml")) if _encoder_yaml(o).get("path") is None
)
CONDS = sorted(p.stem for p in (CONF / "cond").glob("*.yaml"))
ALL_ENCODERS = sorted(p.stem for p in (CONF / "encoder").glob("*.yaml"))
TINY_UNET = ["image_size=16", "unet.channel_mult=[1,2]", "unet.attn_resolutions=[8]"]
CAPTIONS = ["a red circle", "two blue squares left of a green triangle and three yellow circles above a purple square"]


def encoder_overrides(option: str, folder: Path, dtype: str | None = "float32") -> list[str]:
    return [f"encoder={option}", f"encoder.path={folder}"] + ([f"encoder.dtype={dtype}"] if dtype else [])


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread (two threads contend, 100x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ tiny offline models of each family
WORDS = (
    "a an the one two three four red green blue yellow purple orange black white circle circles square squares "
    "triangle triangles star left right of above below next to and with big small"
).split()


def _corpus(n: int = 300) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(n)]


def _t5_tokenizer():
    """A SentencePiece-style Unigram (pad 0, eos 1, unk 2, as T5 has them) in T5's own tokenizer class."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(
        _corpus(), trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    )
    vocab = [(piece, score) for piece, score in _model_json(tok)["vocab"]]
    return transformers.T5TokenizerFast(
        vocab=vocab, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )


def _bert_tokenizer():
    """A WordPiece vocabulary (uncased) in BERT's own tokenizer class."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        _corpus(),
        trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    )
    return transformers.BertTokenizerFast(vocab=tok.get_vocab(), do_lower_case=True)


def _clip_tokenizer():
    """A byte-level BPE with CLIP's word-end suffix in CLIP's own tokenizer class (pad = eos, as in CLIP)."""
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        _corpus(),
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|startoftext|>", "<|endoftext|>"],
            end_of_word_suffix="</w>",
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    merges = [tuple(m.split(" ") if isinstance(m, str) else m) for m in _model_json(tok)["merges"]]
    return transformers.CLIPTokenizerFast(vocab=tok.get_vocab(), merges=merges)


def _model_json(tok: Tokenizer) -> dict:
    return json.loads(tok.to_str())["model"]


def _tiny_model(family: str, tokenizer):
    torch.manual_seed(0)
    n = len(tokenizer)
    if family == "bert":
        cfg = transformers.BertConfig(
            vocab_size=n,
            hidden_size=WIDTH["bert"],
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
        )
        return transformers.BertModel(cfg, add_pooling_layer=False)
    if family == "t5":
        return transformers.T5EncoderModel(_t5_config(tokenizer))
    cfg = transformers.CLIPTextConfig(
        vocab_size=n,
        hidden_size=WIDTH["clip"],
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return transformers.CLIPTextModel(cfg)


def _t5_config(tokenizer, **kwargs):
    """T5 v1.1 style: gated-GELU, untied embeddings, relative positions."""
    return transformers.T5Config(
        vocab_size=len(tokenizer),
        d_model=WIDTH["t5"],
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=1,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        **kwargs,
    )


TOKENIZERS = {"bert": _bert_tokenizer, "t5": _t5_tokenizer, "clip": _clip_tokenizer}


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """{family: folder} with a tiny random model and its tokenizer, each saved with save_pretrained."""
    dirs = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(f"tiny_{family}")
        tokenizer = TOKENIZERS[family]()
        tokenizer.save_pretrained(folder)
        _tiny_model(family, tokenizer).save_pretrained(folder)
        dirs[family] = folder
    return dirs


@pytest.fixture(scope="session")
def encoders(tiny_dirs) -> dict[str, FrozenTextEncoder]:
    """{family: encoder} built from the family's first option (float32), shared by the slower tests."""
    return {f: build_text_encoder(compose_cfg(encoder_overrides(FIRST[f], tiny_dirs[f]))) for f in FAMILIES}


def reference(family: str, folder: Path, captions: list[str], max_length: int):
    """The tokenizer and model of a folder loaded directly (not through the repo): tokens and all hidden states."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    cls = {"bert": transformers.BertModel, "t5": transformers.T5EncoderModel, "clip": transformers.CLIPTextModel}[
        family
    ]
    model = cls.from_pretrained(folder).eval()
    tok = tokenizer(captions, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], output_hidden_states=True)
    return tokenizer, tok, out


# ------------------------------------------------------------------ the configs themselves
def test_the_axis_has_every_family_and_option():
    assert OPTIONS == {
        "bert_base": "bert",
        "bert_large": "bert",
        "clip_l14": "clip",
        "t5_small": "t5",
        "t5_base": "t5",
        "t5_large": "t5",
        "t5_xl": "t5",
        "t5_xxl": "t5",
    }
    names = {o: _encoder_yaml(o)["name"] for o in OPTIONS}
    assert names["t5_xxl"] == "google/t5-v1_1-xxl" and names["clip_l14"] == "openai/clip-vit-large-patch14"
    assert all(names[o] == f"google/t5-v1_1-{o[3:]}" for o in OPTIONS if o.startswith("t5_"))
    assert names["bert_base"].endswith("bert-base-uncased") and names["bert_large"].endswith("bert-large-uncased")
    for option, family in OPTIONS.items():
        node = _encoder_yaml(option)
        assert node["_target_"] == "imagen.text.encoder.FrozenTextEncoder" and node["path"] is None
        assert node["layer"] == (-2 if family == "clip" else -1)  # CLIP: penultimate layer (App. D.1)
        assert node["dtype"] != "float16", "T5 v1.1 / BERT / CLIP activations overflow in float16: bfloat16 or float32"
        assert node["max_length"] <= (77 if family == "clip" else 512)  # CLIP has 77 positions, BERT 512


def test_tiny_tokenizers_reload_offline(tiny_dirs):
    """Each saved tokenizer reloads with AutoTokenizer into its family's class, pads, and marks the padding."""
    classes = {"bert": "Bert", "t5": "T5", "clip": "CLIP"}
    for family, folder in tiny_dirs.items():
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        assert type(tokenizer).__name__.startswith(classes[family])
        tok = tokenizer(CAPTIONS, padding="longest")
        ids, mask = tok["input_ids"], tok["attention_mask"]
        assert sum(mask[1]) == len(ids[1]) and 0 < sum(mask[0]) < len(ids[0])  # the short caption is padded
        assert all(i == tokenizer.pad_token_id for i, m in zip(ids[0], mask[0]) if not m)
        assert tokenizer.unk_token_id not in ids[1][1:-1]  # the words are in the tiny vocabularies (CLIP: unk = eos)
        assert ids[1][-1] == tokenizer.sep_token_id if family == "bert" else ids[1][-1] == tokenizer.eos_token_id
    clip = transformers.AutoTokenizer.from_pretrained(tiny_dirs["clip"])
    assert clip.pad_token_id == clip.eos_token_id  # CLIP pads with its eos token: only the mask tells them apart


# ------------------------------------------------------------------ 1. output contract and the configured layer
LAYER_CASES = [(o, []) for o in OPTIONS] + [("bert_base", ["encoder.layer=-2"]), ("t5_small", ["encoder.layer=-3"])]


@pytest.mark.parametrize("option,extra", LAYER_CASES, ids=[o + "".join(f"[{x}]" for x in e) for o, e in LAYER_CASES])
def test_option_loads_from_local_folder(option, extra, tiny_dirs):
    family = OPTIONS[option]
    cfg = compose_cfg(encoder_overrides(option, tiny_dirs[family]) + extra)
    enc = build_text_encoder(cfg)
    assert isinstance(enc, FrozenTextEncoder) and isinstance(enc.model, get_class(cfg.encoder.model_class))
    assert enc.dim == WIDTH[family] and enc.identity["name"] == cfg.encoder.name  # the hub id stays the identity

    emb, mask = enc(CAPTIONS)
    tokenizer, tok, out = reference(family, tiny_dirs[family], CAPTIONS, cfg.encoder.max_length)
    assert emb.dtype == torch.float32 and emb.shape == (2, tok["input_ids"].shape[1], WIDTH[family])
    assert mask.dtype == torch.bool and torch.equal(mask, tok["attention_mask"].bool())
    assert mask[1].all() and int(mask[0].sum()) == len(tokenizer(CAPTIONS[0])["input_ids"]) < mask.shape[1]

    layer = cfg.encoder.layer
    expected = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)
    if layer != -1:  # the setting matters: another layer gives other embeddings
        assert not torch.allclose(out.hidden_states[layer], out.last_hidden_state, atol=1e-3)

    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.model.training

    long, _ = enc([" ".join(["red circle"] * 200)])  # longer than any position table: truncated to max_length
    assert long.shape[1] == cfg.encoder.max_length and torch.isfinite(long).all()


def test_bfloat16_weights_give_float32_embeddings(tiny_dirs, encoders):
    """t5_xxl as configured (bf16 weights): embeddings are float32 and match the float32 encoder closely."""
    cfg = compose_cfg(encoder_overrides("t5_xxl", tiny_dirs["t5"], dtype=None))
    assert cfg.encoder.dtype == "bfloat16"
    enc = build_text_encoder(cfg)
    assert enc.model.shared.weight.dtype == torch.bfloat16
    emb, mask = enc(CAPTIONS)
    ref, ref_mask = encoders["t5"](CAPTIONS)
    assert emb.dtype == torch.float32 and torch.equal(mask, ref_mask)
    cos = torch.nn.functional.cosine_similarity(emb[mask], ref[mask], dim=-1)
    assert cos.min() > 0.98, cos.min()


# ------------------------------------------------------------------ 2. T5 is the encoder-only class
def test_t5_is_encoder_only(encoders, tiny_dirs, tmp_path):
    enc = encoders["t5"]
    assert isinstance(enc.model, transformers.T5EncoderModel) and not hasattr(enc.model, "decoder")
    assert not any(k.startswith(("decoder", "lm_head")) for k in enc.model.state_dict())

    # The hub's T5 v1.1 checkpoints are full encoder-decoders: loading one keeps only the encoder.
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_dirs["t5"])
    torch.manual_seed(1)
    full = transformers.T5ForConditionalGeneration(_t5_config(tokenizer)).eval()
    full.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    enc = build_text_encoder(compose_cfg(encoder_overrides("t5_base", tmp_path)))
    assert isinstance(enc.model, transformers.T5EncoderModel)
    assert not any(k.startswith(("decoder", "lm_head")) for k in enc.model.state_dict())
    assert sum(p.numel() for p in enc.model.parameters()) == sum(p.numel() for p in full.get_encoder().parameters())
    emb, mask = enc(CAPTIONS)
    with torch.no_grad():
        tok = tokenizer(CAPTIONS, padding="longest", return_tensors="pt")
        expected = full.get_encoder()(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
        ).last_hidden_state
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ 3. padding never reaches the U-Net's output
def _randomize_zero_init(module: torch.nn.Module) -> None:
    """The U-Net's zero-initialised output layers get random weights, so that the text reaches the output."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)


@pytest.mark.parametrize("family,cond", [(f, c) for f in FAMILIES for c in CONDS])
def test_padding_never_changes_the_unet_output(family, cond, encoders, tiny_dirs):
    enc = encoders[family]
    cfg = compose_cfg(encoder_overrides(FIRST[family], tiny_dirs[family]) + [f"cond={cond}"] + TINY_UNET)
    unet = build_module(cfg, text_encoder=enc).unet.eval()
    _randomize_zero_init(unet)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        alone = unet(x[:1], t[:1], *enc([CAPTIONS[0]]))
        emb, mask = enc(CAPTIONS)
        assert not mask[0].all()  # the prompt really is padded in the batch
        batched = unet(x, t, emb, mask)
        other = unet(x[:1], t[:1], *enc(["three orange stars"]))
    torch.testing.assert_close(batched[:1], alone, atol=1e-4, rtol=1e-4)
    assert (other - alone).abs().max() > 1e-3  # not vacuous: the text does change the output


# ------------------------------------------------------------------ 4. every (encoder, cond) pair trains
@pytest.mark.parametrize("family,cond", [(f, c) for f in FAMILIES for c in CONDS])
def test_every_encoder_and_cond_trains_a_step(family, cond, tiny_dirs):
    cfg = compose_cfg(encoder_overrides(FIRST[family], tiny_dirs[family]) + [f"cond={cond}"] + TINY_UNET)
    module = build_module(cfg)  # builds the encoder from the config: encoder.path, not the hub
    module.p_uncond = 0.0  # keep the text in these steps, so its pathway gets a gradient
    _randomize_zero_init(module.unet)  # else the text's gradient reaches the pathway only after a few steps
    opt = instantiate(cfg.optim.optimizer)(module.unet.parameters())
    before = {k: v.detach().clone() for k, v in module.unet.text_cond.named_parameters()}
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, "caption": CAPTIONS}
    for _ in range(2):
        opt.zero_grad()
        loss = module.compute_loss(batch)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in module.unet.text_cond.named_parameters())
    assert not any(p.requires_grad or p.grad is not None for p in module.text_encoder.parameters())
    assert not any(k.startswith(("text_encoder", "_text_encoder")) for k in module.state_dict())


# ------------------------------------------------------------------ 5. a full T5 run through train.py
def _keys(obj, prefix: str = "") -> list[str]:
    """Every key path of a nested checkpoint dict."""
    if isinstance(obj, dict):
        return [k for key, value in obj.items() for k in [f"{prefix}{key}"] + _keys(value, f"{prefix}{key}.")]
    return []


@pytest.mark.slow
def test_t5_run_checkpoint_has_no_encoder_and_names_it(tiny_dirs, tmp_path, monkeypatch):
    """`python train.py encoder=t5_small encoder.path=...`, run in this process (runpy: Hydra's own entry point)."""
    run_dir = tmp_path / "run"
    overrides = (
        encoder_overrides("t5_small", tiny_dirs["t5"])
        + TINY_UNET
        + [
            "cond=cross_attn",
            f"data.root={tmp_path}/data",
            "data.n_train=16",
            "data.samples_per_shard=16",
            "data.gen_procs=1",
            "data.world.n_eval=1",
            "data.batch_size=4",
            "data.num_workers=0",
            "logger=csv",
            "data.eval_repeats=1",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.log_every_n_steps=1",
            "callbacks.model_checkpoint.every_n_train_steps=2",
            "sampler.steps=2",
            "callbacks.ema.start_step=1",
            f"hydra.run.dir={run_dir}",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ]
    )
    monkeypatch.setattr(sys, "argv", [str(ROOT / "train.py")] + overrides)
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as exit_:  # Hydra exits non-zero when the job fails
        assert exit_.code in (0, None), f"train.py exited with {exit_.code}"
    finally:
        GlobalHydra.instance().clear()

    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    keys = _keys(state)
    assert any(k.startswith("state_dict.unet.") for k in keys)
    leaked = [
        k for k in keys if any(s in k for s in ("text_encoder", "model.encoder", "encoder.block", "shared.weight"))
    ]
    assert not leaked, leaked[:5]
    saved = state["imagen_model_config"]  # the weights' config names the encoder (but not the local folder)
    assert (
        saved["encoder.name"] == "google/t5-v1_1-small"
        and saved["encoder.model_class"] == "transformers.T5EncoderModel"
    )
    assert "encoder.path" not in saved

    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())  # what the loggers got: tags' choices + config
    assert hparams["choices"]["encoder"] == "t5_small" and hparams["choices"]["cond"] == "cross_attn"
    assert hparams["config"]["encoder"]["name"] == "google/t5-v1_1-small"
    assert hparams["config"]["encoder"]["path"] == str(tiny_dirs["t5"])
    assert "encoder=t5_small" in (run_dir / ".hydra" / "overrides.yaml").read_text()


# ------------------------------------------------------------------ 6. fail fast without the weights
@pytest.mark.parametrize("option", HUB_OPTIONS)
def test_hub_option_offline_fails_fast_with_both_fixes(option, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # even if cached here
    cfg = compose_cfg([f"encoder={option}"])
    start = time.perf_counter()
    with pytest.raises(TextEncoderUnavailable) as err:
        build_text_encoder(cfg)
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert cfg.encoder.name in message and "download" in message and "encoder.path" in message


def test_unavailable_encoder_stops_the_run_with_one_line(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants

    from imagen.run import run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(SystemExit) as exit_info:
        run(compose_cfg(["encoder=t5_xxl", "logger=none", f"run_dir={tmp_path}/run", f"data.root={tmp_path}/data"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "google/t5-v1_1-xxl" in err[0] and "encoder.path" in err[0]
    assert not (tmp_path / "data").exists()  # stopped before any data or compute


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_encoder_path_names_it(family, tmp_path):
    missing = tmp_path / "no-such-encoder"
    with pytest.raises(FileNotFoundError, match="no-such-encoder"):
        build_text_encoder(compose_cfg([f"encoder={FIRST[family]}", f"encoder.path={missing}"]))


# ------------------------------------------------------------------ 7. every (encoder, cond) composes
def test_every_encoder_and_cond_composes():
    """Every encoder option with one conditioning and every conditioning with one encoder (the two groups own
    disjoint keys; the trained encoder x cond matrix is `test_every_encoder_and_cond_trains_a_step`)."""
    pairs = [(e, CONDS[0]) for e in ALL_ENCODERS] + [(ALL_ENCODERS[0], c) for c in CONDS[1:]]
    for encoder, cond in pairs:
        cfg = compose_cfg([f"encoder={encoder}", f"cond={cond}"])
        node = OmegaConf.to_container(cfg.encoder, resolve=True)
        assert node["_target_"] == "imagen.text.encoder.FrozenTextEncoder" and node["name"]
        assert cfg.cond._target_.startswith("imagen.models.text_conditioning.")
        flat = model_config(cfg)
        assert flat["encoder.name"] == node["name"] and "encoder.path" not in flat


@pytest.mark.slow
def test_cfg_job_of_a_paper_encoder():
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "encoder=t5_xxl", "cond=attn_pool", "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert (
        cfg["encoder"]["name"] == "google/t5-v1_1-xxl"
        and cfg["encoder"]["model_class"] == "transformers.T5EncoderModel"
    )
    assert cfg["cond"]["_target_"].endswith("AttentionPoolConditioning")
