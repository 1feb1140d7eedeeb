"""RSPNet: speed-sampled views, A-VID + RSP losses against a hand-written reference, stop-gradient key encoder, EMA,
queue, 2-process DDP equivalence, training run."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.rspnet import METHOD, RSPNetConfig, RSPNetForSelfSupervisedPretraining
from hf_ssl.modeling.rspnet.modeling_rspnet import rsp_avid_losses
from hf_ssl.training.data import build_view_generator
from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks, save_rank, shard_forward_backward
from tiny_configs import tiny_config
from train_utils import loss_logs, tiny_training_run


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return RSPNetForSelfSupervisedPretraining(tiny_config("rspnet", **overrides))


def _views(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 8, 3, 32, 32, generator=g) for _ in range(3)]


def test_losses_equal_hand_written_reference():
    g = torch.Generator().manual_seed(0)
    q_a, q_m, k_a, k_m, n_a, n_m = [F.normalize(torch.randn(3, 8, generator=g), dim=1) for _ in range(6)]
    queue = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    tau, margin = 0.07, 2.0
    avid, rsp, logits = rsp_avid_losses(q_a, q_m, k_a, k_m, n_a, n_m, queue, tau, margin)
    ref_avid, ref_rsp = 0.0, 0.0
    for i in range(3):
        negs = [float(q_a[i] @ queue[j]) / tau for j in range(5)]
        for pos_key in (k_a[i], n_a[i]):  # both clips of the same video are positives (any speed)
            pos = float(q_a[i] @ pos_key) / tau
            ref_avid += -pos + np.log(np.exp([pos] + negs).sum())
        same, other = float(q_m[i] @ k_m[i]) / tau, float(q_m[i] @ n_m[i]) / tau
        ref_rsp += max(0.0, margin - (same - other))
    assert avid.item() == pytest.approx(ref_avid / 3, rel=1e-5)
    assert rsp.item() == pytest.approx(ref_rsp / 3, rel=1e-5)
    assert logits.shape == (3, 6)


def test_views_sample_speeds_from_one_window():
    """Positive and negative keys come from the same window (one augmentation), at the query's and the other speed."""
    config = tiny_config("rspnet", augmentation={"crop": "none", "color_jitter": 0.0, "grayscale": 0.0,
                                                 "horizontal_flip": 0.0})
    policy = build_view_generator(config)
    frames = [Image.fromarray(np.full((32, 32, 3), 4 * i, dtype=np.uint8)) for i in range(60)]

    def index(clip):  # frame index encoded in the pixel value
        v = (clip[:, 0, 0, 0] * config.image_std[0] + config.image_mean[0]) * 255 / 4
        return v.round().long().tolist()

    seen = set()
    for seed in range(12):
        out = policy(frames, np.random.default_rng(seed))
        q, pos, neg = (index(c) for c in out["pixel_values_videos"])
        speed_q, speed_n = out["clip_speeds"].tolist()
        assert {speed_q, speed_n} == {1, 2} and out["synthetic_clip"] is False
        for clip, speed in ((q, speed_q), (pos, speed_q), (neg, speed_n)):
            assert np.all(np.diff(clip) == speed)  # playback speed = frame stride
        assert pos[0] == neg[0]  # same window, same start
        seen.add(speed_q)
    assert seen == {1, 2}  # both speeds are used for queries


def test_key_encoder_gets_no_gradient_and_follows_ema():
    model = _model().train()
    out = model(pixel_values_videos=_views())
    out.loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(("teacher_encoder.", "teacher_heads.")))
    assert model.encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert model.heads.speed.weight.grad.abs().sum() > 0 and model.heads.appearance.weight.grad.abs().sum() > 0
    student = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    teacher = {n: p.detach().clone() for n, p in model.teacher_encoder.named_parameters()}
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.1)
    model.on_step_end(1, 10)
    m = model.config.teacher_momentum
    for n, p in model.teacher_encoder.named_parameters():
        torch.testing.assert_close(p, m * teacher[n] + (1 - m) * (student[n] + 0.1))


def test_queue_receives_negative_speed_keys_fifo():
    model = _model().train()
    views = _views(4)
    out = model(pixel_values_videos=views)
    n_a, _ = model.keys(views[2])
    torch.testing.assert_close(model.queue[:4], n_a)
    assert int(model.queue_ptr) == 4
    assert out.logits.shape == (4, 1 + 64)
    model.eval()
    model(pixel_values_videos=views)
    assert int(model.queue_ptr) == 4  # evaluation forwards never enqueue


def test_bad_inputs_and_configs():
    model = _model()
    with pytest.raises(ValueError, match="query, positive_key, negative_key"):
        model(pixel_values_videos=_views()[:2])
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values_videos=[torch.randn(2, 8, 1, 32, 32)] * 3)
    for bad in (dict(speeds=[1]), dict(contrastive_temperature=0.0), dict(ranking_margin=-1.0),
                dict(teacher_momentum=1.5), dict(avid_weight=0.0, rsp_weight=0.0)):
        with pytest.raises(ValueError):
            tiny_config("rspnet", **bad)
    paper = RSPNetConfig()
    assert (paper.num_frames, paper.image_size, paper.speeds, paper.queue_size, paper.contrastive_temperature,
            paper.ranking_margin, paper.projection_dim) == (16, 112, [2], 16384, 0.07, 2.0, 128)


def _ddp_worker(rank, world_size, out_dir):
    model = _model().train()
    out, grads = shard_forward_backward(model, {"pixel_values_videos": _views(4)}, rank, world_size,
                                        average_grads=False)
    save_rank(out_dir, rank, loss=out.loss.detach(), grads=grads, queue=model.queue.clone(), ptr=int(model.queue_ptr))


def test_ddp_two_processes_match_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = _model().train()
    out = forward_backward(model, {"pixel_values_videos": _views(4)})
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4, grads_averaged=False)
    for r in ranks:  # every process enqueued the keys of both processes, in rank order
        torch.testing.assert_close(r["queue"], model.queue, atol=1e-5, rtol=1e-4)
        assert r["ptr"] == int(model.queue_ptr) == 4


def test_tiny_training_run(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, load_image_stream

    config = tiny_config("rspnet")
    torch.manual_seed(0)
    model = RSPNetForSelfSupervisedPretraining(config)
    train = SSLViewDataset(load_image_stream(METHOD.default_dataset, shuffle_buffer=16), build_view_generator(config))
    trainer = tiny_training_run(model, train, tmp_path / "run")
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all("rsp_loss" in h and "avid_loss" in h for h in logs) and int(model.queue_ptr) == 12
