"""UMD (Unified Masked Diffusion) invariants on a tiny ViT (CPU, 32 px images, 8 px patches -> 16 patches)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.modeling.backbones import _vit_layers, encode, patchify, vit_forward_visible
from hf_ssl.modeling.masking import mask_to_index, random_mask_torch
from hf_ssl.modeling.umd import METHOD, UMDConfig, UMDForSelfSupervisedPretraining, UMDImageProcessor
from hf_ssl.modeling.umd.diffusion_umd import alphas_cumprod, beta_schedule, q_sample, timestep_embedding

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                patch_size=8)
PATCH, N = 8, 16


def make_config(**kwargs):
    kwargs.setdefault("decoder_depth", 1)
    kwargs.setdefault("num_timesteps", 50)
    return UMDConfig(backbone_config=dict(TINY_VIT), image_size=32, **kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return UMDForSelfSupervisedPretraining(make_config(**kwargs))


def images(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1


def masks_for(timesteps, seed=0, ratio_noise=0.375, ratio_clean=0.75):
    g = torch.Generator().manual_seed(seed)
    b = len(timesteps)
    mask = torch.zeros(b, N, dtype=torch.bool)
    for i, t in enumerate(timesteps):
        mask[i] = random_mask_torch(1, N, ratio_clean if t == 0 else ratio_noise, generator=g)[0]
    return mask


def perturb_modulations_(model, scale=0.5, seed=1):
    """adaLN-Zero starts with zero modulation; give it values so the decoder depends on t."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def spy_denoise(model):
    calls = []
    original = model.denoise

    def spy(x, mask, t, grid):
        out = original(x, mask, t, grid)
        out[0].retain_grad()
        out[1].retain_grad()
        calls.append(dict(x=x.detach().clone(), mask=mask.clone(), t=t.clone(), x0_hat=out[0], eps_hat=out[1]))
        return out

    model.denoise = spy
    return calls


# ----------------------------------------------------------------------------------------------------
# 1. noise schedule
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule, steps", [("cosine", 1000), ("cosine", 4), ("linear", 1000), ("linear", 50)])
def test_alpha_bar_monotone_in_unit_interval(schedule, steps):
    a = alphas_cumprod(schedule, steps)
    assert a.shape == (steps,)
    assert (a[1:] < a[:-1]).all() and (a > 0).all() and (a < 1).all()
    betas = beta_schedule(schedule, steps)
    assert (betas > 0).all() and (betas <= 0.999).all()


def test_cosine_schedule_by_hand_and_q_sample_exact():
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    T = 4
    betas = [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]
    expected = np.cumprod([1 - b for b in betas])
    assert np.allclose(alphas_cumprod("cosine", T).numpy(), expected, atol=1e-7)
    assert np.allclose(beta_schedule("cosine", T), betas)
    # linear: 1e-4 .. 0.02 rescaled by 1000/T
    assert np.allclose(beta_schedule("linear", 1000)[[0, -1]], [1e-4, 0.02])
    # q(x_t | x_0) on a 2-sample tiny case
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    eps = torch.tensor([[0.3, 0.1], [-1.0, 2.0]])
    idx = torch.tensor([0, 3])
    got = q_sample(x0, idx, eps, alphas_cumprod("cosine", T))
    want = torch.stack([math.sqrt(expected[i]) * x0[j] + math.sqrt(1 - expected[i]) * eps[j]
                        for j, i in enumerate([0, 3])]).float()
    assert torch.allclose(got, want, atol=1e-6)


def test_model_noises_its_input_with_q_sample():
    model = make_model(num_timesteps=50)
    calls = spy_denoise(model)
    x = images(4)
    t = torch.tensor([1, 50, 0, 0])  # conditioning t = index + 1 for noised samples, 0 = mask step
    noise = torch.randn_like(x)
    model(x, timesteps=t, noise=noise)
    noised, clean = calls[1], calls[0]
    assert torch.equal(clean["t"], torch.tensor([0, 0])) and torch.allclose(clean["x"], x[2:])
    a = alphas_cumprod("cosine", 50)
    want = torch.stack([a[0].sqrt() * x[0] + (1 - a[0]).sqrt() * noise[0],
                        a[49].sqrt() * x[1] + (1 - a[49]).sqrt() * noise[1]])
    assert torch.allclose(noised["x"], want, atol=1e-6)
    assert torch.equal(noised["t"], torch.tensor([1, 50]))


