"""Joint image-volume intra-inter contrastive clustering (Nguyen et al., AAAI 2023): slice-level and volume-level
SwAV clustering, masked slice-embedding prediction, 2-D slice encoder export."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_configs import TINY_VIT, tiny_config

from hf_ssl.modeling.backbones import encode
from hf_ssl.modeling.image_volume_clustering import METHOD, ImageVolumeClusteringConfig
from hf_ssl.modeling.image_volume_clustering.modeling_image_volume_clustering import (
    ImageVolumeClusteringForSelfSupervisedPretraining as Model, masked_embedding_loss, swapped_prediction_loss)
from hf_ssl.modeling.image_volume_clustering.views_image_volume_clustering import ImageVolumeViewsPolicy

D, S = 8, 16  # tiny config: 8 slices of 16 x 16


def _model(**overrides):
    torch.manual_seed(0)
    return Model(tiny_config("image_volume_clustering", **overrides))


def _batch(b=4, seed=0, slices=2):
    g = torch.Generator().manual_seed(seed)
    vols = [torch.randn(b, 1, D, S, S, generator=g) for _ in range(2)]
    sl = [torch.randn(b, slices, 1, S, S, generator=g) for _ in range(2)]
    mask = torch.zeros(b, D, dtype=torch.bool)
    mask[:, [1, 5]] = True
    return dict(pixel_values_volumes=vols, pixel_values=sl, bool_masked_pos=mask)


def _sinkhorn_reference(scores, eps, iters):
    q = torch.exp(scores.double() / eps).t()
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def test_swapped_prediction_equals_hand_reference():
    g = torch.Generator().manual_seed(1)
    s1, s2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    loss, codes = swapped_prediction_loss([s1, s2], temperature=0.1, epsilon=0.05, iterations=3)
    q1, q2 = _sinkhorn_reference(s1, 0.05, 3), _sinkhorn_reference(s2, 0.05, 3)
    assert torch.allclose(codes[0].double(), q1, atol=1e-5) and torch.allclose(codes[1].double(), q2, atol=1e-5)
    # equipartition: each sample's code sums to 1, prototypes share the batch equally (after the last column step)
    assert torch.allclose(codes[0].sum(1), torch.ones(6), atol=1e-5)
    ref = 0.0
    for i in range(6):
        ref -= float((q1[i] * torch.log_softmax(s2[i].double() / 0.1, 0)).sum())
        ref -= float((q2[i] * torch.log_softmax(s1[i].double() / 0.1, 0)).sum())
    assert float(loss) == pytest.approx(ref / 12, rel=1e-5)


def test_codes_carry_no_gradient():
    s1 = torch.randn(4, 3, requires_grad=True)
    s2 = torch.randn(4, 3, requires_grad=True)
    loss, codes = swapped_prediction_loss([s1, s2], 0.1, 0.05, 3)
    assert not codes[0].requires_grad and not codes[1].requires_grad
    loss.backward()
    # d loss / d s2 = (softmax(s2 / tau) - q1) / (2 B tau): the code is a constant target
    expected = (torch.softmax(s2.detach() / 0.1, 1) - codes[0]) / (2 * 4 * 0.1)
    assert torch.allclose(s2.grad, expected, atol=1e-5)


def test_masked_embedding_loss_only_on_masked_slices_and_targets_stop_gradient():
    pred = torch.randn(2, D, 6, requires_grad=True)
    target = torch.randn(2, D, 6, requires_grad=True)
    mask = torch.zeros(2, D, dtype=torch.bool)
    mask[0, 2] = mask[1, 7] = True
    loss = masked_embedding_loss(pred, target, mask)
    ref = (((pred[0, 2] - target[0, 2]) ** 2).sum() + ((pred[1, 7] - target[1, 7]) ** 2).sum()) / 12
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    loss.backward()
    assert pred.grad[~mask].abs().sum() == 0 and pred.grad[mask].abs().sum() > 0
    assert target.grad is None  # stop-gradient on the targets


def test_mask_token_replaces_exactly_the_masked_slices():
    model = _model()
    tokens = torch.randn(2, D, 32)
    mask = torch.zeros(2, D, dtype=torch.bool)
    mask[0, 0] = mask[1, 3] = True
    out = model.mask_tokens(tokens, mask)
    assert torch.equal(out[~mask], tokens[~mask])
    assert torch.equal(out[mask], model.mask_token.detach().expand(2, 32))


def test_multiscale_slice_features_and_volume_embedding_match_hand_computation():
    model = _model().eval()
    vol = torch.randn(2, 1, D, S, S)
    slices = vol.permute(0, 2, 1, 3, 4).reshape(2 * D, 1, S, S)
    with torch.no_grad():
        hs = model.encoder(pixel_values=slices, output_hidden_states=True).hidden_states
        feats = torch.cat([F.normalize(h.mean(dim=(2, 3)), dim=1) for h in hs[-2:]], dim=1)  # two tiny stages
        tokens = model.slice_projection(feats).view(2, D, -1)
        ref = model.aggregator(tokens).mean(dim=1)
    assert feats.shape[1] == 8 + 16
    assert torch.allclose(model.get_input_features(vol), ref, atol=1e-6)
    # slices / images give the exported encoder's pooled feature
    assert torch.allclose(model.get_input_features(slices), encode(model.encoder, slices, "cls"), atol=1e-6)
    assert torch.allclose(model.get_input_features(model.export_check_input(vol)[:D]),
                          model.get_image_features(slices[:D]), atol=1e-6)


def test_volume_embedding_depends_on_slice_order_through_positions():
    model = _model().eval()
    vol = torch.randn(1, 1, D, S, S)
    flipped = vol.flip(2)
    assert not torch.allclose(model.get_input_features(vol), model.get_input_features(flipped), atol=1e-4)


def test_prototypes_frozen_then_trained_and_renormalised():
    model = _model(freeze_prototypes_steps=2).train()
    out = model(**_batch())
    out.loss.backward()
    assert model.prototypes_3d.weight.grad is None and model.prototypes_2d.weight.grad is None
    assert model.encoder.embedder.embedder.convolution.weight.grad.abs().sum() > 0
    assert model.mask_token.grad.abs().sum() > 0 and model.mask_predictor.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.prototypes_3d.weight.mul_(3.0)
    model.on_step_end(2, 10)
    assert torch.allclose(model.prototypes_3d.weight.norm(dim=1), torch.ones(8), atol=1e-6)
    model.zero_grad()
    model(**_batch()).loss.backward()
    assert model.prototypes_3d.weight.grad.abs().sum() > 0 and model.prototypes_2d.weight.grad.abs().sum() > 0


def test_volume_projection_head_feeds_the_3d_prototypes_and_official_path_has_none():
    b = _batch()
    vols = torch.cat(b["pixel_values_volumes"])
    for projection in (True, False):
        model = _model(volume_projection=projection, weight_2d=0.0, weight_mask=0.0).train()
        assert (model.volume_projection_head is not None) == projection
        assert model.prototypes_3d.weight.shape[1] == (16 if projection else 32)
        torch.manual_seed(5)
        out = model(**b)
        with torch.no_grad():
            e = model.aggregate(model.slice_tokens(vols)).mean(dim=1)
            z = F.normalize(model.volume_projection_head(e) if projection else e, dim=1)
            ref, _ = swapped_prediction_loss(list((z @ model.prototypes_3d.weight.t()).split(4)), 0.1, 0.05, 3)
        assert float(out.metrics["loss_3d"]) == pytest.approx(float(ref), rel=1e-5)
        assert torch.allclose(out.embeddings, e[:4], atol=1e-5)  # the k-NN / export feature is pre-head
        if projection:
            out.loss.backward()
            assert model.volume_projection_head.layers[0].weight.grad.abs().sum() > 0
            assert not any("volume_projection_head" in k for k in model.encoder.state_dict())


def test_volume_projection_spreads_volume_embeddings_that_share_one_direction():
    """The failure the head fixes: mean-pooled slice tokens of different volumes are nearly parallel (a shared
    component), so raw 3-D scores hardly differ between volumes; the head's BatchNorm removes the shared part."""
    model = _model(volume_projection=True).train()
    g = torch.Generator().manual_seed(2)
    e = torch.randn(1, 32, generator=g) * 10 + 0.05 * torch.randn(16, 32, generator=g)
    raw = F.normalize(e, dim=1)
    z = F.normalize(model.volume_projection_head(e), dim=1)
    off = ~torch.eye(16, dtype=torch.bool)
    assert float((raw @ raw.t())[off].mean()) > 0.99
    assert float((z @ z.t())[off].mean()) < 0.5


