"""Transitive invariance: transitive closure on a constructed graph, tracking on a constructed clip, the ranking loss
against a hand-written reference, k-means inter edges, 2-process DDP equivalence, training run, clip features."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.transitive_invariance import (METHOD, TransitiveInvarianceConfig,
                                                   TransitiveInvarianceForSelfSupervisedPretraining, track_graph,
                                                   transitive_pair_types, transitive_triplet_loss)
from hf_ssl.modeling.transitive_invariance.modeling_transitive_invariance import INTER, INTRA, NO_EDGE, TRANSITIVE
from hf_ssl.modeling.transitive_invariance.views_transitive_invariance import frames_to_gray, ink_box, track_box
from hf_ssl.training.data import build_view_generator
from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks, save_rank, shard_forward_backward
from tiny_configs import tiny_config
from train_utils import loss_logs, tiny_training_run

W = {"intra": 1.0, "inter": 1.0, "transitive": 1.0}


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return TransitiveInvarianceForSelfSupervisedPretraining(tiny_config("transitive_invariance", **overrides))


def _patches(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)]


def test_transitive_closure_on_constructed_graph():
    # A(0) -intra- A'(1);  A(0) -inter- B(2);  B(2) -intra- B'(3);  B'(3) -inter- C(4);  D(5) isolated
    types = transitive_pair_types(6, [[0, 1], [2, 3]], [[0, 2], [3, 4]])
    assert types[0, 1] == INTRA and types[1, 0] == INTRA and types[2, 3] == INTRA
    assert types[0, 2] == INTER and types[3, 4] == INTER and types[4, 3] == INTER
    assert types[0, 3] == TRANSITIVE  # inter then intra: A ~ B'
    assert types[1, 2] == TRANSITIVE and types[1, 3] == TRANSITIVE  # intra-inter(-intra)
    assert types[0, 4] == TRANSITIVE and types[1, 4] == TRANSITIVE  # multi-hop chains close too
    assert (types[5, :5] == NO_EDGE).all() and (types[:5, 5] == NO_EDGE).all()
    assert (types.diagonal() == -1).all() and torch.equal(types, types.t())
    with pytest.raises(ValueError, match="edge indices"):
        transitive_pair_types(3, [[0, 3]], [])


def test_track_graph_edges_from_clusters():
    labels = torch.tensor([0, 1, 0, 2])
    intra, inter = track_graph(labels)
    assert intra.tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert inter.tolist() == [[0, 2]]
    types = transitive_pair_types(8, intra, inter)
    assert types[0, 2] == INTER
    assert types[0, 6] == TRANSITIVE and types[4, 6] == TRANSITIVE and types[4, 2] == TRANSITIVE
    assert types[0, 1] == NO_EDGE and types[0, 5] == NO_EDGE and types[1, 3] == NO_EDGE


def test_tracking_follows_a_constructed_clip():
    """A textured object moves with known steps (changing direction, partly past a distractor); the tracker must
    recover every position from the pixels alone."""
    rng = np.random.default_rng(0)
    obj = (rng.random((7, 9)) * 155 + 100).astype(np.uint8)
    steps = [(3, 1), (2, 2), (3, 0), (-2, 3), (-3, 2), (0, -3), (2, -2)]
    pos = [(4, 5)]
    for dx, dy in steps:
        pos.append((pos[-1][0] + dx, pos[-1][1] + dy))
    frames = []
    for x, y in pos:
        f = np.zeros((40, 40), dtype=np.uint8)
        f[30:34, 2:6] = 60  # a dim static distractor (below the ink threshold)
        f[y:y + 7, x:x + 9] = obj
        frames.append(Image.fromarray(f).convert("RGB"))
    gray = frames_to_gray(frames)
    init = ink_box(gray[0], 0.35)
    assert init == (4, 5, 9, 7)
    boxes = track_box(gray, init, search_radius=4, template_update=0.1)
    assert [(b[0], b[1]) for b in boxes] == pos
    # the policy cuts the first and the last patch around the tracked boxes
    config = tiny_config("transitive_invariance", num_frames=len(frames), image_size=32,
                         augmentation={"crop_scale": [1.0, 1.0]})
    out = build_view_generator(config)(frames, np.random.default_rng(0))
    first, last = out["pixel_values"]
    assert first.shape == last.shape == (3, 32, 32)
    assert out["track_displacement"] == pytest.approx(np.hypot(pos[-1][0] - pos[0][0], pos[-1][1] - pos[0][1]))
    torch.testing.assert_close(first, last, atol=1e-5, rtol=0)  # same object, same place in its patch


def _reference_loss(anchors, nodes, types, margin, k, weights):
    sums = {"intra": 0.0, "inter": 0.0, "transitive": 0.0}
    counts = dict.fromkeys(sums, 0)
    names = {INTRA: "intra", INTER: "inter", TRANSITIVE: "transitive"}
    for a in range(anchors.shape[0]):
        d = [1.0 - float(anchors[a] @ nodes[m]) for m in range(nodes.shape[0])]
        negs = sorted(d[m] for m in range(nodes.shape[0]) if types[a, m] == NO_EDGE)[:k]
        if not negs:
            continue
        for p in range(nodes.shape[0]):
            t = int(types[a, p])
            if t in names:
                sums[names[t]] += np.mean([max(0.0, d[p] - dn + margin) for dn in negs])
                counts[names[t]] += 1
    parts = {n: sums[n] / counts[n] for n in sums if counts[n]}
    return sum(weights[n] * v for n, v in parts.items()) / sum(weights[n] for n in parts), parts


def test_ranking_loss_equals_hand_written_reference():
    g = torch.Generator().manual_seed(0)
    nodes = F.normalize(torch.randn(10, 6, generator=g), dim=1)
    labels = torch.tensor([0, 0, 1, 2, 1])
    intra, inter = track_graph(labels)
    types = transitive_pair_types(10, intra, inter)
    anchors_idx = torch.tensor([0, 1, 5, 6])
    weights = {"intra": 1.0, "inter": 0.5, "transitive": 2.0}
    for k in (1, 2, 100):
        loss, parts = transitive_triplet_loss(nodes[anchors_idx], nodes, types[anchors_idx], 0.5, k, weights)
        ref, ref_parts = _reference_loss(nodes[anchors_idx], nodes, types[anchors_idx], 0.5, k, weights)
        assert loss.item() == pytest.approx(ref, rel=1e-5)
        assert set(parts) == set(ref_parts) == {"intra", "inter", "transitive"}
        for n in parts:
            assert parts[n].item() == pytest.approx(ref_parts[n], rel=1e-5)


def test_loss_zero_when_positives_closer_than_negatives_by_margin():
    nodes = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])  # instance 0: nodes 0, 2 ...
    types = transitive_pair_types(4, [[0, 1], [2, 3]], [])
    loss, parts = transitive_triplet_loss(nodes, nodes, types, 0.5, 4, W)
    assert loss.item() == 0.0 and set(parts) == {"intra"}
    # tracks pair opposite points: every positive at distance 2, the hardest negative at distance 0
    crossed = transitive_pair_types(4, [[0, 2], [1, 3]], [])
    loss2, _ = transitive_triplet_loss(nodes, nodes, crossed, 0.5, 1, W)
    assert loss2.item() == pytest.approx(2.0 - 0.0 + 0.5)
    loss3, _ = transitive_triplet_loss(nodes, nodes, crossed, 0.5, 4, W)  # both negatives: (2.5 + 0.5) / 2
    assert loss3.item() == pytest.approx(1.5)


def test_inter_edges_start_after_warmup_and_follow_kmeans():
    model = _model(inter_start_step=3).train()
    views = _patches(6)
    out = model(pixel_values=views)
    assert out.metrics["positives_per_anchor"].item() == 1.0  # intra only before inter_start_step
    assert set(k for k in out.metrics if k.endswith("_loss")) == {"intra_loss"}
    model.on_step_end(3, 10)
    assert int(model.step) == 3 and model.inter_edges_active()
    out = model(pixel_values=views)
    z = model.embed(views[0]).detach()
    _, labels = hf_ssl.modeling.losses.kmeans(z, 3, iterations=3, seed=0, spherical=True)  # ceil(6 / 2) clusters
    intra, inter = track_graph(labels)
    expected = transitive_pair_types(12, intra, inter)
    local = torch.cat([torch.arange(6), torch.arange(6) + 6])
    assert torch.equal(out.logits.long(), expected[local])
    assert out.metrics["positives_per_anchor"].item() > 1.0


def test_hard_negative_mining_starts_after_warmup():
    model = _model(hard_negative_start_step=2, num_hard_negatives=1).train()
    views = _patches(6)

    def expected(k):
        z = model.embed(torch.cat(views))
        labels = model.cluster(z[:6])
        types = transitive_pair_types(12, *track_graph(labels))
        return transitive_triplet_loss(z, z, types, model.config.margin, k, W)[0]

    with torch.no_grad():
        assert model(pixel_values=views).loss.item() == pytest.approx(expected(None).item(), rel=1e-5)  # all negatives
        model.on_step_end(2, 10)
        hard = model(pixel_values=views).loss.item()
        assert hard == pytest.approx(expected(1).item(), rel=1e-5) and hard >= expected(None).item()


def test_gradients_reach_every_patch_and_bad_inputs():
    model = _model().train()
    first, last = (v.requires_grad_(True) for v in _patches(4))
    out = model(pixel_values=[first, last])
    out.loss.backward()
    assert first.grad.abs().sum() > 0 and last.grad.abs().sum() > 0
    assert model.encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="first_patches, last_patches"):
        model(pixel_values=_patches()[:1])
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=[torch.randn(2, 1, 32, 32)] * 2)
    with pytest.raises(ValueError, match="same shape"):
        model(pixel_values=[torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)])
    for bad in (dict(margin=0.0), dict(margin=-0.5), dict(num_hard_negatives=0), dict(num_frames=1),
                dict(instances_per_cluster=0), dict(inter_start_step=-1), dict(patch_scale=0.5),
                dict(hard_negative_start_step=-1),
                dict(intra_weight=0.0, inter_weight=0.0, transitive_weight=0.0), dict(ink_threshold=0.0)):
        with pytest.raises(ValueError):
            tiny_config("transitive_invariance", **bad)
    paper = TransitiveInvarianceConfig()
    assert (paper.margin, paper.num_hard_negatives, paper.intra_weight, paper.inter_weight,
            paper.transitive_weight, paper.inter_start_step) == (0.5, 4, 1.0, 1.0, 1.0, 1000)


def test_clip_features_are_mean_of_frame_features():
    model = _model().eval()
    clips = torch.randn(3, 5, 3, 32, 32)
    feats = model.get_input_features(clips)
    frames = torch.stack([model.get_image_features(clips[:, t]) for t in range(5)], 1).mean(1)
    torch.testing.assert_close(feats, frames, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="channel"):
        model.get_input_features(torch.randn(2, 5, 4, 32, 32))
    config = tiny_config("transitive_invariance")
    frames_in = [Image.fromarray(np.full((32, 32, 3), 10 * i, dtype=np.uint8)) for i in range(20)]
    clip = build_view_generator(config, config.augmentation["eval_policy"])(frames_in)["pixel_values"]
    assert clip.shape == (config.num_frames, 3, 32, 32)


def _ddp_worker(rank, world_size, out_dir):
    model = _model(inter_start_step=0).train()
    out, grads = shard_forward_backward(model, {"pixel_values": _patches(8)}, rank, world_size, average_grads=False)
    save_rank(out_dir, rank, loss=out.loss.detach(), grads=grads, types=out.logits)


def test_ddp_two_processes_match_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = _model(inter_start_step=0).train()
    out = forward_backward(model, {"pixel_values": _patches(8)})
    assert out.metrics["positives_per_anchor"].item() > 1.0  # the clustering edges are active
    # each process sees the same global graph (gathered k-means): its rows of the pair-type matrix
    # local rows of process r in the single-process output: its first patches, then its last patches
    rows = [torch.cat([torch.arange(4) + 4 * r, torch.arange(4) + 8 + 4 * r]) for r in range(2)]
    for r in range(2):
        torch.testing.assert_close(ranks[r]["types"], out.logits[rows[r]])
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4, grads_averaged=False)


def test_tiny_training_run(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, load_image_stream

    config = tiny_config("transitive_invariance", inter_start_step=1)
    torch.manual_seed(0)
    model = TransitiveInvarianceForSelfSupervisedPretraining(config)
    train = SSLViewDataset(load_image_stream(METHOD.default_dataset, shuffle_buffer=16), build_view_generator(config))
    trainer = tiny_training_run(model, train, tmp_path / "run")
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert "transitive_loss" in logs[-1] and logs[-1]["track_displacement"] > 0 and int(model.step) == 3
    model.save_pretrained(tmp_path / "saved")
    reloaded = TransitiveInvarianceForSelfSupervisedPretraining.from_pretrained(tmp_path / "saved").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reloaded.get_image_features(x), model.eval().get_image_features(x))
    assert int(reloaded.step) == 3
