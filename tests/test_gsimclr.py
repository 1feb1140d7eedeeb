"""G-SimCLR (Chakraborty et al., ICDMW 2020): NT-Xent with same-pseudo-label negatives removed."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.modeling.gsimclr import METHOD, GSimCLRConfig, GSimCLRForSelfSupervisedPretraining, GSimCLRImageProcessor
from hf_ssl.modeling.losses import kmeans, nt_xent, nt_xent_label_masked

TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)


def make_config(**kwargs):
    defaults = dict(projection_hidden_dims=[32, 16], projection_dim=16, num_clusters=3, pseudo_label_interval=1,
                    feature_bank_size=32, kmeans_iterations=5)
    defaults.update(kwargs)
    return GSimCLRConfig(backbone_config=dict(TINY_RESNET), image_size=32, **defaults)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return GSimCLRForSelfSupervisedPretraining(make_config(**kwargs))


def make_views(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(2)]


def bn_eval(model):
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def hand_loss(z1, z2, labels, t):
    """NT-Xent over 2B anchors written with explicit loops: anchor (v, i); positive = other view of i; denominator =
    every other view except views of images j != i with labels[j] == labels[i]."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    b = z1.shape[0]
    total = 0.0
    for a in range(2 * b):
        i = a % b
        pos = (a + b) % (2 * b)
        denom = 0.0
        for c in range(2 * b):
            if c == a:
                continue
            j = c % b
            if j != i and labels is not None and labels[j] >= 0 and labels[j] == labels[i]:
                continue
            denom += math.exp(float(z[a] @ z[c]) / t)
        total += -(float(z[a] @ z[pos]) / t - math.log(denom))
    return total / (2 * b)


def test_official_defaults():
    cfg = GSimCLRConfig()
    assert cfg.contrastive_temperature == 0.1 and cfg.num_clusters == 64
    assert cfg.projection_hidden_dims == [256, 128] and cfg.projection_dim == 50
    assert cfg.model_type == "hf_ssl_gsimclr" and cfg.pseudo_label_source == "encoder"


@pytest.mark.parametrize("labels", [None, [0, 1, 0, 2, 1, -1], [0, 0, 0, 0, 0, 0], [-1, -1, 3, 3, 4, 5]])
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_masked_nt_xent_matches_hand_computation(labels, t):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    lab = None if labels is None else torch.tensor(labels)
    got = nt_xent_label_masked(z1, z2, lab, t)
    assert got.item() == pytest.approx(hand_loss(z1, z2, labels, t), rel=1e-5)
    if labels is None or len(set(labels)) == 6:
        assert got.item() == pytest.approx(nt_xent(z1, z2, t).item(), rel=1e-6)


def test_masking_removes_only_same_label_negatives():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    plain = nt_xent_label_masked(z1, z2, torch.arange(4), 0.2)
    masked = nt_xent_label_masked(z1, z2, torch.tensor([0, 0, 1, 2]), 0.2)
    assert masked < plain  # a smaller denominator for anchors 0/1, everything else unchanged
    # with all images in one cluster only the positive is left: loss 0 exactly
    assert nt_xent_label_masked(z1, z2, torch.zeros(4, dtype=torch.long), 0.2).item() == pytest.approx(0, abs=1e-6)


def test_forward_provided_labels_matches_hand_loss():
    model = bn_eval(make_model(pseudo_label_source="provided"))
    views = make_views()
    labels = torch.tensor([1, 1, 0, 2])
    out = model(pixel_values=views, pseudo_labels=labels)
    from hf_ssl.modeling.backbones import encode
    with torch.no_grad():
        z1 = model.projection_head(encode(model.encoder, views[0], "cls"))
        z2 = model.projection_head(encode(model.encoder, views[1], "cls"))
    assert out.loss.item() == pytest.approx(hand_loss(z1, z2, labels.tolist(), 0.1), rel=1e-5)
    assert torch.equal(out.logits, labels)
    assert out.metrics["masked_negative_fraction"].item() == pytest.approx(2 / 12)
    with pytest.raises(ValueError, match="pseudo_labels"):
        model(pixel_values=views)


def test_encoder_pseudo_labels_bank_and_kmeans():
    model = bn_eval(make_model(feature_bank_size=8, num_clusters=3))
    views = make_views(batch=4)
    out = model(pixel_values=views)
    assert out.metrics["pseudo_labels_active"].item() == 0.0 and torch.equal(out.logits, torch.full((4,), -1))
    from hf_ssl.modeling.backbones import encode
    with torch.no_grad():
        h1, h2 = encode(model.encoder, views[0], "cls"), encode(model.encoder, views[1], "cls")
    feats = F.normalize(F.normalize(h1, dim=1) + F.normalize(h2, dim=1), dim=1)
    assert torch.allclose(model.feature_bank[:4], feats, atol=1e-6) and int(model.bank_count) == 4
    model.on_step_end(1, 10)  # 4 >= 3 clusters: k-means on the filled part of the bank
    assert bool(model.centroids_ready)
    ref_c, _ = kmeans(model.feature_bank[:4], 3, 5, seed=0)
    assert torch.allclose(model.centroids, ref_c, atol=1e-6)
    out = model(pixel_values=views)
    expected = torch.cdist(feats, model.centroids).argmin(dim=1)
    assert torch.equal(out.logits, expected) and out.metrics["pseudo_labels_active"].item() == 1.0
    assert int(model.bank_ptr) == 0 and int(model.bank_count) == 8  # FIFO wrap
    # the loss of the step uses the assigned labels
    with torch.no_grad():
        z1, z2 = model.projection_head(h1), model.projection_head(h2)
    assert out.loss.item() == pytest.approx(hand_loss(z1, z2, expected.tolist(), 0.1), rel=1e-5)
    # eval forwards do not write the bank
    model.eval()
    bank = model.feature_bank.clone()
    model(pixel_values=make_views(seed=3))
    assert torch.equal(model.feature_bank, bank)


