"""SiT (Atito et al., arXiv:2104.03602): views, corruption, losses, DDP equivalence, trainer run."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ddp_utils import assert_ddp_matches_single, parameter_grads, rank_rows, run_ranks, save_rank
from tiny_configs import tiny_config
from hf_ssl.modeling.sit import SiTForSelfSupervisedPretraining
from hf_ssl.modeling.sit.configuration_sit import DROP_TYPES
from hf_ssl.modeling.sit.modeling_sit import sit_contrastive_loss
from hf_ssl.modeling.sit.views_sit import SiTViewPolicy, corrupt_image
from hf_ssl.training.data import SSLDataCollator, build_view_generator


def make_model(**overrides):
    torch.manual_seed(0)
    return SiTForSelfSupervisedPretraining(tiny_config("sit", **overrides))


def make_image(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8"))


def make_batch(config, n=4, seed=0):
    policy = build_view_generator(config)
    rng = np.random.default_rng(seed)
    return SSLDataCollator()([policy(make_image(i), rng) for i in range(n)])


# 1. views: rotation labels, corruption masks and corrupted pixels ---------------------------------------------
def test_policy_rotation_labels_match_views():
    config = tiny_config("sit")
    policy = SiTViewPolicy(config)
    assert isinstance(build_view_generator(config), SiTViewPolicy)
    base = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    policy.view = lambda img, rng: base.clone()  # a fixed unrotated view: the rotation is the only change
    seen = set()
    for seed in range(12):
        out = policy(make_image(seed), np.random.default_rng(seed))
        for i in range(2):
            k = int(out["rotation_labels"][i])
            seen.add(k)
            assert torch.equal(out["clean_pixel_values"][i], torch.rot90(base, k, dims=(1, 2)))
            for j in set(range(4)) - {k}:
                assert not torch.allclose(out["clean_pixel_values"][i], torch.rot90(base, j, dims=(1, 2)))
            # the corrupted view is the rotated clean view outside its mask
            m = out["corruption_mask"][i]
            assert torch.equal(out["pixel_values"][i][:, ~m], out["clean_pixel_values"][i][:, ~m])
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("drop_type", DROP_TYPES)
def test_corruption_mask_and_pixels(drop_type):
    g = torch.Generator().manual_seed(0)
    clean, other = torch.randn(3, 32, 32, generator=g), torch.randn(3, 32, 32, generator=g)
    x, mask = corrupt_image(clean, np.random.default_rng(1), drop_type, other=other, drop_perc=0.5, align=4)
    frac = mask.float().mean().item()
    assert 0.5 <= frac < 1.0  # drawn fraction in [min(0.5, p), p] = 0.5, blocks may overshoot
    keep = ~mask
    assert torch.equal(x[:, keep], clean[:, keep])  # untouched outside the mask
    # blocks aligned to 4 px: the mask is constant on every 4x4 cell
    cells = mask.reshape(8, 4, 8, 4).permute(0, 2, 1, 3).reshape(64, 16)
    assert bool((cells.all(1) | (~cells).all(1)).all())
    if drop_type == "zeros":
        assert torch.equal(x[:, mask], torch.zeros_like(x[:, mask]))
    elif drop_type == "other":
        assert torch.equal(x[:, mask], other[:, mask])
    elif drop_type == "noise":
        assert not torch.isclose(x[:, mask], clean[:, mask]).any()
        assert abs(x[:, mask].std().item() - 1.0) < 0.2
    else:  # rand: every corrupted pixel column equals some clean pixel of the same image
        vals = clean.reshape(3, -1).t()
        corr = x[:, mask].t()
        assert bool((corr[:, None, :] == vals[None]).all(-1).any(1).all())


def test_policy_other_image_is_previous_image_and_masks_exact():
    config = tiny_config("sit", drop_types=["other"])
    policy = SiTViewPolicy(config)
    first = policy(make_image(0), np.random.default_rng(0))
    second = policy(make_image(1), np.random.default_rng(1))
    prev = first["clean_pixel_values"][0]
    for i in range(2):
        m = second["corruption_mask"][i]
        assert torch.equal(second["pixel_values"][i][:, m], prev[:, m])
        assert torch.equal(second["pixel_values"][i][:, ~m], second["clean_pixel_values"][i][:, ~m])
    assert (second["drop_type_ids"] == DROP_TYPES.index("other")).all()


# 2. losses -------------------------------------------------------------------------------------------------
def test_contrastive_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    z1, z2, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), 0.2
    a, b = z1 / z1.norm(dim=1, keepdim=True), z2 / z2.norm(dim=1, keepdim=True)
    expected = 0.0
    for q, k in ((a, b), (b, a)):
        sims = torch.exp(q @ k.t() / t)
        expected += -(torch.log(sims.diag() / sims.sum(1))).mean() * 2 * t
    assert sit_contrastive_loss(z1, z2, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_reconstruction_loss_regions_and_total():
    model = make_model(loss_weighting="fixed", rotation_weight=0.0, contrastive_weight=0.0)
    batch = make_batch(model.config)
    b = batch["pixel_values"][0].shape[0]
    with torch.no_grad():
        x = torch.cat(batch["pixel_values"])
        _, _, patches = model.encode_tokens(x)
        recon = model.reconstruct(patches, x.shape)
        clean = torch.cat(batch["clean_pixel_values"])
        mask = torch.cat(batch["corruption_mask"])
        out = model(**batch)
    # paper: l1 over every pixel of the clean image
    assert out.loss.item() == pytest.approx((recon - clean).abs().mean().item(), rel=1e-5)
    assert out.metrics["reconstruction_loss"].item() == pytest.approx(F.l1_loss(recon, clean).item(), rel=1e-5)
    # official later code: only corrupted pixels
    model.config.reconstruction_region = "corrupted"
    with torch.no_grad():
        out2 = model(**batch)
    m = mask.unsqueeze(1).expand_as(recon)
    assert out2.metrics["reconstruction_loss"].item() == pytest.approx((recon - clean).abs()[m].mean().item(),
                                                                       rel=1e-5)
    assert b == 4


def test_uncertainty_weighting_and_rotation_loss():
    model = make_model()
    batch = make_batch(model.config)
    with torch.no_grad():
        model.log_vars.copy_(torch.tensor([0.3, -0.2, 0.5]))
        out = model(**batch)
        x = torch.cat(batch["pixel_values"])
        _, rot, _ = model.encode_tokens(x)
        labels = torch.cat([batch["rotation_labels"][:, 0], batch["rotation_labels"][:, 1]])
        rot_loss = F.cross_entropy(model.rotation_head(rot), labels)
    assert out.metrics["rotation_loss"].item() == pytest.approx(rot_loss.item(), rel=1e-5)
    terms = [out.metrics["rotation_loss"], out.metrics["contrastive_loss"], out.metrics["reconstruction_loss"]]
    s = torch.tensor([0.3, -0.2, 0.5])
    expected = sum(torch.exp(-s[i]) * terms[i] + s[i] for i in range(3))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    out = model(**batch)
    out.loss.backward()
    assert model.log_vars.grad is not None and model.rotation_token.grad is not None
    assert model.rotation_token.grad.abs().sum() > 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        tiny_config("sit", contrastive_temperature=-1.0)
    with pytest.raises(ValueError):
        tiny_config("sit", drop_perc=1.0)
    with pytest.raises(ValueError):
        tiny_config("sit", drop_types=["blur"])
    with pytest.raises(ValueError):
        tiny_config("sit", backbone_config=dict(model_type="resnet", layer_type="basic", depths=[1],
                                                  hidden_sizes=[8], embedding_size=8))
    model = make_model()
    with pytest.raises(ValueError):
        model(pixel_values=[torch.randn(2, 1, 32, 32)] * 2)
    with pytest.raises(ValueError):
        model(pixel_values=[torch.randn(2, 3, 32, 32)] * 2, rotation_labels=torch.full((2, 2), 4))


# 3. DDP ------------------------------------------------------------------------------------------------------
def _ddp_batch():
    config = tiny_config("sit")
    return make_batch(config, n=4, seed=3)


def _loss_and_grads(model, sl):
    batch = _ddp_batch()
    sub = {"pixel_values": [v[sl] for v in batch["pixel_values"]],
           "clean_pixel_values": [v[sl] for v in batch["clean_pixel_values"]],
           "rotation_labels": batch["rotation_labels"][sl]}
    out = model(**sub)
    out.loss.backward()
    grads = parameter_grads(model)
    return out.loss.item(), grads


def _ddp_worker(rank, world_size, out_dir):
    model = make_model().eval()
    loss, grads = _loss_and_grads(model, rank_rows(4, rank, world_size))
    save_rank(out_dir, rank, loss=loss, grads=grads)


def test_ddp_two_processes_match_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    loss, grads = _loss_and_grads(make_model().eval(), slice(None))
    assert_ddp_matches_single(ranks, loss, grads, atol=1e-6, rtol=1e-5, grads_averaged=False, same_keys=True)


# 4. trainer run, save / load ---------------------------------------------------------------------------------
def test_tiny_trainer_run(tmp_path):
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=32), build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8,
                                save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3)
    before = model.log_vars.detach().clone()
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(np.isfinite(h["loss"]) for h in logged)
    assert "rotation_accuracy" in logged[-1]
    assert not torch.equal(before, model.log_vars.detach())  # the uncertainty weights are learned


def test_save_load_round_trip(tmp_path):
    from transformers import AutoModel

    model = make_model().eval()
    model.save_pretrained(tmp_path / "m")
    loaded = SiTForSelfSupervisedPretraining.from_pretrained(tmp_path / "m").eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.get_image_features(x), loaded.get_image_features(x), atol=1e-6)
    assert torch.equal(model.rotation_token, loaded.rotation_token)
    model.export_encoder(tmp_path / "e")
    enc = AutoModel.from_pretrained(tmp_path / "e").eval()
    assert torch.allclose(enc(pixel_values=x).last_hidden_state[:, 0], model.get_image_features(x), atol=1e-5)