def test_loss_is_the_weighted_sum_of_terms():
    model = _model(weight_2d=0.5, weight_3d=2.0, weight_mask=3.0).train()
    torch.manual_seed(3)
    out = model(**_batch())
    m = out.metrics
    assert float(out.loss) == pytest.approx(0.5 * float(m["loss_2d"]) + 2 * float(m["loss_3d"]) +
                                            3 * float(m["loss_mask"]), rel=1e-5)


def test_masked_embedding_targets_are_the_slice_features():
    model = _model().train()
    b = _batch()
    torch.manual_seed(3)
    out = model(**b)
    vols = torch.cat(b["pixel_values_volumes"])
    torch.manual_seed(3)  # same BN batch statistics: recompute in train mode on the same batch
    with torch.no_grad():
        feats = model.volume_slice_features(vols)
        mask2 = torch.cat([b["bool_masked_pos"]] * 2)
        pred = model.mask_predictor(model.aggregate(model.mask_tokens(model.slice_projection(feats), mask2)))
    assert pred.shape[-1] == model.slice_feature_dim == 8 + 16
    assert float(out.metrics["loss_mask"]) == pytest.approx(float(masked_embedding_loss(pred, feats, mask2)),
                                                            rel=1e-5)


def _grad_sum(module):
    grads = [p.grad.abs().sum() for p in module.parameters() if p.grad is not None]
    return float(sum(grads)) if grads else 0.0


