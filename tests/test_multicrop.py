"""Shared multi-crop forward (backbones.same_resolution_runs / encode_multicrop / map_views_batched): one encoder
call per run of same-size crops gives exactly the per-crop results on a ViT; on a BatchNorm ConvNet the batch
statistics span the run (the official multi-crop behaviour), while eval mode is again per-crop equal."""

import pytest
import torch

from hf_ssl.modeling.backbones import (build_backbone, encode, encode_multicrop, map_views_batched,
                                       resolve_backbone_config, same_resolution_runs)
from tiny_configs import TINY_RESNET, TINY_VIT


def _crops(seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [32, 32, 16, 16, 16, 32]  # globals, locals, then one more global: three runs
    return [torch.randn(3, 3, s, s, generator=g) for s in sizes]


def test_runs_group_consecutive_sizes_only():
    assert same_resolution_runs(_crops()) == [(0, 2), (2, 5), (5, 6)]
    assert same_resolution_runs([]) == []


def test_vit_multicrop_equals_per_crop_calls():
    torch.manual_seed(0)
    vit = build_backbone(resolve_backbone_config(dict(TINY_VIT), "vit-tiny", image_size=32, num_channels=3)).train()
    crops = _crops()
    loop = [encode(vit, c, "cls") for c in crops]
    torch.testing.assert_close(encode_multicrop(vit, crops, "cls"), torch.cat(loop), rtol=1e-5, atol=1e-5)
    groups = encode_multicrop(vit, crops, "cls", concatenate=False)
    assert [g.shape[0] for g in groups] == [6, 9, 3]

    def as_tuple(x):  # tuple and dict outputs are split back per crop
        return encode(vit, x, "cls", return_tokens=True)

    for (pooled, tokens), c, ref in zip(map_views_batched(as_tuple, crops), crops, loop):
        assert pooled.shape[0] == c.shape[0] and tokens.shape[1] == (c.shape[-1] // 8) ** 2 + 1
        torch.testing.assert_close(pooled, ref, rtol=1e-5, atol=1e-5)
    dicts = map_views_batched(lambda x: {"tokens": as_tuple(x)[1]}, crops)
    torch.testing.assert_close(dicts[3]["tokens"], as_tuple(crops[3])[1], rtol=1e-5, atol=1e-5)


def test_batchnorm_statistics_span_the_run_in_training_only():
    torch.manual_seed(0)
    net = build_backbone(resolve_backbone_config(dict(TINY_RESNET), "resnet-tiny", image_size=32, num_channels=3))
    crops = _crops()[:2]
    net.train()
    joint = encode_multicrop(net, crops, "cls")
    separate = torch.cat([encode(net, c, "cls") for c in crops])
    assert not torch.allclose(joint, separate, atol=1e-4)  # training BN: joint statistics over both crops
    net.eval()
    torch.testing.assert_close(encode_multicrop(net, crops, "cls"),
                               torch.cat([encode(net, c, "cls") for c in crops]), rtol=1e-4, atol=1e-5)
