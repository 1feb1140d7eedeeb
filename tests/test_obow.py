"""OBoW: vocabulary FIFO, BoW targets, EMA, dynamic head, stop-gradient, DDP, save/export, configs."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.obow import METHOD, OBoWConfig, OBoWForSelfSupervisedPretraining
from tiny_configs import tiny_config


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return OBoWForSelfSupervisedPretraining(tiny_config("obow", **overrides))


def views(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(batch, 3, 32, 32, generator=g)] + [torch.randn(batch, 3, 24, 24, generator=g) for _ in range(2)]
            + [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)])


def test_vocabulary_fifo_update():
    model = make_model()
    voc = model.vocabulary(0)
    old = voc.clone()
    a = torch.randn(4, voc.shape[1])
    model.update_vocabulary(0, a)
    assert torch.equal(voc[:4], a) and torch.equal(voc[4:], old[4:]) and int(model.vocabulary_ptr[0]) == 4
    for _ in range(3):
        model.update_vocabulary(0, torch.randn(4, voc.shape[1]))
    assert int(model.vocabulary_ptr[0]) == 0  # 16 words, 4 per step: wrapped around
    b = torch.randn(4, voc.shape[1])
    model.update_vocabulary(0, b)
    assert torch.equal(voc[:4], b)  # the oldest words are replaced first


def test_local_feature_selection():
    model = make_model(vocabulary_update="no_averaging")
    f = torch.randn(2, 3, 4, 5)
    u = torch.tensor([0.0, 0.999])
    sel = model.select_local_features(f, u)
    assert torch.equal(sel[0], f[0, :, 0, 0]) and torch.equal(sel[1], f[1, :, 3, 4])
    model = make_model()
    sel = model.select_local_features(f, torch.tensor([0.0, 0.0]))
    assert torch.allclose(sel[0], f[0, :, :3, :3].mean(dim=(1, 2)), atol=1e-6)  # 3x3 local average


def test_bow_targets_sum_to_one_and_have_no_gradient():
    model = make_model().train()
    x = views()
    maps = model.teacher_feature_maps(x[0])
    assert [m.shape[-2:] for m in maps] == [(6, 6), (2, 2)]  # border of 1 dropped
    targets, _ = model.bow_targets(maps, update=False)
    for t in targets:
        assert t.shape == (4, 16) and not t.requires_grad and (t >= 0).all()
        assert torch.allclose(t.sum(1), torch.ones(4), atol=1e-6)
    # hand check of one level: softmax(-(inv_delta / mu) d) max-pooled and L1-normalised
    f, voc = maps[1], model.vocabulary(1)
    d = ((f.permute(0, 2, 3, 1).unsqueeze(3) - voc) ** 2).sum(-1)  # [B, H, W, K]
    codes = torch.softmax(-(15.0 / model.min_distance_mean[1]) * d, dim=-1)
    bow = codes.amax(dim=(1, 2))
    assert torch.allclose(targets[1], bow / bow.sum(1, keepdim=True), atol=1e-5)
    # training: running min-distance mean updated with decay 0.99
    mu0 = model.min_distance_mean.clone()
    _, mins = model.bow_targets(maps, update=True)
    assert torch.allclose(model.min_distance_mean[1], 0.99 * mu0[1] + 0.01 * mins[1])


def test_teacher_stop_gradient_and_head_depends_on_vocabulary():
    model = make_model().train()
    out = model(pixel_values=views())
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher_encoder.parameters())
    assert all(not p.requires_grad for p in model.teacher_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.weight_generators.parameters())
    # the dynamic head: predictions change with the vocabulary (weights are generated from it)
    model.eval()
    g = model.encode_views(views()[1:2])[0]
    w1 = model.prediction_weights([model.vocabulary(i) for i in range(2)])
    w2 = model.prediction_weights([model.vocabulary(i) + 1.0 for i in range(2)])
    assert not torch.allclose(g @ w1[1].t(), g @ w2[1].t())
    assert torch.allclose(w1[1].norm(dim=1), torch.full((16,), 8.0), atol=1e-4)  # kappa * unit rows
    # a training forward reads the vocabulary *before* the teacher updates it
    model.train()
    seen = []
    orig = model.prediction_weights
    model.prediction_weights = lambda vocs: (seen.append([v.clone() for v in vocs]), orig(vocs))[1]
    before = [model.vocabulary(i).clone() for i in range(2)]
    model(pixel_values=views(seed=1))
    assert all(torch.equal(a, b) for a, b in zip(seen[0], before))
    assert not torch.equal(model.vocabulary(0), before[0])


def test_ema_formula_and_cosine_schedule():
    model = make_model()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.1)
    before = [p.clone() for p in model.teacher_encoder.parameters()]
    model.on_step_end(2, 10)
    m = model.teacher_momentum(2, 10)
    assert m == pytest.approx(1 - 0.01 * 0.5 * (1 + torch.cos(torch.tensor(0.2 * torch.pi)).item()), rel=1e-6)
    for t0, t1, s in zip(before, model.teacher_encoder.parameters(), model.encoder.parameters()):
        assert torch.allclose(t1, m * t0 + (1 - m) * s, atol=1e-6)
    assert model.teacher_momentum(10, 10) == 1.0


def test_loss_is_sum_over_groups_of_level_means():
    model = make_model().eval()
    out = model(pixel_values=views())
    assert out.loss.item() == pytest.approx((out.metrics["bow_loss_group0"] + out.metrics["bow_loss_group1"]).item(),
                                            rel=1e-6)


def _ddp_run(rows):
    model = make_model(seed=0).train()
    for module in model.modules():  # eval-mode BatchNorm in the encoders (the generator's BN sees the vocabulary only)
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
                module is g.bn for g in model.weight_generators):
            module.eval()
    losses = []
    for step in range(3):
        out = model(pixel_values=[v[rows] for v in views(batch=8, seed=step)])
        losses.append(out.loss.item())
        model.on_step_end(step + 1, 3)
    return {"loss": losses, "v0": model.vocabulary(0).clone(), "v1": model.vocabulary(1).clone(),
            "mu": model.min_distance_mean.clone()}


def _ddp_worker(rank, world_size, out_dir):
    torch.set_num_threads(1)
    torch.save(_ddp_run(slice(rank * 4, (rank + 1) * 4)), os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_two_processes_match_single_process(tmp_path):
    from ddp_utils import run_distributed

    run_distributed(_ddp_worker, tmp_path, str(tmp_path), world_size=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _ddp_run(slice(None))
    for key in ("v0", "v1", "mu"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert torch.allclose(ranks[0][key], single[key], atol=1e-5), key
    for step in range(3):
        assert (ranks[0]["loss"][step] + ranks[1]["loss"][step]) / 2 == pytest.approx(single["loss"][step], rel=1e-4)


def test_save_load_and_export(tmp_path):
    from transformers import AutoModel

    model = make_model().train()
    model(pixel_values=views())
    model.eval()
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModel.from_pretrained(tmp_path / "m")
    assert type(reloaded) is OBoWForSelfSupervisedPretraining
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    x = views(seed=3)
    assert torch.equal(model(pixel_values=x).loss, reloaded(pixel_values=x).loss)
    model.export_encoder(tmp_path / "e")
    img = torch.randn(2, 3, 32, 32)
    torch.save({"x": img, "features": model.get_image_features(img)}, tmp_path / "e" / "expected.pt")
    script = textwrap.dedent("""
        import sys, torch
        sys.modules["hf_ssl"] = None
        from transformers import AutoModel
        d = sys.argv[1]
        enc = AutoModel.from_pretrained(d).eval()
        exp = torch.load(d + "/expected.pt")
        with torch.no_grad():
            feats = enc(pixel_values=exp["x"]).pooler_output.flatten(1)
        assert torch.allclose(feats, exp["features"], atol=1e-5)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "e")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(tmp_path / "e" / "hf_ssl_export.json"))["method"] == "hf_ssl_obow"


