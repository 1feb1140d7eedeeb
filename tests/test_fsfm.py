"""FSFM invariants on a tiny ViT (CPU, 32 px images, 8 px patches -> 4x4 = 16 patches)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.modeling.backbones import _vit_layers, encode, patchify
from hf_ssl.modeling.fsfm import METHOD, FSFMConfig, FSFMForSelfSupervisedPretraining, FSFMImageProcessor
from hf_ssl.modeling.fsfm.masking_fsfm import (FACE_CANDIDATE_GROUPS, FACE_REGION_GROUPS, crfrp_mask,
                                               grid_region_groups, grid_region_parser, region_membership)

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                patch_size=8)
PATCH, N = 8, 16


def make_config(**kwargs):
    base = dict(region_source="grid", rep_decoder_depth=1, rep_decoder_num_heads=2, decoder_hidden_size=32,
                decoder_depth=1, decoder_num_heads=2, projection_dim=16, projection_hidden_dim=32)
    base.update(kwargs)
    return FSFMConfig(backbone_config=dict(TINY_VIT), image_size=32, **base)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return FSFMForSelfSupervisedPretraining(make_config(**kwargs))


def images(batch=2, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def grid_masks(batch=2, seed=0, ratio=0.75):
    rng = np.random.default_rng(seed)
    membership = region_membership(grid_region_parser(32, 32, (2, 2)), grid_region_groups((2, 2)), patch_size=PATCH)
    out = [crfrp_mask(membership, ratio, range(4), rng=rng)[:2] for _ in range(batch)]
    return torch.from_numpy(np.stack([o[0] for o in out])), torch.from_numpy(np.stack([o[1] for o in out]))


def face_parsing_map(size=64):
    """A synthetic 11-label parsing map: background, hair on top, skin face with brows/eyes/nose/mouth."""
    m = np.zeros((size, size), dtype=np.int64)
    m[:16, :] = 10
    m[16:60, 8:56] = 1
    m[22:26, 14:26], m[22:26, 38:50] = 2, 3
    m[28:32, 16:24], m[28:32, 40:48] = 4, 5
    m[32:42, 28:36] = 6
    m[46:50, 22:42], m[50:52, 22:42], m[52:55, 22:42] = 7, 8, 9
    return m


# ----------------------------------------------------------------------------------------------------
# 1. CRFR-P
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_crfrp_covers_one_whole_region_and_exact_ratio_on_face_maps(ratio):
    patch = 8
    membership = region_membership(face_parsing_map(), FACE_REGION_GROUPS, patch_size=patch)  # 8x8 = 64 patches
    n = membership.shape[1]
    k = round(n * ratio)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        mask, region_mask, region = crfrp_mask(membership, ratio, FACE_CANDIDATE_GROUPS, rng=rng)
        seen.add(region)
        assert region in FACE_CANDIDATE_GROUPS and mask.sum() == k
        if membership[region].sum() <= k:
            assert (region_mask == membership[region]).all()  # the WHOLE region ...
            assert mask[membership[region]].all()  # ... is masked
        else:  # official extreme case: the region alone exceeds the budget
            assert region_mask.sum() == k and (mask == region_mask).all() and (~membership[region] & mask).sum() == 0
    assert seen <= set(FACE_CANDIDATE_GROUPS) and len(seen) >= 4  # skin/background are never the covered region


def test_region_membership_max_pools_and_boundary():
    m = face_parsing_map()
    groups = FACE_REGION_GROUPS
    mem = region_membership(m, groups, patch_size=8)
    nose = mem[2].reshape(8, 8)
    assert nose.sum() == 4 and nose[4:6, 3:5].all()  # rows 32..41 -> patches 4,5; cols 28..35 -> patches 3,4
    boundary = mem[4].reshape(8, 8)
    # boundary = patches holding skin AND (hair or background)
    skin = region_membership(m, [[1]], patch_size=8)[0].reshape(8, 8)
    outer = region_membership(m, [[0, 10]], patch_size=8)[0].reshape(8, 8)
    assert (boundary == (skin & outer)).all() and boundary.any()
    # per-patch id maps are accepted too (one id per patch)
    ids = np.array([[0, 0], [1, 6]])
    mem_ids = region_membership(ids.reshape(-1), [[6], [1], "boundary"], grid=(2, 2))
    assert mem_ids.tolist() == [[False, False, False, True], [False, False, True, False], [False, False, True, False]]


def test_crfrp_proportional_part_and_extreme_case_by_hand():
    # 4 groups over 8 patches: region 0 = {0, 1}; k = 6 -> 4 more from the rest at ratio 4/6
    membership = np.zeros((3, 8), dtype=bool)
    membership[0, [0, 1]] = True
    membership[1, [2, 3, 4]] = True
    membership[2, [5, 6, 7]] = True
    for seed in range(20):
        mask, region_mask, region = crfrp_mask(membership, 0.75, [0], rng=np.random.default_rng(seed))
        assert region == 0 and mask.sum() == 6 and mask[[0, 1]].all() and region_mask.tolist() == [1, 1] + [0] * 6
        assert mask[[2, 3, 4]].sum() == 2 and mask[[5, 6, 7]].sum() == 2  # round(3 * 4/6) = 2 from each group
    # region larger than the budget: k of its patches, region mask = mask
    big = np.zeros((2, 8), dtype=bool)
    big[0, :7] = True
    big[1, 7] = True
    mask, region_mask, _ = crfrp_mask(big, 0.5, [0], rng=np.random.default_rng(0))
    assert mask.sum() == 4 and (mask == region_mask).all() and not mask[7]


def test_grid_parser_and_view_policy():
    labels = grid_region_parser(32, 32, (2, 2))
    assert labels[0, 0] == 0 and labels[0, 31] == 1 and labels[31, 0] == 2 and labels[31, 31] == 3
    from PIL import Image

    from hf_ssl.training.data import build_view_generator

    policy = build_view_generator(make_config())
    rng = np.random.default_rng(0)
    for _ in range(10):
        out = policy(Image.new("RGB", (40, 40), (10, 200, 30)), rng)
        mask, region = out["bool_masked_pos"], out["region_mask"]
        assert out["pixel_values"].shape == (3, 32, 32) and mask.sum() == 12
        assert region.sum() == 4 and mask[region].all()  # one whole 2x2-patch quadrant + randoms
        quadrant = region.view(4, 4)
        assert any(quadrant[r:r + 2, c:c + 2].all() for r in (0, 2) for c in (0, 2))


def test_model_side_masks_one_region_per_batch():
    model = make_model()
    mask, region = model.generate_masks(images(5), rng=np.random.default_rng(3))
    assert (mask.sum(1) == 12).all() and (region.sum(1) == 4).all() and mask[region].all()
    assert (region == region[0]).all()  # the official collate draws one region group per batch
    face = make_model(region_source="face_parsing")
    with pytest.raises(ValueError, match="parsing_map"):
        face(images(2))
    pm = torch.from_numpy(np.stack([face_parsing_map(32)] * 2))
    out = face(images(2), parsing_map=pm)
    assert torch.isfinite(out.loss)
    face.set_region_parser(lambda pv: pm)
    assert torch.isfinite(face(images(2)).loss)


# ----------------------------------------------------------------------------------------------------
# 2. EMA teacher
# ----------------------------------------------------------------------------------------------------
def test_teacher_starts_as_copy_and_follows_ema_formula():
    model = make_model()
    for teacher, student in model.teacher_pairs():
        for t, s in zip(teacher.parameters(), student.parameters()):
            assert torch.equal(t, s) and not t.requires_grad
    before = [[p.clone() for p in t.parameters()] for t, _ in model.teacher_pairs()]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    mask, region = grid_masks()
    model(images(), bool_masked_pos=mask, region_mask=region).loss.backward()
    opt.step()
    step, total = 3, 10
    model.on_step_end(step, total)
    m = 1.0 - (1.0 - 0.996) * (np.cos(np.pi * step / total) + 1) / 2
    for (teacher, student), old in zip(model.teacher_pairs(), before):
        for t, o, s in zip(teacher.parameters(), old, student.parameters()):
            assert torch.allclose(t, m * o + (1 - m) * s.detach(), atol=1e-6)
    assert not hasattr(model, "teacher_predictor")  # the teacher has no predictor
    model.on_step_end(total, total)  # momentum reaches 1 at the end: the teacher stops moving
    snap = [p.clone() for p in model.teacher_encoder.parameters()]
    model.on_step_end(total, total)
    assert all(torch.equal(a, b) for a, b in zip(snap, model.teacher_encoder.parameters()))


def test_teacher_is_stop_gradient_and_sees_the_full_image():
    model = make_model()
    seen = []
    hooks = [_vit_layers(model.encoder)[0].register_forward_pre_hook(
                 lambda mod, args: seen.append(("student", args[0].shape[1], torch.is_grad_enabled()))),
             _vit_layers(model.teacher_encoder)[0].register_forward_pre_hook(
                 lambda mod, args: seen.append(("teacher", args[0].shape[1], torch.is_grad_enabled())))]
    mask, region = grid_masks()
    out = model(images(), bool_masked_pos=mask, region_mask=region)
    for h in hooks:
        h.remove()
    assert ("student", 1 + 4, True) in seen and ("teacher", 1 + N, False) in seen  # masked tokens never enter
    assert all(length == 5 for who, length, _ in seen if who == "student")
    out.loss.backward()
    assert all(p.grad is None for t, _ in model.teacher_pairs() for p in t.parameters())
    # student predictions do not depend on the masked pixels
    model.eval()
    pix = mask.view(2, 1, 4, 1, 4, 1).expand(2, 3, 4, PATCH, 4, PATCH).reshape(2, 3, 32, 32)
    x = images()
    a = model(x, bool_masked_pos=mask, region_mask=region)
    b = model(torch.where(pix, torch.randn_like(x), x), bool_masked_pos=mask, region_mask=region)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    assert not torch.allclose(a.metrics["id_loss"], b.metrics["id_loss"])  # the full-view teacher did change


# ----------------------------------------------------------------------------------------------------
# 3. loss terms
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("id_loss", ["simsiam", "byol"])
def test_loss_terms_by_hand(id_loss):
    model = make_model(id_loss=id_loss, norm_pix_loss=False)
    x = images()
    mask, region = grid_masks()
    captured = {}
    original = model.predictor.forward

    def spy(h):
        captured["pred"] = original(h)
        return captured["pred"]

    model.predictor.forward = spy
    out = model(x, bool_masked_pos=mask, region_mask=region)
    target = patchify(x, PATCH)
    per_patch = (out.logits - target).pow(2).mean(-1)
    rec = per_patch[mask].mean()
    rec_region = per_patch[region].mean()
    student = torch.nn.functional.normalize(captured["pred"], dim=-1)
    teacher = model.teacher_features(x)
    cos = (student * teacher).sum(-1)
    idl = (-0.5 * cos).mean() if id_loss == "simsiam" else (2 - 2 * cos).mean()
    assert torch.allclose(out.metrics["reconstruction_loss"], rec, atol=1e-6)
    assert torch.allclose(out.metrics["region_reconstruction_loss"], rec_region, atol=1e-6)
    assert torch.allclose(out.metrics["id_loss"], idl, atol=1e-6)
    assert torch.allclose(out.loss, rec + 0.007 * rec_region + 0.1 * idl, atol=1e-6)
    # visible-patch predictions carry no loss: their gradient is zero
    pred = out.logits
    pred.retain_grad()
    out.loss.backward()
    g = pred.grad.abs().sum(-1)
    assert (g[~mask] == 0).all() and (g[mask] > 0).all()


def test_teacher_target_computed_from_full_unmasked_image():
    model = make_model()
    x = images()
    visible_all = torch.arange(N).unsqueeze(0).expand(2, -1)
    from hf_ssl.modeling.backbones import vit_forward_visible

    with torch.no_grad():
        tokens = vit_forward_visible(model.teacher_encoder, x, visible_all)
        rep = model.teacher_rep_decoder(tokens, visible_all, N, (4, 4))
        z = torch.nn.functional.normalize(model.teacher_projector(rep.mean(1)), dim=-1)
        full = model.teacher_encoder(pixel_values=x).last_hidden_state
    assert torch.allclose(tokens, full, atol=1e-5)  # same as a plain full-image forward
    assert torch.allclose(model.teacher_features(x), z, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# 4. save / load / export / configs
# ----------------------------------------------------------------------------------------------------
def test_save_load_equality(tmp_path):
    from transformers import AutoImageProcessor, AutoModel

    model = make_model(id_loss="byol", grid_regions=[2, 2])
    model.on_step_end(2, 10)
    model.eval()
    model.save_pretrained(tmp_path)
    FSFMImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, FSFMForSelfSupervisedPretraining)
    sd, lsd = model.state_dict(), loaded.state_dict()
    assert sd.keys() == lsd.keys() and all(torch.equal(sd[k], lsd[k]) for k in sd)
    assert not any(p.requires_grad for t, _ in loaded.teacher_pairs() for p in t.parameters())
    assert not loaded.encoder.embeddings.position_embeddings.requires_grad
    loaded.eval()
    mask, region = grid_masks()
    a, b = model(images(), bool_masked_pos=mask, region_mask=region), loaded(images(), bool_masked_pos=mask,
                                                                            region_mask=region)
    assert torch.allclose(a.loss, b.loss) and torch.allclose(a.logits, b.logits)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), FSFMImageProcessor)
    assert loaded.config.region_groups == model.config.region_groups


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
    (dict(mask_ratio=0.0), "mask_ratio"),
    (dict(region_source="sam"), "region_source"),
    (dict(grid_regions=[0, 2]), "grid_regions"),
    (dict(candidate_region_groups=[9]), "candidate_region_groups"),
    (dict(region_groups=[[1], "chin"]), "region_groups"),
    (dict(id_loss="infonce"), "id_loss"),
    (dict(id_loss_weight=-1.0), "id_loss_weight"),
    (dict(region_loss_weight=-0.1), "region_loss_weight"),
    (dict(teacher_momentum=1.5), "teacher_momentum"),
    (dict(decoder_num_heads=3), "divisible"),
    (dict(rep_decoder_depth=0), "rep_decoder_depth"),
])
def test_nonsense_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_bad_inputs_raise_clearly():
    model = make_model()
    mask, region = grid_masks()
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="region_mask"):
        model(images(), bool_masked_pos=mask)
    with pytest.raises(ValueError, match="covered"):
        model(images(), bool_masked_pos=mask, region_mask=~mask)
    with pytest.raises(ValueError, match="ViT"):
        FSFMConfig(backbone_config="resnet-18", image_size=32)


def test_paper_defaults_and_registry():
    d = FSFMConfig()
    assert (d.mask_ratio, d.region_loss_weight, d.id_loss_weight, d.id_loss, d.teacher_momentum) == (
        0.75, 0.007, 0.1, "simsiam", 0.996)
    assert (d.decoder_hidden_size, d.decoder_depth, d.decoder_num_heads, d.rep_decoder_depth) == (512, 8, 16, 2)
    assert (d.projection_dim, d.projection_hidden_dim, d.norm_pix_loss) == (256, 4096, False)
    assert d.backbone_config.patch_size == 16 and d.region_source == "face_parsing"
    assert d.candidate_region_groups == [0, 1, 2, 3, 4, 5]
    assert METHOD.name == "fsfm" and METHOD.model_type == "hf_ssl_fsfm" and "cpu-demo" in METHOD.presets


# ----------------------------------------------------------------------------------------------------
# 5. it learns (the ID loss is per sample: no cross-batch term, hence no DDP-equivalence test is needed)
# ----------------------------------------------------------------------------------------------------
def test_few_steps_reduce_loss():
    model = make_model(seed=0)
    model.train()
    # smooth images (upsampled 2x2 colour fields): masked patches are predictable from the visible ones
    coarse = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    x = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=True)
    mask, region = grid_masks(4, seed=3)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for step in range(25):
        out = model(x, bool_masked_pos=mask, region_mask=region)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.on_step_end(step + 1, 25)
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(not v.requires_grad for v in out.metrics.values())
    assert out.embeddings.shape == (4, 32) and out.logits.shape == (4, N, PATCH * PATCH * 3)
    # the per-sample ID loss of a batch is the mean of the per-sample losses of its halves
    model.eval()
    full = model(x, bool_masked_pos=mask, region_mask=region).metrics["id_loss"]
    halves = [model(x[i:i + 2], bool_masked_pos=mask[i:i + 2], region_mask=region[i:i + 2]).metrics["id_loss"]
              for i in (0, 2)]
    assert torch.allclose(full, sum(halves) / 2, atol=1e-6)
