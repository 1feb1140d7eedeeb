"""SMTC: semantic-aware slot attention invariants, correspondence map, Hungarian matching, Sinkhorn plan, the three
losses against hand-written references, stop-gradients, EMA, views, built-in multi-object clips, DDP equivalence,
training run, save / load."""

import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.smtc import METHOD, SMTCConfig, SMTCForSelfSupervisedPretraining
from hf_ssl.modeling.smtc.modeling_smtc import (SemanticAwareSlotAttention, hungarian_match_order,
                                                instance_consistency_terms, semantic_consistency_loss, sinkhorn_plan,
                                                slot_diversity_loss, valid_instances)
from hf_ssl.training.data import build_view_generator, materialize_builtin
from ddp_utils import (assert_ddp_matches_single, forward_backward, rank_rows, run_ranks, save_rank,
                       shard_forward_backward)
from tiny_configs import tiny_config
from train_utils import loss_logs, tiny_training_run


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return SMTCForSelfSupervisedPretraining(tiny_config("smtc", **overrides))


def _views(b=4, seed=0, t=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, 3, 32, 32, generator=g) for _ in range(2)]


# -- slot attention ----------------------------------------------------------------------------------
def _slot_attention(seed=0):
    torch.manual_seed(seed)
    sa = SemanticAwareSlotAttention(dim=8, num_slots=3, num_instances=2, iterations=3, hidden_dim=16)
    with torch.no_grad():
        sa.slots_log_sigma.normal_(std=0.1)
    return sa


def test_slot_attention_normalised_over_slots_and_masked_instances():
    sa = _slot_attention()
    x = torch.randn(2, 10, 8)
    out = sa(x)
    torch.testing.assert_close(out["semantic_attention"].sum(dim=1), torch.ones(2, 10))  # softmax over slots
    assert out["semantic_slots"].shape == (2, 3, 8) and out["instance_slots"].shape == (2, 3, 2, 8)
    expected_mask = (out["semantic_logits"].softmax(dim=1) > sa.mask_threshold).float()
    torch.testing.assert_close(out["semantic_mask"], expected_mask)


def test_slot_attention_is_permutation_equivariant_in_the_slot_initialisation():
    sa = _slot_attention()
    x = torch.randn(2, 10, 8)
    noise = torch.randn(2, 3, 2, 8)
    ref = sa(x, noise)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        sa.slots_mu.copy_(sa.slots_mu[:, perm])
        sa.slots_log_sigma.copy_(sa.slots_log_sigma[:, perm])
    got = sa(x, noise[:, perm])
    for key in ("semantic_slots", "semantic_logits", "instance_slots", "semantic_mask"):
        torch.testing.assert_close(got[key], ref[key][:, perm], atol=1e-5, rtol=1e-5)
    # instance slots within a semantic slot are exchangeable too
    ref2 = sa(x, noise)
    got2 = sa(x, noise[:, :, [1, 0]])
    torch.testing.assert_close(got2["instance_slots"], ref2["instance_slots"][:, :, [1, 0]], atol=1e-5, rtol=1e-5)


def test_slot_attention_gradient_reaches_the_gaussians():
    sa = _slot_attention()
    out = sa(torch.randn(2, 10, 8))
    (out["semantic_slots"].sum() + out["instance_slots"].sum()).backward()
    assert sa.slots_mu.grad.abs().sum() > 0 and sa.slots_log_sigma.grad.abs().sum() > 0


# -- correspondence map, matching, transport ------------------------------------------------------
def test_correspondence_map_against_hand_computation():
    model = _model().eval()
    head = model.head
    tokens = torch.randn(1, 3, model.num_tokens, 32)
    captured = {}
    handle = head.slot_attention.register_forward_hook(lambda m, args, out: captured.update(inputs=args[0]))
    head(tokens)
    handle.remove()
    fused = captured["inputs"].unflatten(0, (1, 3))
    w, b = head.correspondence_proj.weight, head.correspondence_proj.bias
    for t in range(3):
        prev = tokens[0, (t - 1) % 3]  # frame 0 looks at the last frame (roll)
        for n in range(0, model.num_tokens, 5):
            corr = torch.stack([tokens[0, t, n] @ prev[m] for m in range(model.num_tokens)])
            torch.testing.assert_close(fused[0, t, n], tokens[0, t, n] + w @ corr + b, atol=1e-4, rtol=1e-4)


