"""VideoMAE: tube masking, visible-only encoding, per-tube normalized targets, loss on masked tubes only (against a
hand-written reference), presets, errors, training run and vanilla export."""

import numpy as np
import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.backbones import video_patchify
from hf_ssl.modeling.masking import tube_mask, tube_mask_torch
from hf_ssl.modeling.registry import get_method
from hf_ssl.modeling.video_base import sinusoid_table, video_pixel_targets
from hf_ssl.modeling.videomae import METHOD, SSLVideoMAEConfig, VideoMAEForSelfSupervisedPretraining
from tiny_configs import tiny_config
from train_utils import loss_logs, tiny_training_run


def _model(**overrides):
    torch.manual_seed(0)
    return VideoMAEForSelfSupervisedPretraining(tiny_config("videomae", **overrides)).eval()


def _clips(b=2, seed=0):
    return torch.randn(b, 8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_tube_mask_repeats_one_spatial_mask_over_time():
    m = tube_mask((4, 4, 4), 0.75, rng=np.random.default_rng(0)).reshape(4, 16)
    assert m.sum() == 4 * 12 and all(np.array_equal(m[0], m[t]) for t in range(4))
    mt = tube_mask_torch(3, (4, 4, 4), 0.75).reshape(3, 4, 16)
    assert (mt == mt[:, :1]).all() and (mt.sum((1, 2)) == 48).all()


def test_video_patchify_matches_the_tubelet_embedding_order():
    """Token i of VideoMAE's Conv3d embedding covers the pixels of video_patchify(...)[:, i] (t, h, w order)."""
    model = _model()
    clips = _clips(1)
    conv = model.encoder.embeddings.patch_embeddings.projection
    tubes = video_patchify(clips, 2, 8)  # [1, 64, 2*8*8*3], vectors ordered (t, h, w, c)
    w = conv.weight.permute(0, 2, 3, 4, 1).reshape(conv.weight.shape[0], -1)  # (out, t, h, w, c)
    manual = tubes @ w.t() + conv.bias
    emb = model.encoder.embeddings.patch_embeddings(clips)
    torch.testing.assert_close(emb, manual, atol=1e-4, rtol=1e-4)


def test_normalized_targets_are_per_tube_and_channel():
    cfg = tiny_config("videomae")
    t = video_pixel_targets(_clips(2), cfg.image_mean, cfg.image_std, 2, 8, normalize=True)
    per = t.reshape(2, 64, -1, 3)
    torch.testing.assert_close(per.mean(-2), torch.zeros(2, 64, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(per.std(-2, unbiased=True), torch.ones(2, 64, 3), atol=1e-3, rtol=0)
    raw = video_pixel_targets(_clips(2), cfg.image_mean, cfg.image_std, 2, 8, normalize=False)
    mean = torch.tensor(cfg.image_mean)
    assert raw.reshape(2, 64, -1, 3).mean() == pytest.approx(float((_clips(2) * torch.tensor(cfg.image_std).view(
        1, 1, 3, 1, 1) + mean.view(1, 1, 3, 1, 1)).mean()), abs=1e-4)


def test_loss_equals_hand_written_reference_on_masked_tubes_only():
    model = _model()
    clips = _clips(2)
    mask = tube_mask_torch(2, (4, 4, 4), 0.75, generator=torch.Generator().manual_seed(1))
    out = model(pixel_values_videos=clips, bool_masked_pos=mask)
    cfg = model.config
    # reference: encode visible tokens (pixels of masked tubes never enter), decode, compare masked tubes only
    with torch.no_grad():
        emb = model.encoder.embeddings.patch_embeddings(clips) + sinusoid_table(64, 32).unsqueeze(0)
        visible = torch.stack([emb[i][~mask[i]] for i in range(2)])
        hidden = visible
        for layer in model.encoder.encoder.layer:
            hidden = layer(hidden)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        hidden = model.encoder.layernorm(hidden)
        dec = model.decoder
        x = dec.encoder_to_decoder(hidden)
        pos = sinusoid_table(64, cfg.decoder_hidden_size)
        seqs = [torch.cat([x[i] + pos[~mask[i]], dec.mask_token[0] + pos[mask[i]]]) for i in range(2)]
        y = torch.stack(seqs)
        for block in dec.blocks:
            y = block(y)
        pred = dec.head(dec.norm(y[:, 16:]))
        losses = []
        for i in range(2):
            pix = clips[i] * torch.tensor(cfg.image_std).view(1, 3, 1, 1) + torch.tensor(cfg.image_mean).view(1, 3, 1, 1)
            tubes = []
            for n in torch.nonzero(mask[i]).flatten().tolist():
                t, rem = divmod(n, 16)
                h, w = divmod(rem, 4)
                cube = pix[2 * t:2 * t + 2, :, 8 * h:8 * h + 8, 8 * w:8 * w + 8]  # [2, 3, 8, 8]
                v = cube.permute(0, 2, 3, 1).reshape(-1, 3)  # (t, h, w) x c
                v = (v - v.mean(0)) / (v.std(0, unbiased=True) + 1e-6)
                tubes.append(v.reshape(-1))
            losses.append(((pred[i] - torch.stack(tubes)) ** 2))
        ref = torch.cat(losses).mean()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-4)
    assert out.logits.shape == (2, 48, 2 * 8 * 8 * 3)
    assert out.metrics["mask_fraction"].item() == pytest.approx(0.75)


def test_masked_tube_pixels_never_reach_the_encoder():
    model = _model()
    clips = _clips(2)
    mask = tube_mask_torch(2, (4, 4, 4), 0.75, generator=torch.Generator().manual_seed(2))
    out = model(pixel_values_videos=clips, bool_masked_pos=mask)
    changed = clips.clone()
    m = mask.reshape(2, 4, 4, 4)
    for i in range(2):
        for t, h, w in torch.nonzero(m[i]).tolist():
            changed[i, 2 * t:2 * t + 2, :, 8 * h:8 * h + 8, 8 * w:8 * w + 8] += 3.0 * torch.randn(2, 3, 8, 8)
    out2 = model(pixel_values_videos=changed, bool_masked_pos=mask)
    torch.testing.assert_close(out.embeddings, out2.embeddings)  # visible tokens identical
    torch.testing.assert_close(out.logits, out2.logits)
    # the masked pixels reach the loss only as targets
    assert abs(out.loss.item() - out2.loss.item()) > 1e-6
    t1 = video_pixel_targets(clips, model.config.image_mean, model.config.image_std, 2, 8, normalize=False)
    t2 = video_pixel_targets(changed, model.config.image_mean, model.config.image_std, 2, 8, normalize=False)
    assert torch.equal(t1[~mask], t2[~mask]) and not torch.equal(t1[mask], t2[mask])


def test_gradients_and_generated_mask():
    model = _model().train()
    out = model(pixel_values_videos=_clips(2))
    out.loss.backward()
    assert model.encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert model.decoder.mask_token.grad.abs().sum() > 0
    assert out.logits.shape[1] == 4 * round(16 * 0.75)  # tube mask drawn by the model


def test_bad_inputs_are_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="frames"):
        model(pixel_values_videos=torch.randn(2, 6, 3, 32, 32))
    with pytest.raises(ValueError, match="batch, frames, channels"):
        model(pixel_values_videos=torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        model.get_input_features(torch.randn(2, 8, 1, 32, 32))
    with pytest.raises(ValueError, match="32x32"):
        model(pixel_values_videos=torch.randn(2, 8, 3, 16, 16))
    bad = torch.zeros(2, 64, dtype=torch.bool)
    bad[0, :10] = True
    bad[1, :11] = True
    with pytest.raises(ValueError, match="same number"):
        model(pixel_values_videos=_clips(2), bool_masked_pos=bad)
    with pytest.raises(ValueError):
        SSLVideoMAEConfig(**{**dict(backbone_config="videomae-micro", image_size=32, num_frames=8), "mask_ratio": 1.0})
    with pytest.raises(ValueError, match="tubelet"):
        SSLVideoMAEConfig(backbone_config="videomae-micro", image_size=32, num_frames=7)
    with pytest.raises(ValueError, match="mask_type"):
        SSLVideoMAEConfig(backbone_config="videomae-micro", image_size=32, num_frames=8, mask_type="block")


def test_image_features_as_static_clips():
    model = _model()
    img = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.get_image_features(img),
                               model.get_input_features(img.unsqueeze(1).expand(-1, 8, -1, -1, -1)))


def test_presets_follow_the_papers():
    base = SSLVideoMAEConfig()
    bc = base.backbone_config
    assert (bc.hidden_size, bc.patch_size, bc.tubelet_size, bc.num_frames, base.image_size) == (768, 16, 2, 16, 224)
    assert (base.mask_type, base.mask_ratio, base.decoder_hidden_size, base.decoder_depth) == ("tube", 0.9, 384, 4)
    assert base.norm_pix_loss and base.sampling_rate == 4 and base.augmentation["crop"] == "multiscale"
    child = METHOD.make_config("child-perspective")
    cb = child.backbone_config
    assert (cb.hidden_size, cb.num_hidden_layers, cb.patch_size, cb.tubelet_size) == (1280, 32, 14, 2)
    assert (child.mask_type, child.mask_ratio, child.sampling_rate, child.decoder_hidden_size,
            child.decoder_num_heads, child.norm_pix_loss) == ("random", 0.9, 8, 512, 16, False)
    assert child.token_grid == (8, 16, 16)


def test_tiny_training_run_and_vanilla_export(tmp_path):
    from transformers import VideoMAEModel

    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    config = tiny_config("videomae")
    torch.manual_seed(0)
    model = VideoMAEForSelfSupervisedPretraining(config)
    train = SSLViewDataset(load_image_stream(get_method("videomae").default_dataset, shuffle_buffer=16),
                           build_view_generator(config))
    trainer = tiny_training_run(model, train, tmp_path / "run")
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all(h["synthetic_clip_fraction"] == 0.0 for h in logs)
    model.eval().export_encoder(tmp_path / "enc")
    enc = VideoMAEModel.from_pretrained(tmp_path / "enc").eval()
    x = _clips(2)
    with torch.no_grad():
        torch.testing.assert_close(enc(pixel_values=x).last_hidden_state.mean(1), model.get_input_features(x))
