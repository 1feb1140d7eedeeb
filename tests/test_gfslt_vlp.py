"""GFSLT-VLP: contrastive terms against hand-written references, text-side masking (whole words, aligned positions,
loss only on masked tokens when asked, official all-token loss), gradient routing of the decoder term, motion
sentences measured from a constructed clip, 2-process DDP equivalence, training run, video->text retrieval."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.gfslt_vlp import (METHOD, GFSLTVLPConfig, GFSLTVLPForSelfSupervisedPretraining,
                                       kl_soft_contrastive_loss, video_text_evaluate)
from hf_ssl.modeling.gfslt_vlp.views_gfslt_vlp import (describe_motion, load_gfslt_tokenizer, masked_word_indices,
                                                       motion_sentence, tokenize_and_mask)
from hf_ssl.modeling.clip.modeling_clip import clip_contrastive_loss
from hf_ssl.training.data import build_view_generator
from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks, save_rank, shard_forward_backward
from tiny_configs import tiny_config
from train_utils import loss_logs, tiny_training_run


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GFSLTVLPForSelfSupervisedPretraining(tiny_config("gfslt_vlp", **overrides))


def _batch(model, b=4, seed=0, rate=0.5, kind="omit"):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    tok = load_gfslt_tokenizer(model.config)
    names = ["three", "seven", "one", "eight", "zero", "five", "two", "nine"]
    dirs = ["up", "down and to the left", "to the right", "up and to the right, then bouncing down"]
    texts = [tokenize_and_mask(tok, f"a {names[i % 8]} moving {dirs[i % 4]}", model.config.context_length, rate, kind,
                               rng) for i in range(b)]
    batch = {k: torch.stack([t[k] for t in texts]) for k in texts[0]}
    batch["pixel_values_videos"] = torch.randn(b, 8, 3, 32, 32, generator=g)
    return batch


def test_contrastive_terms_equal_hand_written_reference():
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(3, 5, generator=g), dim=1)
    t = F.normalize(torch.randn(3, 5, generator=g), dim=1)
    s = torch.tensor(1 / 0.07)
    clip, _ = clip_contrastive_loss(v, t, s)
    kl, logits = kl_soft_contrastive_loss(v, t, s)
    ref_clip = ref_kl = 0.0
    q_diag = math.exp(10) / (math.exp(10) + 2)  # softmax(10 * one-hot) over 3 columns
    q_off = 1 / (math.exp(10) + 2)
    for a, b in ((v, t), (t, v)):
        for i in range(3):
            row = [float(s) * float(a[i] @ b[j]) for j in range(3)]
            lse = math.log(sum(math.exp(x) for x in row))
            ref_clip += (lse - row[i]) / 6
            for j in range(3):
                q = q_diag if j == i else q_off
                ref_kl += q * (math.log(q) - (row[j] - lse)) / 6
    assert clip.item() == pytest.approx(ref_clip, rel=1e-5)
    assert kl.item() == pytest.approx(ref_kl, rel=1e-5)
    assert logits.shape == (3, 3)


def test_masked_word_selection_follows_noise_injecting():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = masked_word_indices(10, 0.15, "omit_last", rng)
        assert len(idx) in (0, 1, 2) and (len(idx) == 0 or idx.tolist() == list(range(10 - len(idx), 10)))
        idx = masked_word_indices(10, 0.15, "omit", rng)
        assert len(idx) == 10 - int(10 * 0.85)
    tok = load_gfslt_tokenizer(tiny_config("gfslt_vlp"))
    sentence = "a three moving up and to the left, then bouncing down"
    for seed in range(10):
        out = tokenize_and_mask(tok, sentence, 24, 0.5, "omit", np.random.default_rng(seed))
        ids, masked, pos = out["input_ids"], out["masked_input_ids"], out["masked_positions"]
        assert (masked[pos] == tok.mask_token_id).all() and torch.equal(masked[~pos], ids[~pos])
        kept = tok.decode(masked[~pos & out["attention_mask"].bool()], skip_special_tokens=True).split()
        words = sentence.split()
        assert len(kept) == len(words) - (len(words) - int(len(words) * 0.5))  # whole words masked
        assert all(w in words for w in kept)
        assert not pos[0] and not pos[out["attention_mask"].sum() - 1]  # BOS / EOS never masked
    unmasked = tokenize_and_mask(tok, sentence, 24, 0.5, "omit", None)
    assert "masked_input_ids" not in unmasked


def _reference_mlm(model, batch, only_masked):
    ids, att = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        memory = model.text_states(batch["masked_input_ids"], att)
        logits = model.decode(ids, att, memory, att)
    total, count = 0.0, 0
    eps = model.config.mlm_label_smoothing
    for i in range(ids.shape[0]):
        for j in range(1, ids.shape[1]):
            if att[i, j] == 0 or (only_masked and not batch["masked_positions"][i, j]):
                continue
            logp = F.log_softmax(logits[i, j - 1].double(), dim=-1)
            total += float(-(1 - eps) * logp[ids[i, j]] - eps * logp.mean())
            count += 1
    return total / count


@pytest.mark.parametrize("tokens", ["all", "masked"])
def test_reconstruction_loss_reference_and_masked_only(tokens):
    model = _model(mlm_loss_tokens=tokens).eval()
    batch = _batch(model)
    out = model(**batch)
    assert out.metrics["mlm_loss"].item() == pytest.approx(_reference_mlm(model, batch, tokens == "masked"), rel=1e-4)
    if tokens == "masked":
        # the loss ignores the targets at unmasked positions: changing the decoder's prediction there changes nothing
        logits = {}

        def grab(module, args, output):
            output.logits.retain_grad()
            logits["t"] = output.logits

        handle = model.decoder.register_forward_hook(grab)
        model.zero_grad()
        model(**batch).loss.backward()
        handle.remove()
        grad = logits["t"].grad.abs().sum(-1)  # [B, L - 1]
        target_masked = batch["masked_positions"][:, 1:]
        assert (grad[~target_masked] == 0).all() and (grad[target_masked] > 0).all()
        with pytest.raises(ValueError, match="masked_positions"):
            model(**{k: v for k, v in batch.items() if k != "masked_positions"})


def test_decoder_term_gradient_routing():
    """Official V2: the reconstruction trains the decoder only (text encoder states without gradient);
    decoder_condition='visual' lets it reach the visual encoder."""
    def grads(**kw):
        model = _model(**kw).eval()
        model(**_batch(model)).loss.backward()
        return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}

    with_mlm, without = grads(mlm_weight=1.0), grads(mlm_weight=0.0)
    for n in with_mlm:
        if n.startswith(("text_encoder.", "encoder.", "visual_projection.", "logit_scale")):
            torch.testing.assert_close(with_mlm[n], without[n], atol=1e-6, rtol=1e-5)
    assert any(with_mlm[n].abs().sum() > 0 for n in with_mlm if n.startswith("decoder."))
    assert all(without[n].abs().sum() == 0 for n in without if n.startswith("decoder."))
    visual, visual0 = grads(decoder_condition="visual"), grads(decoder_condition="visual", mlm_weight=0.0)
    diff = [(visual[n] - visual0[n]).abs().sum() for n in visual if n.startswith("encoder.")]
    assert max(diff) > 0
    assert all(torch.equal(visual[n], visual0[n]) for n in visual if n.startswith("text_encoder."))


def test_motion_sentence_measured_from_a_constructed_clip():
    frames, pos, vel = [], np.array([40.0, 20.0]), np.array([-2.0, -2.0])  # up and to the left
    for t in range(16):
        if t == 8:
            vel = np.array([-2.0, 2.5])  # bounce off the top border: now down (still to the left)
        f = np.zeros((48, 48), dtype=np.uint8)
        x, y = int(round(pos[0])), int(round(pos[1]))
        f[y:y + 6, x:x + 6] = 255
        frames.append(Image.fromarray(f).convert("RGB"))
        pos = pos + vel
    assert describe_motion(frames) == "moving up and to the left, then bouncing down and to the left"
    assert motion_sentence("eight", frames[:8]) == "an eight moving up and to the left"
    still = [frames[0]] * 8
    assert describe_motion(still) == "standing still"
    config = tiny_config("gfslt_vlp")
    policy = build_view_generator(config)
    out = policy(frames, np.random.default_rng(0), example={"label": 3})
    text = policy.tokenizer.decode(out["input_ids"], skip_special_tokens=True)
    assert text.startswith("a three ") and out["pixel_values_videos"].shape == (8, 3, 32, 32)
    assert policy(frames, np.random.default_rng(0), example={"text": "guten morgen"})["input_ids"].shape == (24,)


def test_bad_inputs_and_configs():
    model = _model().eval()
    batch = _batch(model)
    with pytest.raises(ValueError, match="pixel_values_videos and input_ids"):
        model(pixel_values_videos=batch["pixel_values_videos"])
    with pytest.raises(ValueError, match="clips but"):
        model(**{**batch, "pixel_values_videos": batch["pixel_values_videos"][:2]})
    with pytest.raises(ValueError, match="channels"):
        model(**{**batch, "pixel_values_videos": torch.randn(4, 8, 1, 32, 32)})
    with pytest.raises(ValueError, match="out of range"):
        model(**{**batch, "masked_input_ids": batch["masked_input_ids"] + 10_000})
    for bad in (dict(mask_ratio=0.0), dict(mask_ratio=1.0), dict(mask_type="span"), dict(decoder_condition="audio"),
                dict(mlm_loss_tokens="some"), dict(contrastive_loss="hinge"), dict(init_temperature=-0.1),
                dict(projection_dim=32), dict(mlm_label_smoothing=1.0), dict(mlm_weight=-1.0),
                dict(decoder_config=dict(d_model=16, decoder_layers=1, decoder_attention_heads=2,
                                         max_position_embeddings=8))):
        with pytest.raises(ValueError):
            tiny_config("gfslt_vlp", **bad)
    assert tiny_config("gfslt_vlp", projection_dim=32, text_projection=True).projection_dim == 32
    paper = GFSLTVLPConfig()
    assert (paper.projection_dim, paper.mask_ratio, paper.mask_type, paper.mlm_label_smoothing, paper.mlm_weight,
            paper.decoder_config.decoder_layers, paper.decoder_config.d_model, paper.init_temperature,
            paper.decoder_condition, paper.mlm_loss_tokens) == (1024, 0.15, "omit_last", 0.2, 1.0, 3, 1024, 0.07,
                                                                "text", "all")


def _ddp_worker(rank, world_size, out_dir):
    model = _model(decoder_condition="visual").eval()  # eval: no dropout; the loss is still computed
    out, grads = shard_forward_backward(model, _batch(model, 8), rank, world_size, average_grads=False)
    save_rank(out_dir, rank, loss=out.loss.detach(), grads=grads)


def test_ddp_two_processes_match_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = _model(decoder_condition="visual").eval()
    out = forward_backward(model, _batch(model, 8))
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4, grads_averaged=False)


def test_tiny_training_run_and_retrieval(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, load_image_stream

    config = tiny_config("gfslt_vlp")
    torch.manual_seed(0)
    model = GFSLTVLPForSelfSupervisedPretraining(config)
    train = SSLViewDataset(load_image_stream(METHOD.default_dataset, shuffle_buffer=16), build_view_generator(config))
    trainer = tiny_training_run(model, train, tmp_path / "run")
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all("mlm_loss" in h and "contrastive_loss" in h for h in logs)
    metrics = video_text_evaluate(model, split="test", batch_size=16, max_samples=24)
    for key in ("image_to_text_recall@1", "image_to_text_recall@10", "text_to_image_recall@5", "zero_shot_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["image_to_text_recall@10"] >= metrics["image_to_text_recall@1"]
    model.save_pretrained(tmp_path / "saved")
    reloaded = GFSLTVLPForSelfSupervisedPretraining.from_pretrained(tmp_path / "saved").eval()
    x = torch.randn(2, 8, 3, 32, 32)
    torch.testing.assert_close(reloaded.get_joint_video_features(x), model.eval().get_joint_video_features(x))
    assert reloaded.config.decoder_config.model_type == "mbart" and type(reloaded.decoder).__name__ == "MBartForCausalLM"
