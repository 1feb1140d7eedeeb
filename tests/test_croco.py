"""CroCo / CroCo v2 invariants on a tiny ViT (CPU, 32 px, 8 px patches -> 16 patches) and a real stereo pair."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.backbones import patchify
from hf_ssl.modeling.croco import METHOD, CroCoConfig, CroCoForSelfSupervisedPretraining
from hf_ssl.modeling.croco.views_croco import apply_homography
from hf_ssl.modeling.heads import RoPE2D, patch_positions
from hf_ssl.modeling.losses import normalized_pixel_targets
from hf_ssl.modeling.masking import random_mask_torch
from hf_ssl.training.data import SSLDataCollator, SSLViewDataset, build_view_generator, decode_image

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)
N = 16


def make_config(**kwargs):
    for k, v in dict(decoder_hidden_size=32, decoder_depth=1, decoder_num_heads=2, image_size=32).items():
        kwargs.setdefault(k, v)
    return CroCoConfig(backbone_config=dict(TINY_VIT), **kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return CroCoForSelfSupervisedPretraining(make_config(**kwargs)).eval()


def pair(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=g), torch.randn(batch, 3, 32, 32, generator=g)]


def fixed_mask(batch=2, masked=14, seed=0):
    return random_mask_torch(batch, N, masked / N, generator=torch.Generator().manual_seed(seed))


def stereo_pair():
    from skimage import data

    left, right, _ = data.stereo_motorcycle()  # Middlebury stereo pair shipped in the scikit-image wheel
    return Image.fromarray(left), Image.fromarray(right)


def test_paper_defaults_and_versions():
    c = CroCoConfig()
    assert (c.mask_ratio, c.decoder_hidden_size, c.decoder_depth, c.decoder_num_heads) == (0.9, 512, 8, 16)
    assert c.position_embedding == "cosine" and c.norm_pix_loss and c.norm_second_image_in_decoder
    assert c.num_masked(196) == 176  # official RandomMask: int(0.9 * 196)
    v2 = METHOD.make_config("v2")
    assert v2.position_embedding == "rope" and v2.rope_base == 100.0 and v2.decoder_hidden_size == 768
    assert make_model(croco_version=2).rope is not None and make_model().rope is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(mask_ratio=0.0), "mask_ratio"),
    (dict(croco_version=3), "croco_version"),
    (dict(croco_version=2, decoder_hidden_size=36, decoder_num_heads=6), "divisible by 4"),
    (dict(backbone_config="resnet-tiny"), "ViT"),
    (dict(augmentation={"pair_source": "stereo"}), "pair_source"),
    (dict(augmentation={"homography_strength": 0.7}), "homography_strength"),
])
def test_nonsense_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        if "backbone_config" in kwargs:
            CroCoConfig(image_size=32, **kwargs)
        else:
            make_config(**kwargs)


def test_view_policy_masks_exact_count_and_flags_synthetic_pairs():
    config = make_config(mask_ratio=0.9)
    policy = build_view_generator(config)
    img = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8"))
    rng = np.random.default_rng(0)
    batch = SSLDataCollator()([policy(img, rng) for _ in range(6)])
    assert batch["bool_masked_pos"].sum(1).tolist() == [14] * 6  # int(0.9 * 16)
    assert batch["synthetic_pair"].tolist() == [1] * 6
    assert [v.shape for v in batch["pixel_values"]] == [(6, 3, 32, 32)] * 2


def test_synthetic_second_view_is_a_homography_of_the_first_crop():
    config = make_config(augmentation={"homography_strength": 0.2, "color_jitter": 0.0})
    policy = build_view_generator(config)
    img = Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype("uint8"))
    first, second, coeffs = policy.synthetic_pair(img, np.random.default_rng(3))
    square = np.array([[0, 0], [32, 0], [32, 32], [0, 32]], dtype=float)
    moved = apply_homography(coeffs, square)
    assert np.abs(moved - square).max() > 0  # corners really moved ...
    # ... and no corner moved by more than strength * side beyond the first crop's own offset
    offsets = moved - square
    spread = offsets - offsets.mean(axis=0)
    assert np.abs(spread).max() <= 2 * 0.2 * 32 + 1e-6
    # strength 0: the second view is exactly the first crop (identity homography up to the crop offset)
    policy0 = build_view_generator(make_config(augmentation={"homography_strength": 0.0, "color_jitter": 0.0}))
    f0, s0, _ = policy0.synthetic_pair(img, np.random.default_rng(3))
    assert np.abs(np.asarray(f0, dtype=int) - np.asarray(s0, dtype=int)).max() <= 1
    # a constant image stays constant through the warp (where the warp stays inside the image)
    flat = Image.new("RGB", (80, 80), (90, 120, 200))
    _, s_flat, _ = build_view_generator(config).synthetic_pair(flat, np.random.default_rng(0))
    centre = np.asarray(s_flat)[8:24, 8:24]
    assert (centre == np.array([90, 120, 200])).all()


def test_loss_only_on_masked_patches_with_normalized_pixel_targets():
    model = make_model()
    views, mask = pair(), fixed_mask()
    out = model(pixel_values=views, bool_masked_pos=mask)
    grad = torch.autograd.grad(out.loss, out.logits)[0]
    assert torch.all(grad[~mask] == 0) and torch.all(grad[mask].abs().sum(-1) > 0)
    target = normalized_pixel_targets(patchify(views[0], 8))
    per_patch = ((out.logits - target) ** 2).mean(-1)
    expected = per_patch[mask].mean()
    torch.testing.assert_close(out.loss, expected)
    # target normalisation: unbiased per-patch variance + 1e-6 (official MaskedMSE)
    p = patchify(views[0], 8)
    manual = (p - p.mean(-1, keepdim=True)) / (p.var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
    torch.testing.assert_close(target, manual)


def test_masked_patches_never_reach_the_encoder_and_the_reference_is_used():
    model = make_model()
    views, mask = pair(), fixed_mask()
    base = model(pixel_values=views, bool_masked_pos=mask).logits
    # overwrite the masked patches of the first image: predictions must not change (targets would)
    patched = views[0].clone()
    pm = mask.view(2, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1).expand_as(patched)
    patched[pm] = 100.0
    same = model(pixel_values=[patched, views[1]], bool_masked_pos=mask).logits
    torch.testing.assert_close(base, same)
    # the reference (second) image feeds the cross-attention: changing it changes the completion
    other = model(pixel_values=[views[0], views[1].flip(-1)], bool_masked_pos=mask).logits
    assert not torch.allclose(base, other)


def test_gradients_reach_encoder_through_both_images():
    model = make_model().train()
    views, mask = pair(), fixed_mask()
    views = [v.requires_grad_(True) for v in views]
    out = model(pixel_values=views, bool_masked_pos=mask)
    g1, g2 = torch.autograd.grad(out.loss, views)
    assert g2.abs().sum() > 0  # siamese encoder on the reference image is trained, no stop-gradient
    # no gradient flows from the loss into masked pixels of the first image except through the (detached) target
    pm = mask.view(2, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1).expand_as(g1)
    assert torch.all(g1[pm] == 0) and g1[~pm].abs().sum() > 0


def test_encoder_positions_are_fixed_sincos_and_frozen():
    from hf_ssl.modeling.backbones import sincos_pos_embed_2d

    model = make_model().train()
    pos = model.encoder.embeddings.position_embeddings
    torch.testing.assert_close(pos[0], sincos_pos_embed_2d(32, 4, 4, cls_token=True).to(pos.dtype))
    assert not pos.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("encoder.embeddings.position"))


def test_rope_2d_is_relative_and_v2_uses_it():
    rope = RoPE2D(100.0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 16, 8, generator=g), torch.randn(1, 2, 16, 8, generator=g)
    pos = patch_positions((4, 4))
    logits = rope(q, pos) @ rope(k, pos).transpose(-1, -2)
    shifted = rope(q, pos + torch.tensor([3, 5])) @ rope(k, pos + torch.tensor([3, 5])).transpose(-1, -2)
    torch.testing.assert_close(logits, shifted, atol=1e-4, rtol=1e-4)  # depends on relative positions only
    torch.testing.assert_close(rope(q, torch.zeros(16, 2, dtype=torch.long)), q)  # position 0 = identity
    assert not torch.allclose(logits, q @ k.transpose(-1, -2))
    # v2 runs its decoder on RoPE (no sin-cos tables are added there)
    model = make_model(croco_version=2)
    views, mask = pair(), fixed_mask()
    out = model(pixel_values=views, bool_masked_pos=mask)
    assert torch.isfinite(out.loss) and out.logits.shape == (2, N, 8 * 8 * 3)


def _stereo_dataset(tmp_path, corrupt: bool = False):
    from datasets import Dataset, Features, Image as ImageFeature

    left, right = stereo_pair()
    rows = {"image": [left.resize((64, 43)), left.resize((80, 54))], "image2": [right.resize((64, 43)),
                                                                                right.resize((80, 54))]}
    ds = Dataset.from_dict(rows, features=Features({"image": ImageFeature(), "image2": ImageFeature()}))
    if corrupt:
        ds = ds.cast_column("image2", ImageFeature(decode=False))
        bad = [{"bytes": b"not an image", "path": "bad.png"}, ds[1]["image2"]]
        ds = Dataset.from_dict({"image": ds.cast_column("image", ImageFeature(decode=False))["image"], "image2": bad},
                               features=Features({"image": ImageFeature(decode=False),
                                                  "image2": ImageFeature(decode=False)}))
    return ds


def test_real_stereo_pair_is_used_and_corrupt_pairs_are_counted(tmp_path):
    config = make_config()
    ds = _stereo_dataset(tmp_path)
    views = SSLViewDataset(ds, build_view_generator(config))
    assert views.pair_key == "image2"
    examples = list(views)
    assert len(examples) == 2 and all(e["synthetic_pair"] is False for e in examples)
    bad = SSLViewDataset(_stereo_dataset(tmp_path, corrupt=True), build_view_generator(config))
    out = list(bad)
    assert len(out) == 1 and out[0]["num_skipped"] == 1
    # pair_source="column" refuses single-image data with a clear error
    from datasets import Dataset, Features, Image as ImageFeature

    single = Dataset.from_dict({"image": [stereo_pair()[0].resize((40, 40))]}, features=Features({"image": ImageFeature()}))
    with pytest.raises(ValueError, match="second image column"):
        SSLViewDataset(single, build_view_generator(make_config(augmentation={"pair_source": "column"})))


def test_tiny_training_run_on_the_stereo_pair(tmp_path):
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.trainer import SSLTrainer

    config = make_config()
    torch.manual_seed(0)
    model = CroCoForSelfSupervisedPretraining(config)
    from datasets import concatenate_datasets

    train = SSLViewDataset(concatenate_datasets([_stereo_dataset(tmp_path)] * 4), build_view_generator(config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=2,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True)
    before = [p.detach().clone() for p in model.decoder_blocks.parameters()]
    trainer = SSLTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(np.isfinite(h["loss"]) for h in logs)
    assert all(h["synthetic_pair_fraction"] == 0.0 for h in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.decoder_blocks.parameters()))
