"""CrossVideoMAE: view construction (two augmentations of one window + a frame of it), loss = reconstruction +
intra-modal + cross-modal terms (checked against the branch pieces), frozen image branch, 2-process DDP
equivalence of the gathered NT-Xent terms, training run."""

import numpy as np
import pytest
import torch
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.crossvideomae import CrossVideoMAEConfig, CrossVideoMAEForSelfSupervisedPretraining, METHOD
from hf_ssl.modeling.crossvideomae.modeling_crossvideomae import pair_top1
from hf_ssl.modeling.losses import nt_xent
from hf_ssl.modeling.masking import random_mask_torch, tube_mask_torch
from hf_ssl.training.data import build_view_generator
from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks, save_rank, shard_forward_backward
from tiny_configs import tiny_config
from train_utils import loss_logs, tiny_training_run


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return CrossVideoMAEForSelfSupervisedPretraining(tiny_config("crossvideomae", **overrides))


def _inputs(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    clips = [torch.randn(b, 8, 3, 32, 32, generator=g) for _ in range(2)]
    masks = [tube_mask_torch(b, (4, 4, 4), 0.75, generator=g) for _ in range(2)]
    frames = torch.randn(b, 3, 32, 32, generator=g)
    image_mask = random_mask_torch(b, 16, 0.75, generator=g)
    return dict(pixel_values_videos=clips, bool_masked_pos=masks, pixel_values=frames, image_mask=image_mask)


def test_views_share_one_window_and_the_frame_comes_from_it():
    config = tiny_config("crossvideomae", augmentation={"crop": "none", "color_jitter": 0.0, "grayscale": 0.0,
                                                        "horizontal_flip": 0.0, "frame_crop_scale": [1.0, 1.0]})
    policy = build_view_generator(config)
    frames = [Image.fromarray(np.full((32, 32, 3), 8 * i, dtype=np.uint8)) for i in range(30)]
    out = policy(frames, np.random.default_rng(0))
    a, b = out["pixel_values_videos"]
    assert torch.equal(a, b)  # the same sampled window (augmentations differ only by their random draws)
    assert any(torch.allclose(out["pixel_values"], a[t], atol=1e-5) for t in range(8))
    m1, m2 = out["bool_masked_pos"]
    assert m1.shape == (64,) and not torch.equal(m1, m2)  # independent tube masks
    assert int(out["image_mask"].sum()) == 12 and out["synthetic_clip"] is False


def test_loss_is_the_sum_of_reconstruction_intra_and_cross_terms():
    model = _model().eval()
    inputs = _inputs()
    out = model(**inputs)
    with torch.no_grad():
        rec1, h1 = model.video_branch(inputs["pixel_values_videos"][0], inputs["bool_masked_pos"][0])
        rec2, h2 = model.video_branch(inputs["pixel_values_videos"][1], inputs["bool_masked_pos"][1])
        rec_img, hf = model.image_branch(inputs["pixel_values"], inputs["image_mask"])
        z1, z2, zf = model.video_projection(h1), model.video_projection(h2), model.image_projection(hf)
        tau = model.config.contrastive_temperature
        intra = nt_xent(z1, z2, tau)
        cross = (nt_xent(z1, zf, tau) + nt_xent(z2, zf, tau)) / 2
        expected = (rec1 + rec2) / 2 + rec_img + intra + cross
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.metrics["cross_modal_loss"].item() == pytest.approx(cross.item(), rel=1e-5)
    assert out.metrics["intra_modal_loss"].item() == pytest.approx(intra.item(), rel=1e-5)
    # logged retrieval accuracy of the pairings: row i of z1 finds row i of z2 (chance 1 / B)
    sim = torch.nn.functional.normalize(z1, dim=1) @ torch.nn.functional.normalize(z2, dim=1).t()
    top1 = (sim.argmax(dim=1) == torch.arange(4)).float().mean()
    assert out.metrics["intra_modal_top1"].item() == pytest.approx(top1.item())
    assert pair_top1(z1, z1).item() == 1.0 and pair_top1(z1, z1.flip(0)).item() == 0.0
    # the image loss covers masked patches only: changing visible-patch pixels changes the encoder input, changing
    # masked-patch pixels changes only the reconstruction target
    frames = inputs["pixel_values"].clone()
    mask = inputs["image_mask"].reshape(4, 4, 4)
    for i, r, c in torch.nonzero(mask).tolist():
        frames[i, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = torch.randn(3, 8, 8)
    with torch.no_grad():
        rec_img2, hf2 = model.image_branch(frames, inputs["image_mask"])
    torch.testing.assert_close(hf, hf2)
    assert abs(rec_img.item() - rec_img2.item()) > 1e-6


def test_gradients_reach_both_encoders_and_cross_term_links_them():
    model = _model().train()
    model(**_inputs()).loss.backward()
    assert model.encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert model.image_encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    # with only the cross-modal term, the video encoder is trained by the frame features and vice versa
    model = _model(intra_weight=0.0, image_reconstruction_weight=0.0).train()
    model.zero_grad()
    model(**_inputs()).loss.backward()  # the frame branch is reached through the cross-modal NT-Xent only
    assert model.image_encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert model.video_projection.layers[0].weight.grad.abs().sum() > 0


def test_frozen_image_encoder_takes_no_gradient():
    model = _model(freeze_image_encoder=True).train()
    out = model(**_inputs())
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.image_encoder.parameters())
    assert "image_reconstruction_loss" not in out.metrics
    assert model.image_projection.layers[0].weight.grad.abs().sum() > 0  # its projection still learns


def test_bad_inputs_and_configs():
    model = _model()
    inputs = _inputs(2)
    with pytest.raises(ValueError, match="pixel_values = the sampled frames|two augmentations"):
        model(pixel_values_videos=inputs["pixel_values_videos"][0], pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="needs pixel_values"):
        model(pixel_values_videos=inputs["pixel_values_videos"])
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values_videos=[torch.randn(2, 8, 4, 32, 32)] * 2, pixel_values=inputs["pixel_values"])
    for bad in (dict(video_mask_ratio=1.0), dict(image_mask_ratio=0.0), dict(contrastive_temperature=-1.0),
                dict(image_backbone_config="resnet-tiny"), dict(cross_weight=-1.0)):
        with pytest.raises(ValueError):
            tiny_config("crossvideomae", **bad)
    paper = CrossVideoMAEConfig()
    assert (paper.video_mask_ratio, paper.image_mask_ratio, paper.backbone_config.hidden_size,
            paper.image_backbone_config.hidden_size, paper.image_backbone_config.patch_size) == (0.9, 0.75, 768, 768, 16)


def _ddp_worker(rank, world_size, out_dir):
    out, grads = shard_forward_backward(_model().eval(), _inputs(4), rank, world_size, average_grads=False)
    save_rank(out_dir, rank, loss=out.loss.detach(), grads=grads)


def test_ddp_two_processes_match_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = _model().eval()
    out = forward_backward(model, _inputs(4))
    # NT-Xent negatives gathered from both processes (with gradient): the averaged loss / gradients equal the
    # single-process ones on the concatenated batch
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4, grads_averaged=False)


def test_tiny_training_run(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, load_image_stream

    config = tiny_config("crossvideomae")
    torch.manual_seed(0)
    model = CrossVideoMAEForSelfSupervisedPretraining(config)
    train = SSLViewDataset(load_image_stream(METHOD.default_dataset, shuffle_buffer=16), build_view_generator(config))
    trainer = tiny_training_run(model, train, tmp_path / "run")
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all("cross_modal_loss" in h and "intra_modal_loss" in h for h in logs)
