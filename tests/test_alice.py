"""Alice (Jiang et al., ICCV 2023): overlapping 3-D views, EMA-teacher self-distillation, masked voxel modeling and
CAFA cross-attention alignment of the overlap region, on a stock VideoMAE encoder."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_configs import tiny_config

from hf_ssl.modeling.alice import METHOD, AliceConfig, AliceForSelfSupervisedPretraining
from hf_ssl.modeling.alice.modeling_alice import gather_overlap, video_forward_with_mask_token
from hf_ssl.modeling.alice.views_alice import (AliceViewsPolicy, locate_tokens, overlap_token_index,
                                               overlapping_crop_box, token_centers)
from hf_ssl.modeling.backbones import patchify_3d, volume_to_video

N = 8  # tiny config: 16^3 volumes, 8^3 patches -> 2 x 2 x 2 tokens


def _model(**overrides):
    torch.manual_seed(0)
    return AliceForSelfSupervisedPretraining(tiny_config("alice", **overrides))


def _batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    vols = [torch.rand(b, 1, 16, 16, 16, generator=g) for _ in range(2)]
    masks = []
    for _ in range(2):
        order = torch.rand(b, N, generator=g).argsort(1)
        masks.append(order < 6)  # 75% masked
    o12 = torch.tensor([[-1, -1, -1, -1, 4, 5, 6, 7]] * b)
    o21 = torch.tensor([[4, 5, 6, 7, 4, 5, 6, 7]] * b)
    return dict(pixel_values_volumes=vols, bool_masked_pos=masks, overlap_index=[o12, o21])


def test_overlap_index_matches_a_hand_example():
    grid = (2, 2, 2)
    a = {"start": (0, 0, 0), "size": (8, 8, 8), "flips": (False, False, False)}
    b = {"start": (4, 0, 0), "size": (4, 8, 8), "flips": (False, False, False)}
    # tokens of a have centres 2 / 6 per axis; b covers depth [4, 8): only a's second depth row is inside, and it
    # lands in b's second depth row (centre 6 -> (6 - 4) / 4 * 2 = 1)
    assert overlap_token_index(a, b, grid).tolist() == [-1, -1, -1, -1, 4, 5, 6, 7]
    # b's token centres along depth are 5 and 7: both inside a's second depth row
    assert overlap_token_index(b, a, grid).tolist() == [4, 5, 6, 7, 4, 5, 6, 7]
    # a flip of b along width swaps b's width index; a flip of a along depth swaps which of a's rows is inside
    b_flip = dict(b, flips=(False, False, True))
    assert overlap_token_index(a, b_flip, grid).tolist() == [-1, -1, -1, -1, 5, 4, 7, 6]
    a_flip = dict(a, flips=(True, False, False))
    assert overlap_token_index(a_flip, b, grid).tolist() == [4, 5, 6, 7, -1, -1, -1, -1]
    assert token_centers(a["start"], a["size"], a_flip["flips"], grid)[0].tolist() == [6.0, 2.0, 2.0]
    assert locate_tokens(np.array([[3.9, 0, 0], [4.0, 7.99, 0]]), b["start"], b["size"], b["flips"], grid).tolist() \
        == [-1, 0 * 4 + 1 * 2 + 0]  # (d, h, w) = (0, 1, 0)
    with pytest.raises(ValueError, match="rotate90"):
        overlap_token_index(dict(a, rot90=1), b, grid)


def test_token_centres_match_the_rendered_views_content():
    """On a linear ramp volume, the mean of every rendered token equals the ramp at the token centre that the overlap
    indexing uses (crop size = view size, so the resize is the identity), flips included."""
    cfg = tiny_config("alice", augmentation={"intensity": 0.0, "flip": 0.5})
    policy = AliceViewsPolicy(cfg)
    z, y, x = np.meshgrid(*[np.arange(32, dtype=np.float32) + 0.5] * 3, indexing="ij")
    ramp = (z + 3 * y + 7 * x)[None] / 500.0
    rng = np.random.default_rng(0)
    for trial in range(6):
        start = tuple(int(s) for s in rng.integers(0, 16, size=3))
        view, params = policy.render(ramp, start, (16, 16, 16), rng)
        token_means = patchify_3d(view[None], (8, 8, 8))[0].mean(-1).numpy()
        c = token_centers(params["start"], params["size"], params["flips"], (2, 2, 2))
        expected = (c[:, 0] + 3 * c[:, 1] + 7 * c[:, 2]) / 500.0
        assert np.allclose(token_means, expected, atol=1e-5), (trial, params["flips"])


def test_second_crop_always_overlaps_the_first():
    rng = np.random.default_rng(3)
    for _ in range(50):
        first = ((int(rng.integers(0, 10)),) * 3, (12, 14, 16))
        start, size = overlapping_crop_box((32, 32, 32), first, (0.1, 0.6), (0.75, 1.33), rng)
        for s, n, s1, n1 in zip(start, size, *first):
            c = s1 + n1 // 2
            assert s <= c < s + n and 0 <= s and s + n <= 32


def test_policy_outputs():
    cfg = tiny_config("alice")
    policy = AliceViewsPolicy(cfg)
    from PIL import Image

    frames = [Image.fromarray((np.random.default_rng(i).random((32, 32)) * 255).astype(np.uint8)) for i in range(32)]
    out = policy(frames, np.random.default_rng(0))
    v1, v2 = out["pixel_values_volumes"]
    assert v1.shape == v2.shape == (1, 16, 16, 16)
    assert [int(m.sum()) for m in out["bool_masked_pos"]] == [6, 6]
    o12, o21 = out["overlap_index"]
    assert o12.shape == (N,) and int((o12 >= 0).sum()) >= 1 and int(o12.max()) < N and int(o21.max()) < N


def test_gather_overlap_pads_and_marks_valid_entries():
    idx = torch.tensor([[-1, 3, -1, 0], [-1, -1, -1, -1], [2, 2, 1, -1]])
    tokens, matches, valid = gather_overlap(idx)
    assert tokens.tolist() == [[1, 3, 0], [0, 0, 0], [0, 1, 2]]
    assert matches.tolist() == [[3, 0, 0], [0, 0, 0], [2, 2, 1]]
    assert valid.tolist() == [[True, True, False], [False, False, False], [True, True, True]]


def test_student_mask_token_hides_masked_patches_and_stock_forward_without_mask():
    model = _model().eval()
    x = torch.rand(2, 1, 16, 16, 16)
    video = volume_to_video(x)
    assert torch.allclose(video_forward_with_mask_token(model.encoder, video, None, None),
                          model.encoder(pixel_values=video).last_hidden_state, atol=1e-6)
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[:, :4] = True  # the first depth row of patches
    y = x.clone()
    y[:, :, :8] = 5.0  # change only the masked patches' voxels
    a = video_forward_with_mask_token(model.encoder, video, mask, model.mask_token)
    b = video_forward_with_mask_token(model.encoder, volume_to_video(y), mask, model.mask_token)
    assert torch.allclose(a, b, atol=1e-6)


def test_mim_loss_only_on_masked_patches():
    model = _model()
    x = torch.rand(2, 1, 16, 16, 16)
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[0, 1] = mask[1, 6] = True
    pred = torch.randn(2, N, 512, requires_grad=True)
    loss = model.mim_loss(pred, x, mask)
    target = patchify_3d(x, (8, 8, 8))
    ref = (((pred[0, 1] - target[0, 1]) ** 2).mean() + ((pred[1, 6] - target[1, 6]) ** 2).mean()) / 2
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    loss.backward()
    assert pred.grad[~mask].abs().sum() == 0 and pred.grad[mask].abs().sum() > 0
    all_model = _model(mim_loss_region="all")
    assert float(all_model.mim_loss(pred, x, mask)) == pytest.approx(float(((pred - target) ** 2).mean()), rel=1e-5)


def test_cafa_loss_equals_hand_reference_and_target_is_constant():
    model = _model().train()
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, N, 32, generator=g).requires_grad_(True)
    online = torch.randn(1, N, 32, generator=g).requires_grad_(True)
    target_kv = torch.randn(1, N, 32, generator=g).requires_grad_(True)
    overlap = torch.tensor([[-1, -1, -1, -1, 4, 5, 6, 7]])
    loss, center_rows, count = model.cafa_loss(q, online, target_kv, overlap, temperature=0.04)
    sel = torch.tensor([4, 5, 6, 7])
    with torch.no_grad():
        tgt = model.cafa(q[:, sel], target_kv[:, sel])
        probs = F.softmax((tgt - model.patch_loss.center) / 0.04, dim=-1)
    on = model.cafa(q[:, sel], online[:, sel])
    ref = torch.sum(-probs * F.log_softmax(on / 0.1, dim=-1), dim=-1).mean()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    assert torch.allclose(center_rows, tgt.mean(1), atol=1e-6) and count.tolist() == [4.0]
    loss.backward()
    assert target_kv.grad is None  # the teacher / target branch is a constant target
    assert online.grad.abs().sum() > 0 and q.grad.abs().sum() > 0
    assert online.grad[0, :4].abs().sum() == 0  # tokens outside the overlap play no part


def test_teacher_gets_no_gradient_and_every_student_part_does():
    model = _model().train()
    out = model(**_batch())
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for n, p in model.named_parameters()
               if n.startswith(("teacher_encoder.", "teacher_head.")))
    for name in ("encoder.embeddings.patch_embeddings.projection.weight", "mask_token", "head.last_layer.weight",
                 "head.last_layer_patch.weight", "cafa.w_q.weight", "decoder.embed.weight", "pixel_head.weight",
                 "decoder_projection.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    m = out.metrics
    assert float(out.loss) == pytest.approx(float(m["loss_global"] + m["loss_cafa"] + 10 * m["loss_mim"]), rel=1e-5)


def test_last_layer_freeze_reaches_both_last_layers(tmp_path):
    """`AliceHead` is a `DINOHead`, so the trainer's `freeze_last_layer_steps` drops the gradients of the global AND
    the patch last layer (official `cancel_gradients_last_layer`: every parameter named `last_layer*`) and nothing
    else; after the freeze they train again."""
    from types import SimpleNamespace

    from hf_ssl.modeling.distillation import DINOHead
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.callbacks import FreezeLastLayerCallback
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = _model().train()
    assert isinstance(model.head, DINOHead)
    model(**_batch()).loss.backward()
    callback, args = FreezeLastLayerCallback(), SimpleNamespace(freeze_last_layer_steps=2)
    callback.on_pre_optimizer_step(args, SimpleNamespace(global_step=2), None, model=model)  # past the freeze
    assert model.head.last_layer.weight.grad is not None and model.head.last_layer_patch.weight.grad is not None
    callback.on_pre_optimizer_step(args, SimpleNamespace(global_step=1), None, model=model)
    assert model.head.last_layer.weight.grad is None and model.head.last_layer_patch.weight.grad is None
    assert model.head.mlp[0].weight.grad.abs().sum() > 0 and model.mask_token.grad.abs().sum() > 0

    model = _model()
    frozen = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    ds = SSLViewDataset(load_image_stream(METHOD.default_dataset, split="train", shuffle_buffer=16),
                        build_view_generator(model.config), image_mode=None)
    targs = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                                 save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3,
                                 freeze_last_layer_steps=2, report_to=[])
    SSLTrainer(model=model, args=targs, train_dataset=ds).train()
    after = dict(model.head.named_parameters())
    assert torch.equal(after["last_layer.weight"], frozen["last_layer.weight"])
    assert torch.equal(after["last_layer_patch.weight"], frozen["last_layer_patch.weight"])
    assert not torch.equal(after["mlp.0.weight"], frozen["mlp.0.weight"])


def test_ema_update_and_schedules():
    model = _model(teacher_momentum=0.9, teacher_temperature_warmup_fraction=0.5).train()
    teacher_before = {n: p.detach().clone() for n, p in model.teacher_encoder.named_parameters()}
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.5)
    student = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    model.on_step_end(2, 10)
    m = 1.0 - (1.0 - 0.9) * (math.cos(math.pi * 2 / 10) + 1) / 2  # cosine 0.9 -> 1
    for n, p in model.teacher_encoder.named_parameters():
        assert torch.allclose(p, m * teacher_before[n] + (1 - m) * student[n], atol=1e-6), n
    # teacher temperature: linear 0.008 -> 0.01 over half of the 10 steps, then constant
    assert model.teacher_temperature() == pytest.approx(0.008 + 0.002 * 2 / 5)
    model.on_step_end(7, 10)
    assert model.teacher_temperature() == pytest.approx(0.01)


def test_centers_follow_the_teacher_outputs():
    model = _model().train()
    batch = _batch()
    out = model(**batch)
    assert model.global_loss.center.abs().sum() > 0 and model.patch_loss.center.abs().sum() > 0
    model.eval()
    before = model.global_loss.center.clone()
    model(**batch)
    assert torch.equal(model.global_loss.center, before)  # no center update in eval mode
    assert torch.isfinite(out.loss)


def test_clear_errors_and_config_validation():
    model = _model().eval()
    b = _batch()
    with pytest.raises(ValueError, match="channels"):
        model.get_input_features(torch.randn(2, 3, 16, 16, 16))
    with pytest.raises(ValueError, match="overlap_index"):
        model(pixel_values_volumes=b["pixel_values_volumes"], bool_masked_pos=b["bool_masked_pos"])
    with pytest.raises(ValueError, match="bool_masked_pos"):
        model(**{**b, "bool_masked_pos": [torch.zeros(2, 5, dtype=torch.bool)] * 2})
    with pytest.raises(ValueError, match="token indices"):
        model(**{**b, "overlap_index": [torch.full((2, N), 9)] * 2})
    with pytest.raises(ValueError, match="pixel_values_volumes"):
        model()
    for bad in (dict(mask_ratio=1.0), dict(student_temperature=0.0), dict(teacher_temperature=-1.0),
                dict(center_momentum=1.0), dict(teacher_momentum=1.5), dict(mim_loss_region="x"),
                dict(augmentation={"rotate90": 0.5}), dict(backbone_config="vit-micro"), dict(decoder_num_heads=3),
                dict(lambda_global=0.0, lambda_cafa=0.0, lambda_mim=0.0)):
        with pytest.raises(ValueError):
            tiny_config("alice", **bad)
    paper = AliceConfig()
    assert (paper.image_size, paper.head_out_dim, paper.patch_out_dim, paper.student_temperature,
            paper.teacher_temperature, paper.warmup_teacher_temperature, paper.teacher_momentum, paper.mask_ratio,
            paper.lambda_mim, paper.cafa_num_heads, paper.cafa_head_dim, paper.cafa_intermediate_size) == \
        (64, 512, 512, 0.1, 0.01, 0.008, 0.996, 0.75, 10.0, 8, 64, 2048)


def test_tiny_trainer_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = _model()
    ds = SSLViewDataset(load_image_stream(METHOD.default_dataset, split="train", shuffle_buffer=16),
                        build_view_generator(model.config), image_mode=None)
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
                                save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3)
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert int(model.optimizer_step) == 3 and int(model.schedule_max_steps) == 3
    assert not torch.equal(model.teacher_encoder.embeddings.patch_embeddings.projection.weight,
                           model.encoder.embeddings.patch_embeddings.projection.weight)  # EMA lags the student
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    assert reloaded.schedule_state() == (3, 3)
    assert torch.equal(reloaded.patch_loss.center, model.patch_loss.center)
    x = torch.rand(2, 1, 16, 16, 16)
    assert torch.allclose(model.eval().get_input_features(x), reloaded.get_input_features(x), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# DDP: the teacher centers are all-reduced -> 2 processes x B/2 == 1 process x B (loss, gradients, centers)
# ---------------------------------------------------------------------------------------------------------------
DDP_B = 4


def _ddp_step(rows):
    model = _model().train()
    b = _batch(DDP_B, seed=7)
    out = model(pixel_values_volumes=[v[rows] for v in b["pixel_values_volumes"]],
                bool_masked_pos=[m[rows] for m in b["bool_masked_pos"]],
                overlap_index=[o[rows] for o in b["overlap_index"]])
    model.zero_grad()
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    centers = (model.global_loss.center.clone(), model.patch_loss.center.clone())
    return out.loss.detach(), grads, centers


def _ddp_worker(rank, world_size, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    per = DDP_B // world_size
    loss, grads, centers = _ddp_step(slice(rank * per, (rank + 1) * per))
    for g in grads.values():
        dist.all_reduce(g)
        g /= world_size
    torch.save({"loss": loss, "grads": grads, "centers": centers}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_equivalence(tmp_path):
    from ddp_utils import run_distributed

    run_distributed(_ddp_worker, tmp_path, str(tmp_path), world_size=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    loss, grads, centers = _ddp_step(slice(None))
    assert torch.allclose((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss, atol=1e-5)
    for r in ranks:
        for got, ref in zip(r["centers"], centers):
            assert torch.allclose(got, ref, atol=1e-6)
        for n, g in grads.items():
            assert torch.allclose(r["grads"][n], g, atol=1e-5, rtol=1e-4), n


def test_features_accept_the_stock_clip_layout_and_match_the_export(tmp_path):
    from transformers import AutoModel

    model = _model().eval()
    x = torch.rand(2, 1, 16, 16, 16)
    same, video = model.export_check_input(x)
    assert same is x and video.shape == (2, 16, 1, 16, 16)
    assert torch.allclose(model.get_input_features(video), model.get_input_features(x), atol=1e-6)
    stock = AutoModel.from_pretrained(model.export_encoder(tmp_path / "enc")).eval()
    assert type(stock).__name__ == "VideoMAEModel"
    with torch.no_grad():
        assert torch.allclose(stock(pixel_values=video).last_hidden_state.mean(1), model.get_input_features(x),
                              atol=1e-5)