def test_kmeans_interval():
    model = bn_eval(make_model(pseudo_label_interval=3))
    model(pixel_values=make_views())
    model.on_step_end(1, 10)
    model.on_step_end(2, 10)
    assert not bool(model.centroids_ready)
    model.on_step_end(3, 10)
    assert bool(model.centroids_ready)


def test_pseudo_labels_carry_no_gradient_and_positive_gets_gradient():
    model = make_model(pseudo_label_source="provided").train()
    out = model(pixel_values=make_views(), pseudo_labels=torch.tensor([0, 0, 0, 0]))
    out.loss.backward()  # only positives left: still a finite loss with a gradient path
    assert math.isfinite(out.loss.item())
    assert any(p.grad is not None for p in model.encoder.parameters())


# ---------------------------------------------------------------------------------------------------- DDP
DDP_BATCH = 8


def _ddp_run(model, rows):
    records = {"loss": [], "labels": [], "grad": []}
    for step in range(3):
        views = [v[rows] for v in make_views(DDP_BATCH, seed=30 + step)]
        model.zero_grad()
        out = model(pixel_values=views)
        out.loss.backward()
        records["loss"].append(out.loss.item())
        records["labels"].append(out.logits.clone())
        records["grad"].append(next(model.projection_head.parameters()).grad.clone())
        model.on_step_end(step + 1, 10)
    records["bank"] = model.feature_bank.clone()
    records["centroids"] = model.centroids.clone()
    return records


def _ddp_model():
    return bn_eval(make_model(seed=4, num_clusters=3, feature_bank_size=32, pseudo_label_interval=1))


def _ddp_worker(rank, world_size, out_dir):
    torch.set_num_threads(1)
    per = DDP_BATCH // world_size
    torch.save(_ddp_run(_ddp_model(), slice(rank * per, (rank + 1) * per)), os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_two_processes_match_single_process(tmp_path):
    from ddp_utils import run_distributed

    run_distributed(_ddp_worker, tmp_path, str(tmp_path), world_size=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _ddp_run(_ddp_model(), slice(None))
    assert torch.equal(ranks[0]["bank"], ranks[1]["bank"]) and torch.equal(ranks[0]["centroids"], ranks[1]["centroids"])
    assert torch.allclose(ranks[0]["bank"], single["bank"], atol=1e-5)
    assert torch.allclose(ranks[0]["centroids"], single["centroids"], atol=1e-5)
    for step in range(3):  # step 1: plain NT-Xent; steps 2, 3: pseudo-labels from k-means of the gathered bank
        assert torch.equal(torch.cat([ranks[0]["labels"][step], ranks[1]["labels"][step]]), single["labels"][step])
        assert (ranks[0]["loss"][step] + ranks[1]["loss"][step]) / 2 == pytest.approx(single["loss"][step], rel=1e-5)
        # gathered negatives with gradient: DDP's averaged gradient == full-batch gradient
        assert torch.allclose((ranks[0]["grad"][step] + ranks[1]["grad"][step]) / 2, single["grad"][step], atol=1e-5)
    assert (single["labels"][2] >= 0).all()


# ---------------------------------------------------------------------------------------------------- misc
def test_tiny_trainer_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model(pseudo_label_interval=2).train()
    before = [p.detach().clone() for p in model.encoder.parameters()]
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=32), build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True,
                                report_to=[])
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(math.isfinite(h["loss"]) for h in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))
    assert int(model.bank_count) == 12 and bool(model.centroids_ready) and int(model.optimizer_step) == 3

    model.eval().save_pretrained(tmp_path / "ckpt")
    GSimCLRImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path / "ckpt")
    loaded = AutoModel.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded, GSimCLRForSelfSupervisedPretraining)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.parametrize("kwargs,match", [
    (dict(contrastive_temperature=-0.1), "contrastive_temperature"),
    (dict(num_clusters=1), "num_clusters"),
    (dict(feature_bank_size=2, num_clusters=3), "feature_bank_size"),
    (dict(pseudo_label_source="autoencoder"), "pseudo_label_source"),
    (dict(projection_hidden_dims=[0]), "projection_hidden_dims"),
])
def test_nonsense_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_bad_inputs_raise_clearly():
    model = make_model().train()
    with pytest.raises(ValueError):
        model(pixel_values=[torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)])
    with pytest.raises(ValueError, match="2 views"):
        model(pixel_values=make_views()[:1])
    with pytest.raises(ValueError, match="same batch size"):
        model(pixel_values=[torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)])
    provided = make_model(pseudo_label_source="provided").train()
    with pytest.raises(ValueError, match="one entry per image"):
        provided(pixel_values=make_views(), pseudo_labels=torch.tensor([0, 1]))


def test_cpu_demo_preset_is_valid():
    cfg = GSimCLRConfig(**METHOD.presets["cpu-demo"])
    assert cfg.feature_bank_size >= cfg.num_clusters and METHOD.family == "contrastive"