def test_hungarian_recovers_a_known_permutation():
    rng = np.random.default_rng(0)
    perm = rng.permutation(5)
    sim = torch.full((5, 5), -0.2) + 0.05 * torch.from_numpy(rng.random((5, 5))).float()
    sim[torch.arange(5), torch.from_numpy(perm)] = 0.9
    order = hungarian_match_order(sim[None, None])[0, 0]
    assert order[:, 0].tolist() == perm.tolist()
    for p in range(5):  # the other columns are exactly the remaining instances (the negatives)
        assert sorted(order[p].tolist()) == list(range(5))
    # a greedy row-wise argmax would pick column 0 twice here; the assignment must stay one-to-one
    tricky = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    assert hungarian_match_order(tricky[None])[0, :, 0].tolist() == [1, 0]


def test_sinkhorn_plan_matches_marginals():
    g = torch.Generator().manual_seed(0)
    mu_s, mu_t = torch.rand(2, 6, generator=g) + 0.1, torch.rand(2, 5, generator=g) + 0.1
    cost = torch.rand(2, 6, 5, generator=g)
    plan = sinkhorn_plan(mu_s, mu_t, cost, epsilon=0.5, iterations=200)
    torch.testing.assert_close(plan.sum(dim=1), mu_t / mu_t.sum(-1, keepdim=True), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plan.sum(dim=2), mu_s / mu_s.sum(-1, keepdim=True), atol=1e-4, rtol=1e-4)
    few = sinkhorn_plan(mu_s, mu_t, cost, epsilon=0.05, iterations=3)  # official setting: columns exact after 3 steps
    torch.testing.assert_close(few.sum(dim=1), mu_t / mu_t.sum(-1, keepdim=True), atol=1e-5, rtol=1e-5)


# -- losses vs hand references -------------------------------------------------------------------
def test_diversity_loss_equals_reference():
    logits = torch.randn(2, 2, 3, 5)
    ref, count = 0.0, 0
    for b, t in itertools.product(range(2), range(2)):
        masks = [F.normalize(logits[b, t].softmax(0)[s] + 1e-8, dim=0) for s in range(3)]
        for s, r in itertools.permutations(range(3), 2):
            ref += float(masks[s] @ masks[r])
            count += 1
    assert slot_diversity_loss(logits).item() == pytest.approx(ref / count, rel=1e-5)


def test_consistency_loss_equals_reference_and_stops_teacher_gradient():
    g = torch.Generator().manual_seed(0)
    s_logits = torch.randn(2, 3, 4, 6, generator=g, requires_grad=True)
    t_logits = torch.randn(2, 3, 4, 6, generator=g, requires_grad=True)
    tokens = torch.randn(2, 3, 6, 5, generator=g, requires_grad=True)
    loss, plans = semantic_consistency_loss(s_logits, t_logits, tokens, 0.05, 3)
    ref, k = 0.0, 0
    unit = F.normalize(tokens.detach(), dim=-1)
    for i, j in itertools.permutations(range(3), 2):
        for b in range(2):
            plan = sinkhorn_plan(unit[b, i].abs().sum(-1)[None], unit[b, j].abs().sum(-1)[None],
                                 (1 - unit[b, i] @ unit[b, j].t())[None], 0.05, 3)[0]
            qs, qt = s_logits[b, i].detach().softmax(0), t_logits[b, j].detach().softmax(0)
            for n, m in itertools.product(range(6), range(6)):
                ref -= float(plan[n, m] * (qt[:, m] * torch.log(qs[:, n] + 1e-8)).sum())
            k += 1
    assert loss.item() == pytest.approx(ref / k, rel=1e-4)
    assert not plans.requires_grad
    loss.backward()
    assert s_logits.grad.abs().sum() > 0
    assert t_logits.grad is None and tokens.grad is None  # the teacher side is a fixed target


