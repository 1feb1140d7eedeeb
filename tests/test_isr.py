"""ISR: bipartite association on constructed similarity matrices, reliability weights, the reliability-guided InfoNCE
against a hand-written reference (down to the model's loss), stop-gradients, padded slots, the stand-in detector and
views, DDP equivalence, training run, save / load."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.isr import METHOD, ISRConfig, ISRForSelfSupervisedPretraining
from hf_ssl.modeling.isr.modeling_isr import bipartite_match, match_reliability, reliability_weighted_info_nce
from hf_ssl.modeling.isr.views_isr import detect_instances
from hf_ssl.training.data import build_view_generator
from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks, save_rank, shard_forward_backward
from tiny_configs import tiny_config
from train_utils import loss_logs, tiny_training_run


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return ISRForSelfSupervisedPretraining(tiny_config("isr", **overrides))


def _batch(b=4, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    crops = [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2 * k)]
    mask = torch.ones(b, 2, k, dtype=torch.bool)
    mask[1, 0, 1] = False  # clip 1: one detection in frame A
    mask[2, 1, 1] = False  # clip 2: one detection in frame B
    for f, s in zip(*(~mask).view(b, 2 * k).nonzero(as_tuple=True)):
        crops[int(s)][f] = 0.0  # padded slots hold zeros, as the view policy writes them
    return {"pixel_values": crops, "instance_mask": mask}


# -- association ---------------------------------------------------------------------------------
def test_bipartite_match_recovers_a_known_permutation():
    rng = np.random.default_rng(0)
    perm = rng.permutation(6)
    sim = torch.from_numpy(0.3 * rng.random((6, 6))).float()
    sim[torch.arange(6), torch.from_numpy(perm)] = 0.9 + 0.05 * torch.rand(6)
    rows, cols = bipartite_match(sim)
    assert rows.tolist() == list(range(6)) and cols.tolist() == perm.tolist()
    # greedy row-wise argmax would give both rows column 0; the one-to-one optimum is (0 -> 1, 1 -> 0)
    rows, cols = bipartite_match(torch.tensor([[0.9, 0.8], [0.85, 0.1]]))
    assert cols.tolist() == [1, 0]
    # rectangular (a merged detection in one frame): every row of the smaller side is matched once
    rect = torch.tensor([[0.2, 0.9, 0.1], [0.8, 0.3, 0.7]])
    rows, cols = bipartite_match(rect)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    rows, cols = bipartite_match(rect.t())
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]
    # optimality against brute force on random matrices
    for seed in range(5):
        s = torch.from_numpy(np.random.default_rng(seed).normal(size=(4, 4))).float()
        rows, cols = bipartite_match(s)
        best = max(sum(float(s[i, p[i]]) for i in range(4)) for p in itertools.permutations(range(4)))
        assert float(s[rows, cols].sum()) == pytest.approx(best, abs=1e-6)


def test_reliability_weights():
    s = torch.tensor([[0.9, 0.1], [0.2, 0.85]])
    r = match_reliability(s, [0, 1], [0, 1], temperature=0.1)
    for i, j in ((0, 0), (1, 1)):
        row = math.exp(s[i, j] / 0.1) / sum(math.exp(s[i, q] / 0.1) for q in range(2))
        col = math.exp(s[i, j] / 0.1) / sum(math.exp(s[p, j] / 0.1) for p in range(2))
        assert r[i].item() == pytest.approx(row * col, rel=1e-5)
    # unambiguous association ~1, ambiguous (two look-alikes) ~1/4
    assert match_reliability(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), [0, 1], [0, 1], 0.05).min() > 0.99
    ambiguous = match_reliability(torch.tensor([[0.8, 0.8], [0.8, 0.8]]), [0, 1], [0, 1], 0.05)
    torch.testing.assert_close(ambiguous, torch.full((2,), 0.25))
    # a single candidate on one side (merged detection): only the other side's softmax counts
    single = match_reliability(torch.tensor([[0.7, 0.6]]), [0], [0], 0.1)
    assert single.item() == pytest.approx(1 / (1 + math.exp(-1.0)), rel=1e-5)
    sim_mode = match_reliability(torch.tensor([[0.7, -0.2], [-0.5, -0.3]]), [0, 1], [0, 1], mode="similarity")
    assert sim_mode.tolist() == pytest.approx([0.7, 0.0])
    with pytest.raises(ValueError, match="dual_softmax"):
        match_reliability(s, [0], [0], mode="nope")


def test_reliability_threshold_drops_weak_matches():
    model = _model(reliability_threshold=0.5)
    z = F.normalize(torch.randn(2, 2, 2, 4), dim=-1)
    z[0, 1] = z[0, 0]  # clip 0: frame B = frame A: unambiguous matches
    z[1, 0, 1] = z[1, 0, 0]  # clip 1: two identical instances in frame A: ambiguous
    z[1, 1] = z[1, 0]
    valid = torch.ones(2, 2, 2, dtype=torch.bool)
    anchors, positives, weights, _ = model.associate(z, valid)
    assert anchors.tolist() == [0, 1, 4, 5] and positives.tolist()[:2] == [2, 3]
    assert (weights[:2] > 0.5).all() and (weights[2:] == 0).all()


# -- loss ----------------------------------------------------------------------------------------
def test_info_nce_equals_hand_reference():
    g = torch.Generator().manual_seed(0)
    cand = F.normalize(torch.randn(7, 5, generator=g), dim=-1)
    valid = torch.tensor([1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    a_idx, p_idx, w = torch.tensor([0, 4, 2]), torch.tensor([2, 5, 0]), torch.tensor([0.5, 1.0, 0.25])
    got = reliability_weighted_info_nce(cand[a_idx], cand, valid, a_idx, p_idx, w, 0.1)
    ref = 0.0
    for a, p, wt in zip(a_idx.tolist(), p_idx.tolist(), w.tolist()):
        denom = sum(math.exp(float(cand[a] @ cand[k]) / 0.1) for k in range(7) if k != a and valid[k])
        ref += wt * -(float(cand[a] @ cand[p]) / 0.1 - math.log(denom))
    assert got.item() == pytest.approx(ref, rel=1e-5)


def test_model_loss_equals_hand_reference_and_gradients():
    model = _model().train()
    batch = _batch()
    out = model(**batch)
    b, k = 4, 2
    crops = torch.stack(batch["pixel_values"], 1)  # [B, 2K, C, H, W]
    mask = batch["instance_mask"].view(b, 2 * k)
    with torch.no_grad():
        z = {(c, s): model.embed(crops[c, s][None])[0] for c in range(b) for s in range(2 * k) if mask[c, s]}
    tau, tau_r = model.config.contrastive_temperature, model.config.reliability_temperature
    num, den = 0.0, 0.0
    for c in range(b):
        a = [s for s in range(k) if mask[c, s]]
        bb = [s for s in range(k, 2 * k) if mask[c, s]]
        sim = torch.stack([torch.stack([z[c, i] @ z[c, j] for j in bb]) for i in a])
        if len(a) <= len(bb):
            options = [list(zip(range(len(a)), cb)) for cb in itertools.permutations(range(len(bb)), len(a))]
        else:
            options = [list(zip(ra, range(len(bb)))) for ra in itertools.permutations(range(len(a)), len(bb))]
        pairs = max(options, key=lambda ps: sum(float(sim[i, j]) for i, j in ps))
        for i, j in pairs:
            row = torch.softmax(sim[i] / tau_r, 0)[j]
            col = torch.softmax(sim[:, j] / tau_r, 0)[i]
            r = float(row * col)
            for x, y in ((a[i], bb[j]), (bb[j], a[i])):
                logits = {key: float(z[c, x] @ v) / tau for key, v in z.items() if key != (c, x)}
                lse = math.log(sum(math.exp(v) for v in logits.values()))
                num += r / 2 * (lse - logits[(c, y)])
            den += r
    assert out.loss.item() == pytest.approx(num / den, rel=1e-4)
    out.loss.backward()
    assert model.encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert model.embedding.weight.grad.abs().sum() > 0


def test_padded_slots_are_ignored():
    model = _model().eval()
    batch = _batch()
    ref = model(**batch).loss
    changed = {"pixel_values": [v.clone() for v in batch["pixel_values"]], "instance_mask": batch["instance_mask"]}
    changed["pixel_values"][1][1] = torch.randn(3, 32, 32)  # clip 1, frame A, slot 1 is padding
    assert model(**changed).loss.item() == pytest.approx(ref.item(), rel=1e-6)
    changed["pixel_values"][1][0] = torch.randn(3, 32, 32)  # a real detection: the loss changes
    assert model(**changed).loss.item() != pytest.approx(ref.item(), rel=1e-6)


def test_matching_and_weights_carry_no_gradient():
    model = _model().train()
    batch = _batch()
    captured = {}
    original = model.associate

    def spy(z, valid):
        captured["z_requires_grad"] = z.requires_grad
        result = original(z, valid)
        captured["weights"] = result[2]
        return result

    model.associate = spy
    model(**batch).loss.backward()
    assert captured["z_requires_grad"] is False and not captured["weights"].requires_grad


# -- detector and views --------------------------------------------------------------------------
def test_detector_on_constructed_frames():
    arr = np.zeros((48, 48), dtype=np.uint8)
    arr[5:15, 5:12] = 200  # 70 px
    arr[30:44, 28:40] = 200  # 168 px: the largest first
    arr[0:2, 46:48] = 200  # 4 px: below min_area
    boxes = detect_instances(Image.fromarray(arr).convert("RGB"), min_area=12, max_instances=4, margin=1)
    assert len(boxes) == 2
    (l0, t0, r0, b0), (l1, t1, r1, b1) = boxes
    assert r0 - l0 == b0 - t0 == 16 and l0 <= 28 and r0 >= 40 and t0 <= 30 and b0 >= 44  # square, margin 1
    assert r1 - l1 == b1 - t1 == 12 and l1 <= 5 and r1 >= 12
    assert len(detect_instances(Image.fromarray(arr).convert("RGB"), max_instances=1)) == 1
    assert detect_instances(Image.new("RGB", (48, 40))) == [(0, 0, 48, 40)]  # nothing detected: the whole frame


def test_views_pair_frames_detections_and_padding():
    config = tiny_config("isr", augmentation={"color_jitter": 0.0, "grayscale": 0.0, "horizontal_flip": 0.0,
                                              "crop_scale": [1.0, 1.0]}, min_frame_gap=2, max_frame_gap=3)
    policy = build_view_generator(config)
    std, mean = torch.tensor(config.image_std).view(3, 1, 1), torch.tensor(config.image_mean).view(3, 1, 1)

    def level(crop):  # grey level (0-255) of the crop's centre pixel
        return ((crop * std + mean)[:, 16, 16].mean() * 255).item()

    frames = []
    for t in range(10):
        arr = np.zeros((48, 48, 3), dtype=np.uint8)
        arr[4 + 2 * t:14 + 2 * t, 4:14] = 60 + 10 * t  # one moving square; its brightness encodes the frame index
        frames.append(Image.fromarray(arr))
    gaps = set()
    for seed in range(12):
        out = policy(frames, np.random.default_rng(seed))
        crops, mask = out["pixel_values"], out["instance_mask"]
        assert len(crops) == 4 and mask.tolist() == [[True, False], [True, False]] and not out["synthetic_clip"]
        assert torch.equal(crops[1], torch.zeros(3, 32, 32)) and torch.equal(crops[3], torch.zeros(3, 32, 32))
        gaps.add(round((level(crops[2]) - level(crops[0])) / 10))
    assert gaps == {2, 3}
    two = np.zeros((48, 48, 3), dtype=np.uint8)
    two[2:12, 2:12] = 200
    two[30:44, 30:44] = 100
    out = policy([Image.fromarray(two)] * 6, np.random.default_rng(0))
    assert out["instance_mask"].tolist() == [[True, True], [True, True]]
    assert level(out["pixel_values"][0]) == pytest.approx(100, abs=2)  # the larger detection first
    assert level(out["pixel_values"][1]) == pytest.approx(200, abs=2)


def test_eval_policy_is_deterministic_and_crops_the_largest_instance():
    config = tiny_config("isr")
    policy = build_view_generator(config, "isr_eval")
    arr = np.zeros((48, 48, 3), dtype=np.uint8)
    arr[2:6, 2:6] = 255
    arr[20:40, 10:30] = 128
    frames = [Image.fromarray(arr)] * 3
    a, b = policy(frames)["pixel_values"], policy(frames)["pixel_values"]
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    pix = a * torch.tensor(config.image_std).view(3, 1, 1) + torch.tensor(config.image_mean).view(3, 1, 1)
    assert pix.amax().item() * 255 < 200  # the bright small square is not in the crop of the big one


def test_builtin_clips_give_two_instances_in_most_frames():
    from hf_ssl.training.data import SSLViewDataset, load_image_stream

    config = tiny_config("isr")
    ds = SSLViewDataset(load_image_stream(METHOD.default_dataset, split="test", shuffle_buffer=0),
                        build_view_generator(config))
    masks = []
    for ex in ds:
        masks.append(ex["instance_mask"])
        if len(masks) == 40:
            break
    per_frame = torch.stack(masks).sum(-1).float()
    assert per_frame.min() >= 1 and per_frame.mean() > 1.3  # two digits, sometimes touching (one merged blob)


# -- model ---------------------------------------------------------------------------------------
def test_bad_inputs_and_configs():
    model = _model()
    batch = _batch()
    with pytest.raises(ValueError, match="2K instance-crop"):
        model(pixel_values=batch["pixel_values"][:3], instance_mask=batch["instance_mask"])
    with pytest.raises(ValueError, match="instance_mask"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match=r"\[B, 2, K\]"):
        model(pixel_values=batch["pixel_values"], instance_mask=batch["instance_mask"][:, :1])
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=[torch.randn(4, 1, 32, 32)] * 4, instance_mask=batch["instance_mask"])
    empty = batch["instance_mask"].clone()
    empty[0, 1] = False
    with pytest.raises(ValueError, match="at least one real detection"):
        model(pixel_values=batch["pixel_values"], instance_mask=empty)
    for bad in (dict(contrastive_temperature=0.0), dict(reliability_temperature=-1.0), dict(reliability_threshold=1.0),
                dict(reliability="greedy"), dict(min_frame_gap=0), dict(min_frame_gap=5, max_frame_gap=2),
                dict(max_instances=0), dict(ink_threshold=300), dict(crop_margin=-1), dict(embedding_dim=0)):
        with pytest.raises(ValueError):
            tiny_config("isr", **bad)
    paper = ISRConfig()
    assert (paper.image_size, paper.embedding_dim, paper.backbone_config.model_type, paper.backbone_config.embed_dim,
            paper.backbone_config.depths, paper.backbone_config.window_size) == (224, 512, "swin", 128,
                                                                                [2, 2, 18, 2], 7)


def test_ddp_two_processes_match_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = _model().train()
    out = forward_backward(model, _batch())
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4, grads_averaged=False)
    # the gathered negatives matter: a process alone (no other process's instances) gives another loss
    alone = _model().train()
    half = _batch()
    local = {"pixel_values": [v[:2] for v in half["pixel_values"]], "instance_mask": half["instance_mask"][:2]}
    assert alone(**local).loss.item() != pytest.approx(ranks[0]["loss"].item(), rel=1e-4)


def _ddp_worker(rank, world_size, out_dir):
    out, grads = shard_forward_backward(_model().train(), _batch(), rank, world_size, average_grads=False)
    save_rank(out_dir, rank, loss=out.loss.detach(), grads=grads)


def test_tiny_training_run_and_save_load(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, load_image_stream

    config = tiny_config("isr")
    torch.manual_seed(0)
    model = ISRForSelfSupervisedPretraining(config)
    train = SSLViewDataset(load_image_stream(METHOD.default_dataset, shuffle_buffer=16), build_view_generator(config))
    trainer = tiny_training_run(model, train, tmp_path / "run")
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all("mean_reliability" in h and "positive_pairs_per_clip" in h for h in logs)
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = ISRForSelfSupervisedPretraining.from_pretrained(tmp_path / "ckpt").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reloaded.get_image_features(x), model.eval().get_image_features(x))
    reid = reloaded.get_reid_features(x)
    torch.testing.assert_close(reid.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(reid, model.get_reid_features(x))
