"""Mod-X: off-diagonal KL vs a hand reference, error screening, frozen old model (no gradients, unchanged by
training), loading the old model from a checkpoint, DDP equivalence of the gathered similarity matrices, training,
save/load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.modx import (METHOD, ModXConfig, ModXForSelfSupervisedPretraining, modx_distillation_loss,
                                  offdiagonal_kl)
from ddp_utils import (assert_ddp_matches_single, average_over_processes_, forward_backward, mean_over_ranks,
                       parameter_grads, rank_rows, run_ranks, save_rank, shard)
from tiny_configs import TINY_CONFIGS, tiny_config
from train_utils import loss_logs, tiny_training_run
from vl_utils import image_text_batch


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return ModXForSelfSupervisedPretraining(tiny_config("modx", **overrides))


def make_batch(n=4, seed=0, length=16, vocab=600):
    return image_text_batch(n, seed, length, vocab)


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _hand_modx_kl(img, txt, old_img, old_txt, temperature=1.0, screen=True):
    """Row-wise KL(softmax(old) || softmax(new)) summed over rows, averaged over both directions; rows where the
    old model's argmax is off the diagonal use the new row (zero KL), as the official cognition_align."""
    def direction(new, old):
        total = 0.0
        for i in range(len(new)):
            o = old[i]
            if screen and np.argmax(o) != i:
                o = new[i]
            p = np.exp(o / temperature) / np.exp(o / temperature).sum()
            q = np.exp(new[i] / temperature) / np.exp(new[i] / temperature).sum()
            total += float(np.sum(p * (np.log(p) - np.log(q))))
        return total

    img, txt, old_img, old_txt = map(_unit, (img, txt, old_img, old_txt))
    return (direction(img @ txt.T, old_img @ old_txt.T) + direction(txt @ img.T, old_txt @ old_img.T)) / 2