@pytest.mark.parametrize("kwargs, match", [
    (dict(backbone_config="vit-micro"), "ConvNet"),
    (dict(bow_levels=[5]), "bow_levels"),
    (dict(bow_levels=[-1, 1]), "duplicates"),
    (dict(num_words=0), "num_words"),
    (dict(inv_delta=0.0), "inv_delta"),
    (dict(kappa=-1.0), "kappa"),
    (dict(bow_pool="sum"), "bow_pool"),
    (dict(vocabulary_update="x"), "vocabulary_update"),
    (dict(teacher_momentum=1.5), "teacher_momentum"),
    (dict(augmentation={"crop_scale": [0.8, 0.2]}), "crop_scale"),
])
def test_nonsense_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config("obow", **kwargs)


def test_bad_inputs_and_few_steps():
    model = make_model().train()
    with pytest.raises(ValueError, match="at least one student view"):
        model(pixel_values=views()[:1])
    with pytest.raises(ValueError, match="same batch size"):
        model(pixel_values=[torch.randn(4, 3, 32, 32), torch.randn(3, 3, 24, 24)])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    x = views(seed=3)
    losses = []
    for step in range(6):
        loss = model(pixel_values=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[2:]) < losses[0] - 0.05, losses


def test_presets_and_views():
    import numpy as np
    from PIL import Image

    from hf_ssl.training.data import build_view_generator

    paper = OBoWConfig()
    assert (paper.num_words, paper.inv_delta, paper.kappa, paper.bow_levels) == (8192, 15.0, 8.0, [-2, -1])
    aug = paper.augmentation
    assert (aug["num_crops"], aug["crop_size"], aug["num_patches"], aug["patch_size"]) == (2, 160, 5, 96)
    demo = METHOD.make_config("cpu-demo")
    policy = build_view_generator(demo)
    out = policy(Image.fromarray(np.zeros((32, 32, 3), dtype="uint8")), np.random.default_rng(0))
    assert [tuple(v.shape[-2:]) for v in out["pixel_values"]] == [(64, 64)] + [(48, 48)] * 2 + [(32, 32)] * 3
    model = OBoWForSelfSupervisedPretraining(demo).train()
    assert torch.isfinite(model(pixel_values=[v.unsqueeze(0).repeat(2, 1, 1, 1) for v in out["pixel_values"]]).loss)
