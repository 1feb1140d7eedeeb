"""Character-level visually grounded sentence encoder: offline character tokenizer, vectorial self-attention
pooling (hand computation, padding ignored), bidirectional GRU, hinge loss vs a hand loop, DDP-gathered
negatives, caption<->image recall@k evaluation, training, save/load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.char_sentence import (CHAR_VOCAB_SIZE, METHOD, CharSentenceConfig,
                                           CharSentenceForSelfSupervisedPretraining, build_char_tokenizer,
                                           retrieval_evaluate)
from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks, save_rank, shard_forward_backward
from tiny_configs import TINY_CONFIGS, tiny_config
from train_utils import tiny_training_run

CAPTIONS = ["a photo of the digit seven.", "a handwritten one.", "a drawing of the digit zero!", "two"]


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return CharSentenceForSelfSupervisedPretraining(tiny_config("char_sentence", **overrides))


def make_batch(captions=CAPTIONS, seed=0, length=48):
    tok = build_char_tokenizer(length)
    enc = tok(list(captions), padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(len(captions), 3, 32, 32, generator=g), "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"]}


def test_character_tokenizer_is_offline_and_character_level(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = build_char_tokenizer(48, save_directory=str(tmp_path / "tok"))
    assert len(tok) == CHAR_VOCAB_SIZE
    for text in CAPTIONS + ["Zebra-crossing 123?"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert len(ids) == len(text) + 2  # one token per character
        assert [tok.decode([i]) for i in ids[1:-1]] == list(text.lower())
    # unseen words are no problem (no lexicon): the same characters map to the same ids everywhere
    assert tok("xq")["input_ids"][1:-1] == [tok("x")["input_ids"][1], tok("q")["input_ids"][1]]
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert reloaded("digit")["input_ids"] == tok("digit")["input_ids"]


def test_vectorial_self_attention_matches_hand_computation_and_ignores_padding():
    model = make_model().eval()
    batch = make_batch()
    enc = model.text_encoder
    ids, mask = batch["input_ids"], batch["attention_mask"]
    states = enc.states(ids, mask)
    att = enc.attention
    w = att.weights(states, mask)
    # one weight per step and feature, summing to 1 over the real characters, 0 on padding
    assert torch.allclose(w.sum(1), torch.ones(4, states.shape[-1]), atol=1e-6)
    assert torch.all(w[mask == 0] == 0)
    i = 1
    n = int(mask[i].sum())
    h = states[i, :n]
    scores = att.out(torch.tanh(att.hidden(h)))
    hand = (torch.softmax(scores, dim=0) * h).sum(0)
    assert torch.allclose(enc(ids, mask)[i], hand, atol=1e-6)
    # padding content and padding length do not change the sentence embedding
    padded = ids.clone()
    padded[mask == 0] = 99
    assert torch.allclose(model.get_text_features(padded, mask), model.get_text_features(ids, mask), atol=1e-6)
    short = model.get_text_features(ids[i:i + 1, :n], mask[i:i + 1, :n])
    assert torch.allclose(short[0], model.get_text_features(ids, mask)[i], atol=1e-5)
    # bidirectional: the backward direction sees the end of the caption at step 0
    assert states.shape[-1] == 2 * model.config.rnn_hidden_size == model.config.projection_dim


def _hand_sum_hinge(img, txt, margin=0.2):
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    s = img @ txt.T
    total = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if i != j:
                total += max(0.0, margin - s[i, i] + s[i, j]) + max(0.0, margin - s[i, i] + s[j, i])
    return total


def test_model_loss_is_sum_of_hinges_on_joint_embeddings():
    model = make_model().eval()
    batch = make_batch()
    out = model(**batch)
    img = model.get_joint_image_features(batch["pixel_values"]).double().numpy()
    txt = model.get_text_features(batch["input_ids"], batch["attention_mask"]).double().numpy()
    assert out.loss.item() == pytest.approx(_hand_sum_hinge(img, txt), rel=1e-5)
    # image side: backbone feature -> linear -> L2 normalisation (no normalisation before the linear layer)
    pooled = model.get_image_features(batch["pixel_values"])
    assert torch.allclose(torch.from_numpy(img).float(), F.normalize(model.visual_projection(pooled), dim=-1),
                          atol=1e-6)
    model.train()
    model(**batch).loss.backward()
    for module in (model.text_encoder.embed, model.text_encoder.rnn, model.text_encoder.attention, model.encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def _ddp_worker(rank, world_size, out_dir):
    out, grads = shard_forward_backward(make_model().eval(), make_batch(CAPTIONS * 2, seed=4), rank, world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), grads=grads)


def test_ddp_gathered_negatives_equal_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = make_model().eval()
    out = forward_backward(model, make_batch(CAPTIONS * 2, seed=4))
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-3)


def test_bad_config_and_inputs_raise():
    base = TINY_CONFIGS["char_sentence"]
    for bad in ({"margin": -1.0}, {"rnn_hidden_size": 0}, {"char_embedding_dim": 0}, {"attention_hidden_size": 0},
                {"tokenizer_vocab_size": 600}, {"projection_dim": 7}, {"text_encoder": "gru"}):
        with pytest.raises(ValueError):
            CharSentenceConfig(**{**base, **bad})
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match="vocab"):
        model(**{**batch, "input_ids": batch["input_ids"] + 300})
    with pytest.raises(ValueError, match="context length"):
        model.get_text_features(torch.zeros(2, 60, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=batch["pixel_values"])


def test_view_policy_tokenizes_characters_and_training_and_retrieval(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    policy = build_view_generator(model.config)
    ids = policy.tokenize(["a one."])[0][0]
    assert int((ids != policy.tokenizer.pad_token_id).sum()) == len("a one.") + 2
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), policy)
    trainer = tiny_training_run(model, ds, tmp_path, batch_size=8)
    logs = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(np.isfinite(logs))
    res = retrieval_evaluate(model, max_samples=30, k=(1, 5))
    assert 0 <= res["text_to_image_recall@1"] <= res["text_to_image_recall@5"] <= 1


def test_save_load_round_trip(tmp_path):
    from transformers import AutoModel

    model = make_model().eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is CharSentenceForSelfSupervisedPretraining
    assert reloaded.config.projection_dim == 16
    batch = make_batch()
    assert torch.allclose(model(**batch).loss, reloaded(**batch).loss, atol=1e-6)


def test_paper_defaults_and_demo_preset():
    cfg = CharSentenceConfig()
    assert (cfg.char_embedding_dim, cfg.rnn_hidden_size, cfg.bidirectional, cfg.attention_hidden_size) == (20, 1024,
                                                                                                           True, 128)
    assert cfg.projection_dim == 2048 and cfg.margin == 0.2 and not cfg.max_violation
    assert METHOD.make_config("cpu-demo").context_length == 64