@pytest.mark.parametrize("screen", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_distillation_kl_matches_hand_reference(screen, temperature):
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    old_img = img + 0.3 * rng.normal(size=(6, 8))
    old_txt = img + 0.8 * rng.normal(size=(6, 8))  # the old model aligns some pairs, not all
    old_txt[2] = rng.normal(size=8)
    t = lambda a: F.normalize(torch.tensor(a, dtype=torch.float64), dim=-1)  # noqa: E731
    loss, new_i2t, old_i2t, screened = modx_distillation_loss(t(img), t(txt), t(old_img), t(old_txt),
                                                              temperature=temperature, screen=screen)
    assert loss.item() == pytest.approx(_hand_modx_kl(img, txt, old_img, old_txt, temperature, screen), rel=1e-6)
    wrong_i2t = (old_i2t.argmax(1) != torch.arange(6)).sum().item()
    assert 0 < wrong_i2t < 6  # the case exercises both screened and kept rows
    if screen:
        assert screened.item() > 0
    # identical old and new models: nothing to distil
    same, _, _, _ = modx_distillation_loss(t(img), t(txt), t(img), t(txt), temperature=temperature, screen=screen)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    # the official "sum" reduction is the "mean" one times the number of rows
    mean = offdiagonal_kl(t(img) @ t(txt).T, t(old_img) @ t(old_txt).T, temperature, "mean")
    total = offdiagonal_kl(t(img) @ t(txt).T, t(old_img) @ t(old_txt).T, temperature, "sum")
    assert total.item() == pytest.approx(6 * mean.item(), rel=1e-6)


def test_screened_rows_get_no_gradient():
    rng = np.random.default_rng(1)
    img = torch.tensor(_unit(rng.normal(size=(5, 8))), requires_grad=True)
    txt = torch.tensor(_unit(rng.normal(size=(5, 8))), requires_grad=True)
    old = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    old_img, old_txt = old.clone(), old.clone()
    old_txt[3] = -old_img[3]  # row 3 is wrong for the old model in both directions
    loss, _, old_i2t, _ = modx_distillation_loss(img, txt, old_img, old_txt, screen=True)
    assert old_i2t[3].argmax() != 3
    loss.backward()
    # image 3 only appears in its own i2t row (screened) and as column 3 of the t2i rows (kept): its gradient
    # equals the one obtained by dropping row 3 of the i2t KL by hand
    img2, txt2 = img.detach().clone().requires_grad_(), txt.detach().clone().requires_grad_()
    keep = [i for i in range(5) if i != 3]
    s_new_i2t, s_old_i2t = img2 @ txt2.T, old_img @ old_txt.T
    s_new_t2i, s_old_t2i = txt2 @ img2.T, old_txt @ old_img.T
    ref = (F.kl_div(F.log_softmax(s_new_i2t[keep], 1), F.softmax(s_old_i2t[keep], 1), reduction="sum")
           + F.kl_div(F.log_softmax(s_new_t2i[keep], 1), F.softmax(s_old_t2i[keep], 1), reduction="sum")) / 2
    ref.backward()
    assert torch.allclose(img.grad, img2.grad, atol=1e-6) and torch.allclose(txt.grad, txt2.grad, atol=1e-6)


def test_model_loss_is_clip_plus_weighted_kl():
    # unscreened: a random-init old model ranks most pairs wrong, so screening would drop most rows here
    model = make_model(distillation_weight=3.0, screen_old_errors=False).eval()
    with torch.no_grad():  # make the old model differ from the new one
        for p in model.teacher_visual_projection.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batch()
    out = model(**batch)
    img = model.encode_image(batch["pixel_values"])
    txt = model.encode_text(batch["input_ids"], batch["attention_mask"])
    old_img, old_txt = model.encode_old(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    from hf_ssl.modeling.clip import clip_contrastive_loss

    clip_loss, _ = clip_contrastive_loss(img, txt, model.clamped_logit_scale())
    kl = _hand_modx_kl(*(x.detach().double().numpy() for x in (img, txt, old_img, old_txt)), screen=False)
    assert kl > 1e-4
    assert out.loss.item() == pytest.approx(clip_loss.item() + 3.0 * kl, rel=1e-4)
    assert out.metrics["distillation_loss"].item() == pytest.approx(kl, rel=1e-4)
    model.config.screen_old_errors = True
    screened_kl = _hand_modx_kl(*(x.detach().double().numpy() for x in (img, txt, old_img, old_txt)))
    assert model(**batch).metrics["distillation_loss"].item() == pytest.approx(screened_kl, rel=1e-4, abs=1e-6)
    plain = make_model(distillation_weight=0.0).eval()
    assert plain(**batch).loss.item() == pytest.approx(clip_loss.item(), rel=1e-5)  # same seed, same towers


def test_old_model_is_snapshot_frozen_and_gets_no_gradient():
    model = make_model().train()
    for s, t in zip(("encoder", "text_encoder", "visual_projection"), ("teacher_encoder", "teacher_text_encoder",
                                                                       "teacher_visual_projection")):
        for (n1, a), (n2, b) in zip(getattr(model, s).state_dict().items(), getattr(model, t).state_dict().items()):
            assert n1 == n2 and torch.equal(a, b)
    assert not model.teacher_encoder.training and not model.teacher_text_encoder.training  # eval, even in train()
    out = model(**make_batch())
    out.loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("teacher_"):
            assert p.grad is None and not p.requires_grad, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text_encoder.parameters())


def test_old_model_loaded_from_previous_checkpoint(tmp_path):
    from hf_ssl.modeling.clip import CLIPForSelfSupervisedPretraining

    torch.manual_seed(5)
    previous = CLIPForSelfSupervisedPretraining(tiny_config("clip")).eval()
    with torch.no_grad():
        previous.logit_scale.fill_(2.5)
    previous.save_pretrained(tmp_path / "phase0")
    model = make_model(old_model_name_or_path=str(tmp_path / "phase0"))
    ref = previous.state_dict()
    for key, value in model.state_dict().items():
        src = key.replace("teacher_", "") if key.startswith("teacher_") else key
        if src in ref:
            assert torch.equal(value, ref[src]), key  # new AND old model start from the previous phase
    assert model.logit_scale.item() == pytest.approx(2.5)
    # a Mod-X checkpoint reloads its own weights (the path is not re-read) and can seed the next phase
    model.save_pretrained(tmp_path / "phase1")
    reloaded = ModXForSelfSupervisedPretraining.from_pretrained(tmp_path / "phase1")
    assert torch.equal(reloaded.teacher_visual_projection.weight, previous.visual_projection.weight)
    nxt = make_model(old_model_name_or_path=str(tmp_path / "phase1"))
    assert torch.equal(nxt.teacher_text_projection.weight, model.text_projection.weight)
    with pytest.raises(ValueError, match="checkpoint"):
        make_model(old_model_name_or_path=str(tmp_path / "missing"))


# ----------------------------------------------------------------------------------------------------
# DDP
# ----------------------------------------------------------------------------------------------------
def _perturbed_model():
    model = make_model(distillation_weight=2.0).eval()  # eval: BN running stats, only the losses mix samples
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in list(model.teacher_visual_projection.parameters()) + list(model.teacher_text_projection.parameters()):
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def _distillation_terms(model, batch):
    img = model.encode_image(batch["pixel_values"]).detach()
    txt = model.encode_text(batch["input_ids"], batch["attention_mask"]).detach()
    old_img, old_txt = model.encode_old(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    return modx_distillation_loss(img, txt, old_img, old_txt)


def _ddp_worker(rank, world_size, out_dir):
    model = _perturbed_model()
    local = shard(make_batch(n=8, seed=1), rank_rows(8, rank, world_size))
    out = forward_backward(model, local)
    kl, new_i2t, old_i2t, _ = _distillation_terms(model, local)
    grads = average_over_processes_(parameter_grads(model), world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), kl=kl.item(), new_i2t=new_i2t, old_i2t=old_i2t, grads=grads)


def test_ddp_gathered_similarity_matrices_equal_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = _perturbed_model()
    batch = make_batch(n=8, seed=1)
    out = forward_backward(model, batch)
    kl, new_i2t, old_i2t, _ = _distillation_terms(model, batch)
    assert ranks[0]["new_i2t"].shape == (4, 8)  # local rows x gathered columns
    assert torch.allclose(torch.cat([r["new_i2t"] for r in ranks]), new_i2t, atol=1e-5)
    assert torch.allclose(torch.cat([r["old_i2t"] for r in ranks]), old_i2t, atol=1e-5)
    assert mean_over_ranks(ranks, "kl") == pytest.approx(kl.item(), rel=1e-4)  # world-size-scaled sums
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-3, loss_rel=1e-4)