def test_default_batch_split_follows_no_noise_prob():
    model = make_model(no_noise_prob=0.5)
    calls = spy_denoise(model)
    out = model(images(6))
    assert sorted(len(c["t"]) for c in calls) == [3, 3]
    zeros = [c for c in calls if (c["t"] == 0).all()]
    assert len(zeros) == 1 and all(int(c["t"].min()) >= 1 for c in calls if c is not zeros[0])
    assert out.metrics["no_noise_fraction"] == 0.5
    # mask ratios: 0.75 for the mask step (12 of 16), 0.375 for noise steps (6 of 16)
    for c in calls:
        assert (c["mask"].sum(1) == (12 if (c["t"] == 0).all() else 6)).all()
    only_noise = make_model(no_noise_prob=0.0)
    calls = spy_denoise(only_noise)
    only_noise(images(4))
    assert len(calls) == 1 and int(calls[0]["t"].min()) >= 1


def test_timestep_embedding_formula():
    t = torch.tensor([0, 7])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 3)
    assert torch.allclose(emb[1], torch.cat([torch.sin(7 * freqs), torch.cos(7 * freqs)]))
    assert torch.allclose(emb[0], torch.cat([torch.zeros(4), torch.ones(4)]))


# ----------------------------------------------------------------------------------------------------
# 2. timestep conditioning
# ----------------------------------------------------------------------------------------------------
def test_timestep_conditioning_changes_decoder_outputs():
    model = make_model(encoder_time_conditioning=False)
    model.eval()
    x = images(2)
    mask = masks_for([5, 5])
    grid = (4, 4)
    # adaLN-Zero: at init every decoder block is the identity map and the decoder ignores t
    a = model.denoise(x, mask, torch.tensor([5, 5]), grid)
    b = model.denoise(x, mask, torch.tensor([40, 40]), grid)
    assert torch.allclose(a[0], b[0], atol=1e-6)
    perturb_modulations_(model)
    a = model.denoise(x, mask, torch.tensor([5, 5]), grid)
    b = model.denoise(x, mask, torch.tensor([40, 40]), grid)
    assert not torch.allclose(a[0], b[0], atol=1e-4) and not torch.allclose(a[1], b[1], atol=1e-4)
    assert torch.allclose(a[2], b[2])  # time-agnostic encoder
    token = make_model(time_conditioning="token", encoder_time_conditioning=False)
    a = token.denoise(x, mask, torch.tensor([5, 5]), grid)
    b = token.denoise(x, mask, torch.tensor([40, 40]), grid)
    assert not torch.allclose(a[0], b[0], atol=1e-4)