def test_instance_loss_equals_brute_force_reference_and_stops_teacher_gradient():
    g = torch.Generator().manual_seed(1)
    emb_s = F.normalize(torch.randn(2, 2, 2, 3, 4, generator=g), dim=-1).requires_grad_(True)
    emb_t = F.normalize(torch.randn(2, 2, 2, 3, 4, generator=g), dim=-1).requires_grad_(True)
    valid_s = (torch.rand(2, 2, 2, 3, generator=g) > 0.3).float()
    valid_t = (torch.rand(2, 2, 2, 3, generator=g) > 0.3).float()
    num, den = instance_consistency_terms(valid_s, valid_t, emb_s, emb_t, margin=0.5)
    ref_num, ref_den = 0.0, 0.0
    for i, j in itertools.product(range(2), range(2)):
        for b, s in itertools.product(range(2), range(2)):
            sim = emb_s[b, i, s].detach() @ emb_t[b, j, s].detach().t()
            best = max(itertools.permutations(range(3)), key=lambda p: sum(float(sim[r, p[r]]) for r in range(3)))
            for p in range(3):
                neg = [max(float(sim[p, q]) - 0.5, 0.0) for q in range(3) if q != best[p]]
                ref_num += float(valid_s[b, i, s, p]) * (np.mean(neg) - float(valid_t[b, j, s, best[p]]) *
                                                         float(sim[p, best[p]]))
            ref_den += float(valid_s[b, i, s].sum())
    assert num.item() == pytest.approx(ref_num, rel=1e-5, abs=1e-6) and den.item() == pytest.approx(ref_den)
    (num / den).backward()
    assert emb_s.grad.abs().sum() > 0 and emb_t.grad is None


def test_valid_instance_filter_thresholds():
    logits = torch.full((1, 1, 2, 10), -10.0)
    logits[0, 0, 0, :5] = 10.0  # slot 0 owns half of the frame, slot 1 the other half
    logits[0, 0, 1, 5:] = 10.0
    logits[0, 0, 1, 5:9] = -10.0  # ... except 4 pixels: slot 1 keeps 1 / 10 of the frame
    logits[0, 0, 0, 5:9] = 10.0
    semantic = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    instance = torch.tensor([[[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]]])
    valid = valid_instances(logits, semantic, instance, 0.3, 0.2, 0.5)
    assert valid[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]  # similar AND large area only


# -- model ---------------------------------------------------------------------------------------
def test_teacher_gets_no_gradient_and_follows_ema():
    model = _model().train()
    out = model(pixel_values_videos=_views())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(("teacher_encoder.",
                                                                                     "teacher_head.")))
    assert model.encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert model.head.correspondence_proj.weight.grad.abs().sum() > 0
    student = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("encoder.", "head."))}
    teacher = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("teacher_")}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith(("encoder.", "head.")):
                p.add_(0.1)
    model.on_step_end(1, 10)
    m = model.config.teacher_momentum
    for n, p in model.named_parameters():
        if n.startswith("teacher_"):
            src = n[len("teacher_"):]
            torch.testing.assert_close(p, m * teacher[n] + (1 - m) * (student[src] + 0.1))
    frozen = _model(ema_teacher_encoder=False)
    before = {n: p.clone() for n, p in frozen.teacher_encoder.named_parameters()}
    with torch.no_grad():
        for p in frozen.encoder.parameters():
            p.add_(0.1)
    frozen.on_step_end(1, 10)
    assert all(torch.equal(p, before[n]) for n, p in frozen.teacher_encoder.named_parameters())


def test_clip_features_are_frame_means_and_export_layout():
    model = _model().eval()
    clips = _views(2)[0]
    per_frame = model.get_input_features(clips.flatten(0, 1)).view(2, 3, -1)
    torch.testing.assert_close(model.get_input_features(clips), per_frame.mean(1))
    assert model.export_check_input(clips).shape == (6, 3, 32, 32)