# ----------------------------------------------------------------------------------------------------
# config, training, save/load
# ----------------------------------------------------------------------------------------------------
def test_bad_config_and_inputs_raise():
    base = TINY_CONFIGS["modx"]
    for bad in ({"distillation_temperature": 0.0}, {"distillation_temperature": -1.0},
                {"distillation_weight": -0.5}, {"distillation_reduction": "max"}, {"init_temperature": -0.1}):
        with pytest.raises(ValueError):
            ModXConfig(**{**base, **bad})
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="captions"):
        model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"][:2])


def test_tiny_trainer_run_keeps_old_model_fixed(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    old = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("teacher_")}
    new_before = model.visual_projection.weight.detach().clone()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(model.config))
    trainer = tiny_training_run(model, ds, tmp_path, batch_size=8)
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    for key, value in model.state_dict().items():
        if key.startswith("teacher_"):
            assert torch.equal(value, old[key]), key  # includes BatchNorm running statistics
    assert not torch.equal(model.visual_projection.weight, new_before)


def test_save_load_round_trip(tmp_path):
    from transformers import AutoModel

    model = make_model().eval()
    with torch.no_grad():
        model.teacher_text_projection.weight.mul_(0.5)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is ModXForSelfSupervisedPretraining
    assert torch.equal(reloaded.teacher_text_projection.weight, model.teacher_text_projection.weight)
    batch = make_batch()
    assert torch.allclose(model(**batch).loss, reloaded(**batch).loss, atol=1e-6)


def test_cpu_demo_preset_builds():
    cfg = METHOD.make_config("cpu-demo")
    assert cfg.image_size == 32 and cfg.augmentation["policy"] == "image_text"
    paper = ModXConfig()
    assert paper.distillation_weight == 20.0 and paper.distillation_temperature == 1.0 and paper.screen_old_errors
