"""VSE++: hinge ranking loss (max of hinges and sum of hinges) vs hand loops, GRU last-state caption encoder,
transformer text option, DDP hardest negatives over the gathered batch, retrieval evaluation, training, save/load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.losses import hinge_ranking_loss
from hf_ssl.modeling.vse import METHOD, VSEPPConfig, VSEPPForSelfSupervisedPretraining, retrieval_evaluate
from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks, save_rank, shard_forward_backward
from tiny_configs import TINY_CONFIGS, tiny_config
from train_utils import tiny_training_run
from vl_utils import image_text_batch


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return VSEPPForSelfSupervisedPretraining(tiny_config("vse", **overrides))


def make_batch(n=4, seed=0, length=16, vocab=600):
    return image_text_batch(n, seed, length, vocab)


def hand_hinge(img, txt, margin=0.2, max_violation=True):
    """Loops over every positive pair and every negative, as the paper's Eq. (4) (SH) and Eq. (5) (MH)."""
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    n = len(img)
    total = 0.0
    for i in range(n):
        pos = float(img[i] @ txt[i])
        caption_costs = [max(0.0, margin - pos + float(img[i] @ txt[j])) for j in range(n) if j != i]
        image_costs = [max(0.0, margin - pos + float(img[j] @ txt[i])) for j in range(n) if j != i]
        if max_violation:
            total += max(caption_costs) + max(image_costs)
        else:
            total += sum(caption_costs) + sum(image_costs)
    return total


@pytest.mark.parametrize("max_violation", [True, False])
def test_hinge_loss_matches_hand_loops(max_violation):
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    txt[:3] += 2 * img[:3]  # some pairs aligned, some not: active and inactive hinges
    t = lambda a: F.normalize(torch.tensor(a, dtype=torch.float64), dim=-1)  # noqa: E731
    loss, scores = hinge_ranking_loss(t(img), t(txt), margin=0.2, max_violation=max_violation)
    assert loss.item() == pytest.approx(hand_hinge(img, txt, 0.2, max_violation), rel=1e-9)
    mean, _ = hinge_ranking_loss(t(img), t(txt), margin=0.2, max_violation=max_violation, reduction="mean")
    assert mean.item() == pytest.approx(loss.item() / 7, rel=1e-9)
    assert scores.shape == (7, 7)
    # MH <= SH always; a perfectly separated batch (margin 0) costs nothing
    other, _ = hinge_ranking_loss(t(img), t(txt), margin=0.2, max_violation=not max_violation)
    assert (loss <= other) if max_violation else (loss >= other)
    eye = torch.eye(4, dtype=torch.float64)
    assert hinge_ranking_loss(eye, eye, margin=0.5, max_violation=max_violation)[0].item() == 0.0


def test_only_hardest_negatives_get_gradient():
    # with identity image embeddings, the score matrix is S[i, j] = txt[j, i]: gradients w.r.t. txt are
    # gradients w.r.t. the scores
    rng = np.random.default_rng(3)
    n = 5
    txt = torch.tensor(rng.uniform(0, 0.5, size=(n, n)) + np.eye(n) * 0.3, requires_grad=True)
    img = torch.eye(n, dtype=torch.float64)
    for max_violation in (True, False):
        txt.grad = None
        hinge_ranking_loss(img, txt, margin=0.2, max_violation=max_violation)[0].backward()
        grad_s = txt.grad.t()  # d loss / d S
        s = txt.detach().t()
        off = ~torch.eye(n, dtype=torch.bool)
        active_row = (0.2 + s - s.diagonal()[:, None] > 0) & off  # caption-retrieval hinges of image i
        active_col = (0.2 + s - s.diagonal()[None, :] > 0) & off  # image-retrieval hinges of caption j
        if max_violation:
            masked = s.masked_fill(~off, -1e9)
            row_max = F.one_hot(masked.argmax(1), n).bool() & active_row
            col_max = F.one_hot(masked.argmax(0), n).t().bool() & active_col
            expected = row_max.double() + col_max.double()
        else:
            expected = active_row.double() + active_col.double()
        assert torch.allclose(grad_s[off], expected[off])
        assert active_row.sum() > row_max.sum() if max_violation else True  # SH would touch more entries


def test_model_loss_matches_hand_computation_and_gru_uses_last_real_token():
    model = make_model().eval()
    batch = make_batch()
    out = model(**batch)
    img = model.encode_image(batch["pixel_values"]).detach().double().numpy()
    txt = model.encode_text(batch["input_ids"], batch["attention_mask"]).detach().double().numpy()
    assert out.loss.item() == pytest.approx(hand_hinge(img, txt, 0.2, True), rel=1e-5)
    # padding content is ignored; the embedding is the GRU state after the last real token
    ids = batch["input_ids"].clone()
    ids[batch["attention_mask"] == 0] = 7
    assert torch.allclose(model.get_text_features(ids, batch["attention_mask"]), model.get_text_features(
        batch["input_ids"], batch["attention_mask"]), atol=1e-6)
    n = int(batch["attention_mask"][0].sum())
    emb = model.text_encoder.embed(batch["input_ids"][:1, :n])
    _, h = model.text_encoder.rnn(emb)
    assert torch.allclose(model.get_text_features(batch["input_ids"][:1, :n])[0], F.normalize(h[-1][0], dim=-1),
                          atol=1e-6)
    # image side: L2-normalised CNN feature -> linear -> L2 normalisation (official EncoderImageFull)
    pooled = model.get_image_features(batch["pixel_values"])
    ref = F.normalize(model.visual_projection(F.normalize(pooled, dim=-1)), dim=-1)
    assert torch.allclose(model.get_joint_image_features(batch["pixel_values"]), ref, atol=1e-6)