def test_encoder_time_conditioning_is_zero_at_t0():
    model = make_model()
    model.eval()
    x = images(2)
    mask = masks_for([0, 0])
    visible, _ = mask_to_index(mask)
    plain = vit_forward_visible(model.encoder, x, visible)
    assert torch.allclose(model.encode(x, visible, torch.tensor([0, 0])), plain, atol=1e-6)
    assert not torch.allclose(model.encode(x, visible, torch.tensor([3, 30])), plain, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# 3. where the loss is computed
# ----------------------------------------------------------------------------------------------------
def test_loss_terms_cover_exactly_the_paper_positions():
    model = make_model()
    perturb_modulations_(model, 0.1)
    calls = spy_denoise(model)
    x = images(4)
    t = torch.tensor([3, 20, 0, 0])
    mask = masks_for(t.tolist())
    noise = torch.randn_like(x)
    out = model(x, timesteps=t, noise=noise, bool_masked_pos=mask)
    out.loss.backward()
    clean, noisy = calls
    x0p = patchify(x, PATCH)
    epsp = patchify(noise, PATCH)

    def mmse(pred, target, where):
        se = (pred - target).pow(2).mean(-1)
        return (se * where).sum() / where.sum()

    l0 = mmse(clean["x0_hat"], x0p[2:], clean["mask"].float())
    l_eps = mmse(noisy["eps_hat"], epsp[:2], (~noisy["mask"]).float())
    l_x0 = mmse(noisy["x0_hat"], x0p[:2], noisy["mask"].float())
    want = 0.5 * l0 + 0.5 * (l_eps + l_x0) / 2
    assert torch.allclose(out.loss, want, atol=1e-6)
    assert torch.allclose(out.metrics["mask_step_loss"], l0) and torch.allclose(out.metrics["eps_loss"], l_eps)
    # gradients reach predictions only where the paper puts a loss
    g0 = clean["x0_hat"].grad.abs().sum(-1)
    assert (g0[~clean["mask"]] == 0).all() and (g0[clean["mask"]] > 0).all()
    assert (clean["eps_hat"].grad is None) or (clean["eps_hat"].grad == 0).all()  # no eps loss at t = 0
    gx = noisy["x0_hat"].grad.abs().sum(-1)
    ge = noisy["eps_hat"].grad.abs().sum(-1)
    assert (gx[~noisy["mask"]] == 0).all() and (gx[noisy["mask"]] > 0).all()
    assert (ge[noisy["mask"]] == 0).all() and (ge[~noisy["mask"]] > 0).all()
    # unmasked noise step: both terms over every pixel
    model2 = make_model(mask_ratio=0.0)
    calls = spy_denoise(model2)
    out = model2(x[:2], timesteps=torch.tensor([4, 9]), noise=noise[:2])
    c = calls[0]
    assert not c["mask"].any()
    want = ((c["eps_hat"] - epsp[:2]).pow(2).mean() + (c["x0_hat"] - x0p[:2]).pow(2).mean()) / 2
    assert torch.allclose(out.loss, want, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# 4. masked tokens never enter the encoder
# ----------------------------------------------------------------------------------------------------
def test_encoder_sees_only_visible_tokens():
    model = make_model()
    seen = []
    hook = _vit_layers(model.encoder)[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    t = torch.tensor([7, 7, 0, 0])
    model(images(4), timesteps=t, bool_masked_pos=masks_for(t.tolist()))
    hook.remove()
    assert sorted(seen) == [1 + 4, 1 + 10]  # CLS + 4 visible (75% mask), CLS + 10 visible (37.5% mask)


def test_masked_pixels_do_not_affect_predictions_of_the_mask_step():
    model = make_model()
    perturb_modulations_(model, 0.1)
    model.eval()
    x = images(2)
    t = torch.tensor([0, 0])
    mask = masks_for([0, 0])
    pix = mask.view(2, 1, 4, 1, 4, 1).expand(2, 3, 4, PATCH, 4, PATCH).reshape(2, 3, 32, 32)
    a = model(x, timesteps=t, bool_masked_pos=mask)
    b = model(torch.where(pix, torch.randn_like(x) * 3, x), timesteps=t, bool_masked_pos=mask)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    assert torch.allclose(a.embeddings, b.embeddings, atol=1e-6)
    assert not torch.allclose(a.loss, b.loss)  # the targets did change


# ----------------------------------------------------------------------------------------------------
# 5. save / load / export, configs
# ----------------------------------------------------------------------------------------------------
def test_save_load_equality(tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    model = make_model(mask_ratio=0.5, no_noise_prob=0.25, time_conditioning="adaln")
    perturb_modulations_(model, 0.1)
    model.eval()
    model.save_pretrained(tmp_path)
    UMDImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(cfg, UMDConfig)
    for key in ("mask_ratio", "mask_ratio_no_noise", "no_noise_prob", "num_timesteps", "noise_schedule",
                "time_conditioning", "encoder_time_conditioning", "decoder_pos_embed", "augmentation", "image_mean"):
        assert getattr(cfg, key) == getattr(model.config, key), key
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, UMDForSelfSupervisedPretraining)
    sd, lsd = model.state_dict(), loaded.state_dict()
    assert sd.keys() == lsd.keys() and all(torch.equal(sd[k], lsd[k]) for k in sd)
    loaded.eval()
    x = images(4)
    t = torch.tensor([0, 5, 17, 0])
    kw = dict(timesteps=t, noise=torch.randn_like(x), bool_masked_pos=masks_for(t.tolist()))
    a, b = model(x, **kw), loaded(x, **kw)
    assert torch.allclose(a.loss, b.loss) and torch.allclose(a.logits, b.logits)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), UMDImageProcessor)
    assert model.config.image_mean == [0.5] * 3 and model.config.image_std == [0.5] * 3


def test_export_encoder_loads_without_hf_ssl(tmp_path):
    model = make_model()
    model.eval()
    export_dir = tmp_path / "exported"
    model.export_encoder(export_dir)
    x = images(3)
    torch.save(x, tmp_path / "x.pt")
    expected = model.get_image_features(x)
    assert torch.allclose(expected, encode(model.encoder, x, "cls"), atol=1e-6)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hf_ssl"] = None
        import torch
        from transformers import AutoModel
        m = AutoModel.from_pretrained({str(export_dir)!r}).eval()
        assert type(m).__name__ == "ViTModel", type(m)
        with torch.no_grad():
            h = m(pixel_values=torch.load({str(tmp_path / 'x.pt')!r})).last_hidden_state
        torch.save(h[:, 0], {str(tmp_path / 'feats.pt')!r})
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_SSL_DEV_SHIM")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch.allclose(torch.load(tmp_path / "feats.pt"), expected, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(mask_ratio=-0.1), "mask_ratio"),
    (dict(mask_ratio_no_noise=0.0), "mask_ratio_no_noise"),
    (dict(no_noise_prob=1.5), "no_noise_prob"),
    (dict(num_timesteps=0), "num_timesteps"),
    (dict(noise_schedule="sigmoid"), "noise_schedule"),
    (dict(noise_schedule="linear", num_timesteps=10), "linear"),
    (dict(decoder_depth=0), "decoder_depth"),
    (dict(decoder_num_heads=3), "divisible"),
    (dict(decoder_pos_embed="rope"), "decoder_pos_embed"),
    (dict(time_conditioning="film"), "time_conditioning"),
    (dict(feature_pooling="max"), "feature_pooling"),
])
def test_nonsense_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_bad_inputs_raise_clearly():
    model = make_model()
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(2, 3, 30, 30))
    with pytest.raises(ValueError, match="timesteps"):
        model(images(2), timesteps=torch.tensor([0, 51]))
    with pytest.raises(ValueError, match="shape"):
        model(images(2), bool_masked_pos=torch.zeros(2, N + 1, dtype=torch.bool))
    uneven = masks_for([3, 3])
    uneven[0, ~uneven[0]] = torch.tensor([True] + [False] * int((~uneven[0]).sum() - 1))
    with pytest.raises(ValueError, match="same number"):
        model(images(2), timesteps=torch.tensor([3, 3]), bool_masked_pos=uneven)
    with pytest.raises(ValueError, match="ViT"):
        UMDConfig(backbone_config="resnet-18", image_size=32)