def test_staged_schedule_follows_the_official_stages():
    model = _model(stage_steps=[2, 2], freeze_prototypes_steps=1, weight_2d=0.5, weight_3d=2.0,
                   weight_mask=3.0).train()
    expected = {0: (1, {"loss_2d"}), 1: (1, {"loss_2d"}), 2: (2, {"loss_mask"}), 3: (2, {"loss_mask"}),
                4: (3, {"loss_3d"}), 5: (3, {"loss_3d"}), 50: (3, {"loss_3d"})}
    weight = {"loss_2d": 0.5, "loss_mask": 3.0, "loss_3d": 2.0}
    for step, (stage, terms) in expected.items():
        model.on_step_end(step, 100)
        assert model.training_stage() == stage
        model.zero_grad()
        bn = model.encoder.embedder.embedder.normalization
        running = bn.running_mean.clone()
        out = model(**_batch(seed=step))
        assert {k for k in out.metrics if k.startswith("loss_")} == terms and float(out.metrics["stage"]) == stage
        term = terms.pop()
        assert float(out.loss) == pytest.approx(weight[term] * float(out.metrics[term]), rel=1e-6)
        out.loss.backward()
        encoder_grad = _grad_sum(model.encoder)
        if stage == 1:  # 2-D SwAV alone: no volume path
            assert encoder_grad > 0 and _grad_sum(model.aggregator) == 0 and _grad_sum(model.prototypes_3d) == 0
            assert (_grad_sum(model.prototypes_2d) > 0) == (step >= 1) and out.embeddings is None
        elif stage == 2:  # masked embedding prediction on the frozen (eval-mode) encoder
            assert encoder_grad == 0 and torch.equal(bn.running_mean, running) and model.encoder.training
            assert _grad_sum(model.aggregator) > 0 and _grad_sum(model.mask_predictor) > 0
            assert _grad_sum(model.slice_projection) > 0 and model.mask_token.grad.abs().sum() > 0
            assert _grad_sum(model.projection_head) == 0 and _grad_sum(model.prototypes_3d) == 0
        else:  # 3-D SwAV end to end; the 3-D prototypes are frozen for the stage's first step
            assert encoder_grad > 0 and _grad_sum(model.aggregator) > 0 and _grad_sum(model.mask_predictor) == 0
            assert (_grad_sum(model.prototypes_3d) > 0) == (step >= 5) and out.embeddings.shape == (4, 32)
    # the stage is read from the persistent step buffer: a reloaded checkpoint resumes in the same stage
    reloaded = Model(model.config)
    reloaded.load_state_dict(model.state_dict())
    assert reloaded.current_step() == 50 and reloaded.training_stage() == 3
    for bad in (dict(stage_steps=[1]), dict(stage_steps=[-1, 2]), dict(stage_steps=[1.5, 2]),
                dict(stage_steps=[2, 0], weight_2d=0.0), dict(stage_steps=[0, 3], weight_mask=0.0),
                dict(stage_steps=[1, 1], weight_3d=0.0)):
        with pytest.raises(ValueError, match="stage_steps"):
            tiny_config("image_volume_clustering", **bad)
    assert tiny_config("image_volume_clustering", stage_steps=[0, 3], weight_2d=0.0).stage_steps == [0, 3]