def test_bad_inputs_and_configs():
    model = _model()
    with pytest.raises(ValueError, match="student_view, teacher_view"):
        model(pixel_values_videos=_views()[:1])
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values_videos=[torch.randn(2, 3, 1, 32, 32)] * 2)
    with pytest.raises(ValueError, match="same shape"):
        model(pixel_values_videos=[torch.randn(2, 3, 3, 32, 32), torch.randn(2, 2, 3, 32, 32)])
    with pytest.raises(ValueError, match="2 frames"):
        model(pixel_values_videos=[torch.randn(2, 1, 3, 32, 32)] * 2)
    for bad in (dict(num_slots=1), dict(num_instances=1), dict(slot_iterations=1), dict(num_frames=1),
                dict(sinkhorn_epsilon=0.0), dict(teacher_momentum=1.5), dict(semantic_mask_threshold=1.0),
                dict(valid_area_threshold=-0.1), dict(diversity_weight=0.0, consistency_weight=0.0,
                                                       instance_weight=0.0),
                dict(backbone_config=dict(model_type="resnet", layer_type="basic", depths=[1], hidden_sizes=[8],
                                          embedding_size=8))):
        with pytest.raises(ValueError):
            tiny_config("smtc", **bad)
    paper = SMTCConfig()
    assert (paper.image_size, paper.num_frames, paper.sampling_rate, paper.num_slots, paper.num_instances,
            paper.slot_iterations, paper.teacher_momentum, paper.sinkhorn_epsilon, paper.negative_margin) == \
        (256, 4, 4, 16, 4, 3, 0.999, 0.05, 0.5)
    assert paper.backbone_config.patch_size == 16 and paper.backbone_config.hidden_size == 384


def test_views_are_pixel_aligned_and_strided():
    config = tiny_config("smtc", augmentation={"color_jitter": 0.0, "grayscale": 0.0, "gaussian_blur": 0.0})
    policy = build_view_generator(config)
    frames = [Image.fromarray(np.full((40, 40, 3), 4 * i, dtype=np.uint8)) for i in range(30)]
    out = policy(frames, np.random.default_rng(0))
    student, teacher = out["pixel_values_videos"]
    assert student.shape == (3, 3, 32, 32) and torch.equal(student, teacher)
    idx = ((student[:, 0, 0, 0] * config.image_std[0] + config.image_mean[0]) * 255 / 4).round().long()
    assert np.all(np.diff(idx.tolist()) == config.sampling_rate)
    jittered = build_view_generator(tiny_config("smtc", augmentation={"color_jitter": 1.0}))(
        frames, np.random.default_rng(0))["pixel_values_videos"]
    assert not torch.equal(jittered[0], jittered[1])  # two independent photometric draws


def test_builtin_moving_digit_pairs_has_two_instances_per_clip():
    from scipy import ndimage

    from hf_ssl.training.video import decode_clip

    root = materialize_builtin("moving_digit_pairs")
    test_counts = [len(os.listdir(os.path.join(root, "test", c))) for c in sorted(os.listdir(os.path.join(root, "test")))]
    assert test_counts == [30] * 10
    path = os.path.join(root, "test", "3", sorted(os.listdir(os.path.join(root, "test", "3")))[0])
    frames = decode_clip(path)
    assert len(frames) == 16 and frames[0].size == (48, 48)
    counts = [ndimage.label(np.asarray(f.convert("L")) > 40)[1] for f in frames]
    assert max(counts) >= 2  # two separate digits are visible in some frame


def test_ddp_two_processes_match_single_process(tmp_path):
    """With the instance-slot draws of both processes fixed, the DDP loss / gradients equal one process."""
    # make the instance draws deterministic and identical per example in both settings
    noise = torch.randn(4, 3, 4, 2, 32, generator=torch.Generator().manual_seed(5))
    torch.save(noise, tmp_path / "noise.pt")  # the workers read it from there
    ranks = run_ranks(_ddp_worker_fixed_noise, tmp_path)
    model = _model(**_DDP_OVERRIDES).train()
    _fix_noise(model, noise)
    out = forward_backward(model, {"pixel_values_videos": _views(4)})
    assert out.metrics["instance_loss"] != 0  # the globally normalised term is exercised
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4, grads_averaged=False)


_DDP_OVERRIDES = dict(semantic_mask_threshold=0.0, valid_area_threshold=0.0, valid_similarity_threshold=-1.0)  # all valid


def _fix_noise(model, noise, rows=slice(None)):
    """Replace the random instance draws by fixed per-example noise `[B, T, S, P, D]` (student and teacher)."""
    for head in (model.head, model.teacher_head):
        original = head.forward

        def forward(tokens, instance_noise=None, _orig=original):
            return _orig(tokens, noise[rows])

        head.forward = forward