def test_paper_defaults_and_registry():
    d = UMDConfig()
    assert (d.mask_ratio, d.mask_ratio_no_noise, d.no_noise_prob, d.num_timesteps, d.noise_schedule) == (
        0.375, 0.75, 0.5, 1000, "cosine")
    assert d.image_size == 64 and d.backbone_config.patch_size == 4 and d.backbone_config.hidden_size == 768
    assert d.decoder_depth == 4 and d.time_conditioning == "adaln" and d.augmentation["policy"] == "umd"
    assert METHOD.name == "umd" and METHOD.model_type == "hf_ssl_umd" and "cpu-demo" in METHOD.presets
    from hf_ssl.training.data import build_view_generator
    from PIL import Image

    view = build_view_generator(make_config())(Image.new("RGB", (40, 40), (255, 0, 0)), np.random.default_rng(0))
    assert view["pixel_values"].shape == (3, 32, 32) and float(view["pixel_values"].max()) <= 1.0


# ----------------------------------------------------------------------------------------------------
# 6. it learns
# ----------------------------------------------------------------------------------------------------
def test_few_steps_reduce_loss():
    model = make_model(seed=0)
    model.train()
    x = images(4, seed=3)
    t = torch.tensor([0, 0, 10, 30])
    kw = dict(timesteps=t, noise=torch.randn_like(x), bool_masked_pos=masks_for(t.tolist()))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = model(x, **kw)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(not v.requires_grad for v in out.metrics.values())
    assert out.embeddings.shape == (4, 32) and out.logits.shape == (4, N, PATCH * PATCH * 3)
