"""DenseCLIP (language-guided segmentation on the CLIP dual encoder): prompted text encoder, score maps, context
decoder, losses, frozen text tower, pasted-segmentation data, loading from a CLIP checkpoint, training, metrics."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.denseclip import (METHOD, DenseCLIPConfig, DenseCLIPForSemanticSegmentation,
                                       segmentation_metrics)
from hf_ssl.modeling.prompting import encode_text_with_prompts
from tiny_configs import TINY_CONFIGS, TINY_VIT, tiny_config
from train_utils import loss_logs, tiny_training_run


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return DenseCLIPForSemanticSegmentation(tiny_config("denseclip", **overrides))


def make_batch(config, n=4, seed=0, split="test"):
    from hf_ssl.training.data import SSLDataCollator, build_view_generator, decode_image, load_image_stream

    policy = build_view_generator(config)
    rng = np.random.default_rng(seed)
    examples = []
    stream = load_image_stream("builtin:digits", split=split, shuffle_buffer=256 if split == "train" else 0, seed=seed)
    for example in stream:
        examples.append(dict(policy(decode_image(example["image"]), rng, example=example), num_skipped=0))
        if len(examples) == n:
            break
    batch = SSLDataCollator()(examples)
    batch.pop("num_skipped")
    return batch


# ----------------------------------------------------------------------------------------------------
# text side: learnable contexts through the (frozen) text encoder
# ----------------------------------------------------------------------------------------------------
def test_prompted_text_encoder_matches_the_spliced_token_sequence():
    model = make_model().eval()
    te = model.text_encoder
    ids, mask = model.class_input_ids, model.class_attention_mask
    plain = te(input_ids=ids, attention_mask=mask).pooler_output
    assert torch.allclose(encode_text_with_prompts(te, ids, mask, None), plain, atol=1e-6)
    # contexts equal to the embeddings of real tokens == the stock forward on the sequence with those tokens
    ctx_ids = torch.tensor([[7, 8, 9, 10]])
    ctx = te.get_input_embeddings()(ctx_ids)
    spliced = torch.cat([ids[:, :1], ctx_ids.expand(len(ids), -1), ids[:, 1:]], dim=1)
    smask = torch.cat([mask[:, :1], torch.ones(len(ids), 4, dtype=torch.long), mask[:, 1:]], dim=1)
    ref = te(input_ids=spliced, attention_mask=smask).pooler_output
    assert torch.allclose(encode_text_with_prompts(te, ids, mask, ctx), ref, atol=1e-5)
    # the class embedding is the projection of that pooled output, with the model's contexts
    with torch.no_grad():
        model.contexts.copy_(ctx)
    assert torch.allclose(model.class_text_embeddings(), model.text_projection(ref), atol=1e-5)


def test_class_names_are_tokenized_into_fixed_length_with_eos():
    model = make_model()
    cfg = model.config
    assert cfg.segmentation_class_names[0] == "background" and len(cfg.segmentation_class_names) == 11
    assert model.class_input_ids.shape == (11, cfg.class_token_length)
    assert (model.class_input_ids[:, 0] == 0).all()  # start token
    assert ((model.class_input_ids == 1).sum(1) == 1).all()  # exactly one end token per class name


# ----------------------------------------------------------------------------------------------------
# score maps and the context decoder
# ----------------------------------------------------------------------------------------------------
def test_score_map_is_cosine_between_dense_pixels_and_context_aware_class_embeddings():
    model = make_model().eval()
    x = make_batch(model.config)["pixel_values"]
    torch.set_grad_enabled(False)
    try:
        _check_score_map(model, x)
    finally:
        torch.set_grad_enabled(True)


def _check_score_map(model, x):
    score, text, feats, pooled = model.compute_score_maps(x)
    out = model.encoder(pixel_values=x, output_hidden_states=True)
    last = out.hidden_states[-1]
    dense = torch.einsum("bchw,dc->bdhw", last, model.visual_projection.weight)
    assert score.shape == (4, 11, *last.shape[-2:])
    # the global embedding of the dual encoder is the mean of the dense embeddings (average pool + linear map)
    assert torch.allclose(dense.mean((2, 3)), model.visual_projection(pooled), atol=1e-5)
    b, k, i, j, c = 1, 3, 0, 1, 5
    v = F.normalize(dense[b, :, i, j], dim=0)
    t = F.normalize(text[b, k], dim=0)
    assert score[b, k, i, j].item() == pytest.approx(float(v @ t), abs=1e-5)
    assert score.abs().max() <= 1 + 1e-5
    # context-aware update: t = t0 + gamma * decoder(t0, [global; dense])
    t0 = model.class_text_embeddings()
    context = torch.cat([model.visual_projection(pooled)[:, None], dense.flatten(2).transpose(1, 2)], dim=1)
    expected = t0[None] + model.gamma * model.context_decoder(t0[None].expand(4, -1, -1), context)
    assert torch.allclose(text, expected, atol=1e-5)
    assert not torch.allclose(text[0], text[1])  # image-specific class embeddings
    assert score[0, c].shape == last.shape[-2:]


def test_gamma_init_and_zero_gamma_gives_plain_prompts():
    model = make_model()
    assert torch.allclose(model.gamma, torch.full_like(model.gamma, 1e-4))
    with torch.no_grad():
        model.gamma.zero_()
    model.eval()
    x = make_batch(model.config, n=2)["pixel_values"]
    _, text, _, _ = model.compute_score_maps(x)
    assert torch.allclose(text, model.class_text_embeddings()[None].expand(2, -1, -1), atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# losses, gradients, freezing
# ----------------------------------------------------------------------------------------------------
def test_loss_is_decode_ce_plus_weighted_score_map_ce_on_labelled_pixels():
    model = make_model().eval()
    batch = make_batch(model.config)
    out = model(**batch)
    y = batch["segmentation_labels"]
    aux = F.interpolate(out.score_map / 0.07, size=y.shape[-2:], mode="bilinear", align_corners=False)
    expected = F.cross_entropy(out.logits, y) + 0.4 * F.cross_entropy(aux, y)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # ignore_index pixels do not count: a single labelled pixel gives the per-pixel cross entropies
    y1 = torch.full_like(y, 255)
    y1[2, 5, 7] = 3
    one = model(pixel_values=batch["pixel_values"], segmentation_labels=y1)
    hand = -F.log_softmax(out.logits[2, :, 5, 7], 0)[3] - 0.4 * F.log_softmax(aux[2, :, 5, 7], 0)[3]
    assert one.loss.item() == pytest.approx(hand.item(), rel=1e-4)


def test_text_encoder_frozen_contexts_and_decoder_learn():
    model = make_model().train()
    model(**make_batch(model.config)).loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("text_encoder.", "text_projection.")):
            assert not p.requires_grad and p.grad is None, name
    assert model.contexts.grad.abs().sum() > 0  # gradients flow through the frozen text tower into the prompts
    assert model.gamma.grad.abs().sum() > 0
    for module in (model.context_decoder, model.neck, model.decode_head, model.encoder, model.visual_projection):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    trainable = make_model(freeze_text_encoder=False).train()
    trainable(**make_batch(trainable.config)).loss.backward()
    assert any(p.grad is not None for p in trainable.text_encoder.parameters())


def test_param_groups_follow_the_official_recipe():
    model = make_model()
    groups = model.param_groups(1e-4, weight_decay=1e-4)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(next(model.encoder.parameters()))]["lr"] == pytest.approx(1e-5)  # backbone x 0.1
    assert by_param[id(model.contexts)]["lr"] == pytest.approx(1e-4)
    assert by_param[id(model.gamma)]["weight_decay"] == 0.0
    assert all(id(p) not in by_param for p in model.text_encoder.parameters())  # frozen: not optimised


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------
def test_pasted_segmentation_marks_the_digit_pixels_with_its_class():
    from hf_ssl.training.data import build_view_generator
    from PIL import Image

    config = tiny_config("denseclip", augmentation={"objects_per_canvas": 1})
    policy = build_view_generator(config)
    digit = np.zeros((20, 20), dtype=np.uint8)
    digit[4:16, 8:12] = 255  # a bright bar ("one")
    out = policy(Image.fromarray(digit).convert("RGB"), np.random.default_rng(0), example={"label": 1})
    y = out["segmentation_labels"]
    assert out["pixel_values"].shape == (3, 32, 32) and y.shape == (32, 32)
    assert set(torch.unique(y).tolist()) == {0, 2}  # background and class 1 + 1 ("one")
    frac = (y == 2).float().mean().item()
    assert 0.02 < frac < 0.3  # the bar covers 12% of its pasted box, the box 16-81% of the canvas
    # the pasted pixels are bright, the background dark
    img = out["pixel_values"] * torch.tensor(config.image_std)[:, None, None] + \
        torch.tensor(config.image_mean)[:, None, None]
    assert img[:, y == 2].mean() > img[:, y == 0].mean() + 0.3


def test_dataset_masks_are_used_with_a_shared_crop():
    from hf_ssl.training.data import build_view_generator
    from PIL import Image

    policy = build_view_generator(tiny_config("denseclip", augmentation={"crop_scale": [1.0, 1.0]}))
    img = np.zeros((40, 40, 3), dtype=np.uint8)
    img[:, 20:] = 255
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[:, 20:] = 4
    mask[0, 0] = 200  # out of range -> ignored
    out = policy(Image.fromarray(img), np.random.default_rng(0), example={"mask": Image.fromarray(mask)})
    y = out["segmentation_labels"]
    assert (y[1:, :15] == 0).all() and (y[:, 17:] == 4).all()  # left half 0, right half class 4
    assert y[0, 0] == 255 and (y == 255).sum() == 1  # the out-of-range id is ignored


# ----------------------------------------------------------------------------------------------------
# from a CLIP checkpoint, bad inputs, ViT encoders
# ----------------------------------------------------------------------------------------------------
def test_from_clip_pretrained_takes_the_dual_encoder_weights(tmp_path):
    from hf_ssl.modeling.clip import CLIPForSelfSupervisedPretraining

    torch.manual_seed(3)
    clip = CLIPForSelfSupervisedPretraining(tiny_config("clip"))
    clip.save_pretrained(tmp_path / "clip")
    model = DenseCLIPForSemanticSegmentation.from_clip_pretrained(
        str(tmp_path / "clip"), segmentation_class_names=["background", "zero", "one"], num_context_tokens=2)
    assert model.config.num_labels_segmentation == 3
    ref = clip.state_dict()
    for key, value in model.state_dict().items():
        if key in ref:
            assert torch.equal(value, ref[key]), key
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    x = make_batch(model.config, n=2)["pixel_values"]
    assert torch.allclose(model.eval().get_image_features(x), clip.eval().get_image_features(x), atol=1e-6)
    out = model(pixel_values=x)
    assert out.logits.shape == (2, 3, 32, 32) and out.loss is None
    model.save_pretrained(tmp_path / "dense")
    again = DenseCLIPForSemanticSegmentation.from_pretrained(tmp_path / "dense").eval()
    assert torch.equal(again.class_input_ids, model.class_input_ids)
    assert torch.allclose(again(pixel_values=x).logits, model.eval()(pixel_values=x).logits, atol=1e-5)
    with pytest.raises(ValueError, match="not an hf_ssl CLIP"):
        sie = hf_ssl.modeling.registry.get_method("sie").model_class(tiny_config("sie"))
        sie.save_pretrained(tmp_path / "sie")
        DenseCLIPForSemanticSegmentation.from_clip_pretrained(str(tmp_path / "sie"))


def test_bad_inputs_and_configs_raise():
    base = TINY_CONFIGS["denseclip"]
    for bad in ({"score_map_temperature": -0.1}, {"num_context_tokens": 14}, {"context_decoder_heads": 3},
                {"segmentation_class_names": ["only"]}, {"ignore_index": 3}, {"decoder_dropout": 1.0},
                {"augmentation": {"paste_scale": [0.5, 1.5]}}, {"class_token_length": 2}):
        with pytest.raises(ValueError):
            DenseCLIPConfig(**{**base, **bad})
    model = make_model()
    batch = make_batch(model.config, n=2)
    with pytest.raises(ValueError, match="segmentation_labels"):
        model(pixel_values=batch["pixel_values"], segmentation_labels=batch["segmentation_labels"][:, :16])
    y = batch["segmentation_labels"].clone()
    y[0, 0, 0] = 50
    with pytest.raises(ValueError, match="class ids"):
        model(pixel_values=batch["pixel_values"], segmentation_labels=y)
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=torch.randn(2, 4, 32, 32))


def test_vit_encoder_builds_a_pyramid():
    model = make_model(backbone_config=TINY_VIT).eval()
    x = torch.randn(2, 3, 32, 32)
    feats, last, pooled = model.multilevel_features(x)
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2] and last.shape[-1] == 4
    out = model(pixel_values=x)
    assert out.logits.shape == (2, 11, 32, 32) and out.score_map.shape == (2, 11, 4, 4)


# ----------------------------------------------------------------------------------------------------
# training and metrics
# ----------------------------------------------------------------------------------------------------
def test_training_reduces_the_loss_and_makes_score_maps_segment():
    model = make_model(seed=1, freeze_text_encoder=False).train()
    batch = make_batch(model.config, n=8, split="train")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = model(**batch)
    first_loss, first_acc = first.loss.item(), first.metrics["score_map_accuracy"].item()
    for _ in range(40):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()
    last = model(**batch)
    assert last.loss.item() < 0.5 * first_loss
    assert last.metrics["score_map_accuracy"].item() > max(0.7, first_acc + 0.3)  # the text classifier segments
    pred = model.predict_segmentation(batch["pixel_values"])
    assert pred.shape == batch["segmentation_labels"].shape
    assert segmentation_metrics(pred, batch["segmentation_labels"], 11)["pixel_accuracy"] > 0.8


def test_segmentation_metrics_hand_case():
    pred = np.array([[0, 0, 1, 1], [2, 2, 2, 0]])
    ref = np.array([[0, 1, 1, 1], [2, 2, 255, 255]])
    got = segmentation_metrics(pred, ref, num_classes=3)
    # class 0: inter 1, union 2 -> 0.5; class 1: inter 2, union 3 -> 2/3; class 2: inter 2, union 2 -> 1
    assert got["mean_iou"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert got["pixel_accuracy"] == pytest.approx(5 / 6)
    assert got["iou_1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        segmentation_metrics(pred, ref[:, :2], num_classes=3)


def test_tiny_trainer_run(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(model.config))
    trainer = tiny_training_run(model, ds, tmp_path, batch_size=8)
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all("identity_loss" in h and "pixel_accuracy" in h for h in logs)


def test_cpu_demo_preset_builds():
    cfg = METHOD.make_config("cpu-demo")
    assert cfg.augmentation["policy"] == "pasted_segmentation" and cfg.image_size == 32
    paper = DenseCLIPConfig()
    assert (paper.num_context_tokens, paper.class_token_length, paper.context_decoder_layers,
            paper.context_decoder_width, paper.identity_loss_weight, paper.score_map_temperature) == (
        8, 5, 3, 256, 0.4, 0.07)