def _ddp_worker_fixed_noise(rank, world_size, out_dir):
    noise = torch.load(os.path.join(out_dir, "noise.pt"))
    model = _model(**_DDP_OVERRIDES).train()
    _fix_noise(model, noise, rank_rows(4, rank, world_size))
    out, grads = shard_forward_backward(model, {"pixel_values_videos": _views(4)}, rank, world_size,
                                        average_grads=False)
    save_rank(out_dir, rank, loss=out.loss.detach(), grads=grads)


def test_tiny_training_run_and_save_load(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, load_image_stream

    config = tiny_config("smtc")
    torch.manual_seed(0)
    model = SMTCForSelfSupervisedPretraining(config)
    train = SSLViewDataset(load_image_stream(METHOD.default_dataset, shuffle_buffer=16), build_view_generator(config))
    trainer = tiny_training_run(model, train, tmp_path / "run")
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all("consistency_loss" in h and "instance_loss" in h and "diversity_loss" in h for h in logs)
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = SMTCForSelfSupervisedPretraining.from_pretrained(tmp_path / "ckpt").eval()
    clips = _views(2)[0]
    torch.testing.assert_close(reloaded.get_input_features(clips), model.eval().get_input_features(clips))


# -- object discovery (FG-ARI / mIoU against the data's ground-truth instance masks) --------------
def test_adjusted_rand_index_matches_hand_computation_and_sklearn():
    from sklearn.metrics import adjusted_rand_score

    from hf_ssl.training.object_discovery import adjusted_rand_index

    true, pred = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    # contingency [[2, 1, 0], [0, 1, 2]]: sum C(n_ij, 2) = 2, rows 3 + 3 = 6, cols 1 + 1 + 1 = 3, C(6, 2) = 15
    expected = (2 - 6 * 3 / 15) / (0.5 * (6 + 3) - 6 * 3 / 15)
    assert adjusted_rand_index(true, pred) == pytest.approx(expected) == pytest.approx(adjusted_rand_score(true, pred))
    rng = np.random.default_rng(0)
    for _ in range(10):
        a, b = rng.integers(0, 4, 60), rng.integers(0, 5, 60)
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    assert adjusted_rand_index([3, 3, 3], [7, 7, 7]) == 1.0 == adjusted_rand_score([3, 3, 3], [7, 7, 7])
    assert adjusted_rand_index([1, 2, 1, 2], [5, 6, 5, 6]) == 1.0  # a relabelling is a perfect score


def test_foreground_ari_ignores_background_and_miou_matches_one_to_one():
    from hf_ssl.training.object_discovery import foreground_ari, matched_miou

    truth = np.array([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2]])
    separated = np.array([[5, 9, 3, 3], [9, 5, 4, 4], [5, 5, 4, 4]])  # background wrong, objects separated
    merged = np.array([[0, 0, 3, 3], [0, 0, 3, 3], [0, 0, 3, 3]])  # perfect background, objects merged
    assert foreground_ari(truth, separated) == 1.0
    assert foreground_ari(truth, merged) == pytest.approx(0.0)
    assert foreground_ari(np.zeros((2, 2)), separated[:2, :2]) is None
    # IoU: instance 1 vs segment 3 = 2/2, instance 2 vs segment 4 = 4/4; with the merge both compete for segment 3
    assert matched_miou(truth, separated) == pytest.approx(1.0)
    assert matched_miou(truth, merged) == pytest.approx(max(2 / 6, 4 / 6) / 2)


def test_builtin_masks_ship_with_the_data_and_match_the_ink():
    from hf_ssl.training.moving_digit_pairs import MASK_INK_THRESHOLD, instance_mask_path, load_instance_masks
    from hf_ssl.training.object_discovery import clips_with_masks
    from hf_ssl.training.video import decode_clip

    pairs = clips_with_masks("builtin:moving_digit_pairs", "test")
    assert len(pairs) == 300 and all(os.sep + "masks" + os.sep in m for _, m in pairs)
    both = 0
    for clip, mask in pairs[::37]:
        assert instance_mask_path(clip) == mask
        frames = np.stack([np.asarray(f.convert("L")) for f in decode_clip(clip)])
        ids = load_instance_masks(mask)
        assert ids.shape == frames.shape and set(np.unique(ids)) <= {0, 1, 2}
        assert np.array_equal(ids > 0, frames > MASK_INK_THRESHOLD)  # the masks cover exactly the visible ink
        both += int(all((ids == k).any() for k in (1, 2)))
    assert both >= 7  # both digits visible in (almost) every clip
    root = materialize_builtin("moving_digit_pairs")
    assert not any(f.endswith(".tif") for _, _, fs in os.walk(os.path.join(root, "test")) for f in fs)