def test_view_policy_outputs_and_slice_mask():
    cfg = tiny_config("image_volume_clustering", mask_ratio=0.25, num_slices_2d=3)
    policy = ImageVolumeViewsPolicy(cfg)
    from PIL import Image

    rng = np.random.default_rng(0)
    frames = [Image.fromarray((np.random.default_rng(i).random((32, 32)) * 255).astype(np.uint8)) for i in range(32)]
    out = policy(frames, rng)
    v1, v2 = out["pixel_values_volumes"]
    assert v1.shape == v2.shape == (1, D, S, S) and not torch.equal(v1, v2)
    s1, s2 = out["pixel_values"]
    assert s1.shape == s2.shape == (3, 1, S, S)
    assert out["bool_masked_pos"].shape == (D,) and int(out["bool_masked_pos"].sum()) == 2
    idx = policy.sample_slices(32, np.random.default_rng(1))
    assert idx.min() >= int(0.2 * 31) and idx.max() <= int(np.ceil(0.8 * 31))
    again = policy(frames, np.random.default_rng(0))
    assert torch.equal(again["pixel_values_volumes"][0], v1)  # seeded, reproducible


def test_clear_errors_and_config_validation():
    model = _model().eval()
    with pytest.raises(ValueError, match="channels"):
        model.get_input_features(torch.randn(2, 3, D, S, S))
    with pytest.raises(ValueError, match="spatial size"):
        model.get_input_features(torch.randn(2, 1, D + 1, S, S))
    b = _batch()
    with pytest.raises(ValueError, match="slice mask"):
        model(**{**b, "bool_masked_pos": torch.zeros(4, D + 1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="at least one"):
        model(**{**b, "bool_masked_pos": torch.zeros(4, D, dtype=torch.bool)})
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values_volumes=b["pixel_values_volumes"])
    with pytest.raises(ValueError, match="pixel_values_volumes"):
        model()
    for bad in (dict(swav_temperature=0.0), dict(sinkhorn_epsilon=-1.0), dict(mask_ratio=1.0), dict(mask_ratio=0.0),
                dict(slice_features="x"), dict(slice_features="multiscale", backbone_config=TINY_VIT, num_channels=3),
                dict(aggregator_num_heads=3), dict(weight_2d=0.0, weight_3d=0.0, weight_mask=0.0),
                dict(backbone_config="vit3d-micro"), dict(volume_depth=1), dict(num_prototypes=0)):
        with pytest.raises(ValueError):
            tiny_config("image_volume_clustering", **bad)
    paper = ImageVolumeClusteringConfig()
    assert (paper.image_size, paper.volume_depth, paper.aggregator_hidden_size, paper.aggregator_layers,
            paper.aggregator_intermediate_size, paper.num_prototypes, paper.swav_temperature, paper.sinkhorn_epsilon,
            paper.freeze_prototypes_steps, paper.mask_ratio) == (128, 64, 640, 4, 720, 3000, 0.1, 0.05, 313, 0.1)
    assert paper.backbone_config.model_type == "resnet" and paper.backbone_config.hidden_sizes[-1] == 2048


def test_tiny_trainer_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = _model(freeze_prototypes_steps=1)
    ds = SSLViewDataset(load_image_stream(METHOD.default_dataset, split="train", shuffle_buffer=16),
                        build_view_generator(model.config), image_mode=None)
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
                                save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3)
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert int(model.optimizer_step) == 3 and not model.prototypes_frozen()
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    assert int(reloaded.optimizer_step) == 3 and reloaded.current_step() == 3
    x = torch.randn(2, 1, D, S, S)
    assert torch.allclose(model.eval().get_input_features(x), reloaded.get_input_features(x), atol=1e-5)
    enc_dir = model.export_encoder(tmp_path / "enc")
    stock = AutoModel.from_pretrained(enc_dir).eval()
    assert type(stock).__name__ == "ResNetModel"
    slices = model.export_check_input(x)
    with torch.no_grad():
        assert torch.allclose(stock(pixel_values=slices).pooler_output.flatten(1),
                              model.get_input_features(slices), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# DDP: Sinkhorn codes over the global batch -> 2 processes x B/2 == 1 process x B (loss and averaged gradients)
# ---------------------------------------------------------------------------------------------------------------
DDP_B = 4
DDP_VIT = dict(TINY_VIT, num_channels=1)


def _ddp_model():
    torch.manual_seed(0)
    return Model(tiny_config("image_volume_clustering", backbone_config=DDP_VIT, slice_features="pooled",
                             projection_batch_norm=False)).train()


def _ddp_step(model, rows):
    b = _batch(DDP_B, seed=5)
    g = torch.Generator().manual_seed(9)
    mask = torch.rand(DDP_B, D, generator=g).argsort(1) < 2
    out = model(pixel_values_volumes=[v[rows] for v in b["pixel_values_volumes"]],
                pixel_values=[s[rows] for s in b["pixel_values"]], bool_masked_pos=mask[rows])
    model.zero_grad()
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), {k: v for k, v in out.metrics.items()}, grads


def _ddp_worker(rank, world_size, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    per = DDP_B // world_size
    loss, metrics, grads = _ddp_step(_ddp_model(), slice(rank * per, (rank + 1) * per))
    for g in grads.values():  # what DDP does: average gradients over processes
        dist.all_reduce(g)
        g /= world_size
    torch.save({"loss": loss, "metrics": metrics, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_equivalence(tmp_path):
    from ddp_utils import run_distributed

    run_distributed(_ddp_worker, tmp_path, str(tmp_path), world_size=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    loss, metrics, grads = _ddp_step(_ddp_model(), slice(None))
    for key in ("loss_2d", "loss_3d", "loss_mask"):
        assert float((ranks[0]["metrics"][key] + ranks[1]["metrics"][key]) / 2) == pytest.approx(float(metrics[key]),
                                                                                                 abs=1e-5)
    assert torch.allclose((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss, atol=1e-5)
    assert set(ranks[0]["grads"]) == set(grads)
    for n, g in grads.items():
        assert torch.allclose(ranks[0]["grads"][n], g, atol=1e-5, rtol=1e-4), n
        assert torch.allclose(ranks[1]["grads"][n], g, atol=1e-5, rtol=1e-4), n