def test_sum_of_hinges_option_and_transformer_text_encoder():
    batch = make_batch()
    sh = make_model(max_violation=False).eval()
    img = sh.encode_image(batch["pixel_values"]).detach().double().numpy()
    txt = sh.encode_text(batch["input_ids"], batch["attention_mask"]).detach().double().numpy()
    assert sh(**batch).loss.item() == pytest.approx(hand_hinge(img, txt, 0.2, False), rel=1e-5)
    tr = make_model(text_encoder="transformer", text_config=dict(
        model_type="clip_text_model", vocab_size=600, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=2)).train()
    assert type(tr.text_encoder).__name__ == "CLIPTextModel"
    out = tr(**batch)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.text_encoder.parameters())
    assert tr.get_text_features(batch["input_ids"], batch["attention_mask"]).shape == (4, 16)


# ----------------------------------------------------------------------------------------------------
# DDP: hardest negatives over the gathered batch
# ----------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world_size, out_dir, max_violation):
    model = make_model(max_violation=max_violation).eval()
    out, grads = shard_forward_backward(model, make_batch(n=8, seed=2), rank, world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), scores=out.logits, grads=grads)


@pytest.mark.parametrize("max_violation", [True])
def test_ddp_hardest_negatives_over_gathered_batch(tmp_path, max_violation):
    ranks = run_ranks(_ddp_worker, tmp_path, max_violation)
    model = make_model(max_violation=max_violation).eval()
    out = forward_backward(model, make_batch(n=8, seed=2))
    assert ranks[0]["scores"].shape == (4, 8)  # each process searches negatives among all 8 captions
    assert torch.allclose(torch.cat([r["scores"] for r in ranks]), out.logits, atol=1e-5)
    hardest_cols = out.logits.masked_fill(torch.eye(8, dtype=torch.bool), -2).argmax(1)
    assert ((hardest_cols[:4] >= 4).any() or (hardest_cols[4:] < 4).any())  # some hardest negative is remote
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-3)


# ----------------------------------------------------------------------------------------------------
# config, inputs, evaluation, training, save/load
# ----------------------------------------------------------------------------------------------------
def test_bad_config_and_inputs_raise():
    base = TINY_CONFIGS["vse"]
    for bad in ({"margin": -0.1}, {"margin": 3.0}, {"text_encoder": "lstm"}, {"loss_reduction": "max"},
                {"word_dim": 0}, {"num_gru_layers": 0}):
        with pytest.raises(ValueError):
            VSEPPConfig(**{**base, **bad})
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="vocab"):
        model(**{**batch, "input_ids": batch["input_ids"] + 10_000})
    with pytest.raises(ValueError, match="captions"):
        model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"][:2])
    with pytest.raises(ValueError, match="at least 2"):
        model(**{k: v[:1] for k, v in batch.items()})
    with pytest.raises(ValueError, match="attention_mask"):
        model(**{**batch, "attention_mask": batch["attention_mask"][:, :5]})


def test_retrieval_evaluation_and_tiny_training(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(model.config))
    trainer = tiny_training_run(model, ds, tmp_path, batch_size=8)
    logs = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(np.isfinite(logs))
    res = retrieval_evaluate(model, max_samples=40, k=(1, 5))
    for key in ("image_to_text_recall@1", "text_to_image_recall@5", "zero_shot_accuracy"):
        assert 0.0 <= res[key] <= 1.0
    assert res["image_to_text_recall@5"] >= res["image_to_text_recall@1"]


def test_save_load_round_trip(tmp_path):
    from transformers import AutoModel

    model = make_model().eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is VSEPPForSelfSupervisedPretraining
    batch = make_batch()
    assert torch.allclose(model(**batch).loss, reloaded(**batch).loss, atol=1e-6)
    assert torch.equal(model.get_text_features(batch["input_ids"]), reloaded.get_text_features(batch["input_ids"]))


def test_paper_defaults_and_demo_preset():
    cfg = VSEPPConfig()
    assert cfg.margin == 0.2 and cfg.max_violation and cfg.projection_dim == 1024 and cfg.word_dim == 300
    assert cfg.backbone_config.depths == [3, 8, 36, 3] and cfg.text_encoder == "gru"
    assert METHOD.make_config("cpu-demo").image_size == 32