def test_predict_instance_masks_is_deterministic_and_follows_the_slots():
    model = _model().eval()
    clips = _views(3)[0]
    ids = model.predict_instance_masks(clips)
    assert ids.shape == (3, 3, 32, 32) and ids.dtype == torch.long
    assert int(ids.max()) < model.config.num_slots * model.config.num_instances
    torch.testing.assert_close(ids, model.predict_instance_masks(clips))
    torch.testing.assert_close(ids[1:2], model.predict_instance_masks(clips[1:2]))  # independent of the batch
    tokens = model.predict_instance_masks(clips, return_tokens=True)
    assert torch.equal(ids[:, :, ::8, ::8], tokens)  # each token's id fills its 8 x 8 patch
    cfg = model.config
    _, feats = model.frame_tokens(clips)
    noise = torch.randn(1, 1, cfg.num_slots, cfg.num_instances, feats.shape[-1],
                        generator=torch.Generator().manual_seed(0)).expand(3, 3, -1, -1, -1)
    out = model.head(feats, noise)
    slot = out["semantic_logits"].softmax(dim=2).argmax(dim=2)
    torch.testing.assert_close(tokens.flatten(2) // cfg.num_instances, slot)
    b, t, n = 1, 2, 5
    s = int(slot[b, t, n])
    assert int(tokens.flatten(2)[b, t, n]) % cfg.num_instances == int(out["instance_logits"][b, t, s, :, n].argmax())


def test_object_discovery_evaluation_against_a_constant_predictor_and_the_model():
    from hf_ssl.training.object_discovery import clips_with_masks, evaluate_object_discovery
    from hf_ssl.training.video import sample_frame_indices

    model = _model()

    class Constant(torch.nn.Module):  # one segment everywhere: FG-ARI 1 on one-object frames, 0 on two-object ones
        config = model.config

        def predict_instance_masks(self, clips):
            return torch.zeros(clips.shape[:2] + clips.shape[-2:], dtype=torch.long)

    Constant.parameters = lambda self: iter([torch.zeros(1)])
    got = evaluate_object_discovery(Constant(), "builtin:moving_digit_pairs", "test", max_clips=20)
    from PIL import Image as _Image

    from hf_ssl.training.object_discovery import _load_masks

    expected = []
    for _, mask in clips_with_masks("builtin:moving_digit_pairs", "test")[:20]:
        pages = _load_masks(mask)
        for i in sample_frame_indices(len(pages), 3, 2, mode="center"):
            small = np.asarray(_Image.fromarray(pages[i]).resize((32, 32), _Image.NEAREST))
            present = [k for k in (1, 2) if (small == k).any()]
            if present:
                expected.append(1.0 if len(present) == 1 else 0.0)
    assert got["fg_ari"] == pytest.approx(np.mean(expected)) and got["num_frames"] == len(expected)
    metrics = model.task_metrics("builtin:moving_digit_pairs", max_clips=8)
    assert set(metrics) == {"fg_ari", "video_fg_ari", "miou", "num_clips", "num_frames"}
    assert -1.0 <= metrics["fg_ari"] <= 1.0 and 0.0 <= metrics["miou"] <= 1.0 and metrics["num_clips"] == 8
    assert model.task_metrics("builtin:digits") == {}  # data without masks: no task metric
    with pytest.raises(ValueError, match="masks"):
        evaluate_object_discovery(model, "builtin:digits")


def test_cli_evaluate_object_discovery(tmp_path, capsys):
    import json

    from hf_ssl.training.cli import main

    model = _model()
    model.save_pretrained(tmp_path / "ckpt")
    METHOD.image_processor_class.from_ssl_config(model.config).save_pretrained(tmp_path / "ckpt")
    assert main(["evaluate", str(tmp_path / "ckpt"), "--dataset", "builtin:moving_digit_pairs",
                 "--object-discovery"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.index("{"):])
    assert {"knn_accuracy", "fg_ari", "video_fg_ari", "miou"} <= set(metrics) and metrics["num_clips"] == 300
