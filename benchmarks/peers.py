"""hf_ssl vs lightly, same process, same backbone, same batch, alternating timed rounds.

Run it in a venv that has both packages (lightly needs torchvision, so not the CPU-only project venv):

    python -m venv venv-lightly && venv-lightly/bin/pip install torch==2.14.1 torchvision==0.29.1 lightly
    venv-lightly/bin/pip install -e . && venv-lightly/bin/python benchmarks/peers.py

Both sides use the identical stock transformers encoder module (built from the same config and seed), the
same multi-view batch produced by hf_ssl's view policy from real images, AdamW, and the same head sizes. What is
timed is a full training step: forward, loss, backward, optimizer step and the per-step hook (prototype
normalisation for SwAV). lightly is used the way its documentation examples use it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.backbones import encode, encode_multicrop, feature_dim
from hf_ssl.modeling.registry import get_method

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from throughput import make_batch  # noqa: E402


def _timed(step, steps, warmup):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def _adamw(params, lr):
    return torch.optim.AdamW([q for q in params if q.requires_grad], lr=lr)


COMPILE = [False]  # --compile: torch.compile hf_ssl's modules (what SSLTrainingArguments(torch_compile=True) does)
CHANNELS_LAST = [False]  # --channels-last: what SSLTrainingArguments(channels_last=True) does (weights + 4-D inputs)
BF16 = {"ours": False, "peer": False}  # --bf16 ours|both: torch.autocast(bfloat16) around forward + loss


def _amp(side):
    """The mixed-precision region of one side's step, as SSLTrainingArguments(bf16=True) runs it: forward and loss
    under torch.autocast(bfloat16), float32 weights, backward and optimizer step outside."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if BF16[side] else contextlib.nullcontext()


def _ours_layout(module, views):
    """hf_ssl's side in the memory format SSLTrainer would use (`channels_last`): the module's weights and a copy
    of the 4-D inputs (the peer keeps the contiguous originals)."""
    if not CHANNELS_LAST[0]:
        return module, views
    from hf_ssl.training.trainer import _to_channels_last

    return module.to(memory_format=torch.channels_last), _to_channels_last(views)


def _maybe_compile(module):
    return torch.compile(module) if COMPILE[0] else module


def _ours_step(model, batch, lr):
    """A full hf_ssl training step as SSLTrainer runs it (forward, backward, AdamW, `on_step_end`)."""
    model, batch = _ours_layout(model, dict(batch))
    opt = _adamw(model.parameters(), lr)
    counter = [0]
    forward = _maybe_compile(model)

    def step():
        with _amp("ours"):
            loss = forward(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        counter[0] += 1
        model.on_step_end(counter[0], 10**6)

    return step


def _local_size(image_size):
    return max(8, int(round(image_size * 96 / 224 / 8)) * 8)


def swav_pair(args):
    """SwAV: hf_ssl's SwAV vs lightly's SwaVProjectionHead + SwaVPrototypes + SwaVLoss, identical encoder."""
    from lightly.loss import SwaVLoss
    from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

    spec = get_method("swav")
    config = spec.make_config(None, backbone_config=args.backbone, image_size=args.image_size,
                              augmentation={"local_size": _local_size(args.image_size)}, num_prototypes=300,
                              projection_hidden_dim=512, projection_dim=128)
    batch = make_batch(config, args.batch_size)
    torch.manual_seed(0)
    ours = _ours_step(spec.model_class(config).train(), batch, args.lr)

    torch.manual_seed(0)
    peer_encoder = spec.model_class(config).encoder.train()
    head = SwaVProjectionHead(feature_dim(config.backbone_config), config.projection_hidden_dim, config.projection_dim)
    prototypes = SwaVPrototypes(config.projection_dim, n_prototypes=config.num_prototypes)
    criterion = SwaVLoss(temperature=config.swav_temperature, sinkhorn_iterations=config.sinkhorn_iterations,
                         sinkhorn_epsilon=config.sinkhorn_epsilon)
    popt = _adamw(list(peer_encoder.parameters()) + list(head.parameters()) + list(prototypes.parameters()), args.lr)
    views = batch["pixel_values"]
    n_global = config.augmentation["num_global"]

    def peer_step():
        prototypes.normalize()
        with _amp("peer"):
            outs = [prototypes(F.normalize(head(encode(peer_encoder, v)), dim=1)) for v in views]
            loss = criterion(outs[:n_global], outs[n_global:])
        loss.backward()
        popt.step()
        popt.zero_grad(set_to_none=True)

    return ours, peer_step, len(views)


def moco_pair(args):
    """MoCo v2: hf_ssl's MoCHi with hard-negative mixing switched off (its MoCo v2 base: momentum key encoder,
    shuffle-BN, queue) vs lightly's MoCoProjectionHead + NTXentLoss(memory bank) + batch_shuffle + update_momentum."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum

    spec = get_method("mochi")
    queue = 4096
    config = spec.make_config(None, backbone_config=args.backbone, image_size=args.image_size, queue_size=queue,
                              projection_hidden_dim=512, projection_dim=128, mixing_start_step=10**9)
    batch = make_batch(config, args.batch_size)
    torch.manual_seed(0)
    ours = _ours_step(spec.model_class(config).train(), batch, args.lr)

    torch.manual_seed(0)
    encoder = spec.model_class(config).encoder.train()
    head = MoCoProjectionHead(feature_dim(config.backbone_config), 512, 128)
    key_encoder, key_head = copy.deepcopy(encoder), copy.deepcopy(head)
    deactivate_requires_grad(key_encoder)
    deactivate_requires_grad(key_head)
    criterion = NTXentLoss(temperature=config.contrastive_temperature, memory_bank_size=(queue, 128))
    popt = _adamw(list(encoder.parameters()) + list(head.parameters()), args.lr)
    x_q, x_k = batch["pixel_values"][:2]

    def peer_step():
        update_momentum(encoder, key_encoder, m=config.teacher_momentum)
        update_momentum(head, key_head, m=config.teacher_momentum)
        with _amp("peer"):
            q = head(encode(encoder, x_q))
            with torch.no_grad():
                shuffled, order = batch_shuffle(x_k)
                k = batch_unshuffle(key_head(encode(key_encoder, shuffled)), order)
            loss = criterion(q, k)
        loss.backward()
        popt.step()
        popt.zero_grad(set_to_none=True)

    return ours, peer_step, 2


def simclr_pair(args):
    """SimCLR: hf_ssl's G-SimCLR (NT-Xent + pseudo-label guidance, k-means refresh interval left at its default)
    vs lightly's SimCLRProjectionHead + NTXentLoss with the same head sizes."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    spec = get_method("gsimclr")
    config = spec.make_config(None, backbone_config=args.backbone, image_size=args.image_size)
    batch = make_batch(config, args.batch_size)
    torch.manual_seed(0)
    ours = _ours_step(spec.model_class(config).train(), batch, args.lr)

    torch.manual_seed(0)
    encoder = spec.model_class(config).encoder.train()
    dims = [feature_dim(config.backbone_config)] + list(config.projection_hidden_dims)
    head = SimCLRProjectionHead(dims[0], dims[1], config.projection_dim, num_layers=len(dims))
    criterion = NTXentLoss(temperature=config.contrastive_temperature)
    popt = _adamw(list(encoder.parameters()) + list(head.parameters()), args.lr)
    x0, x1 = batch["pixel_values"][:2]

    def peer_step():
        with _amp("peer"):
            loss = criterion(head(encode(encoder, x0)), head(encode(encoder, x1)))
        loss.backward()
        popt.step()
        popt.zero_grad(set_to_none=True)

    return ours, peer_step, 2


def dino_pair(args):
    """DINO: hf_ssl's shared self-distillation core (DINOHead, SelfDistillationLoss with all-reduced centering,
    EMA teacher via momentum.ema_update_) vs lightly's DINOProjectionHead + DINOLoss + update_momentum, on the
    same multi-crop batch (2 global + local crops) and the same encoder."""
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    from hf_ssl.modeling.distillation import DINOHead, SelfDistillationLoss
    from hf_ssl.modeling.momentum import copy_weights_, ema_update_, freeze_

    out_dim, hidden, bottleneck = 4096, 512, 128
    config = get_method("swav").make_config(None, backbone_config=args.backbone, image_size=args.image_size,
                                            augmentation={"local_size": _local_size(args.image_size)})
    batch = make_batch(config, args.batch_size)
    views = batch["pixel_values"]
    n_global = config.augmentation["num_global"]
    dim = feature_dim(config.backbone_config)

    def build():
        torch.manual_seed(0)
        return get_method("swav").model_class(config).encoder.train()

    student = build()
    s_head = DINOHead(dim, out_dim, hidden_dim=hidden, bottleneck_dim=bottleneck)
    teacher, t_head = build(), DINOHead(dim, out_dim, hidden_dim=hidden, bottleneck_dim=bottleneck)
    copy_weights_(teacher, student)
    copy_weights_(t_head, s_head)
    freeze_(teacher)
    freeze_(t_head)
    criterion = SelfDistillationLoss(out_dim)
    opt = _adamw(list(student.parameters()) + list(s_head.parameters()), args.lr)

    batch_size = views[0].shape[0]
    student, our_views = _ours_layout(student, list(views))
    teacher, _ = _ours_layout(teacher, [])
    c_student, c_teacher = _maybe_compile(student), _maybe_compile(teacher)

    def ours():
        # the multi-crop forward of hf_ssl's DINO-core methods (`backbones.encode_multicrop`, as official DINO's
        # MultiCropWrapper): one encoder call per crop resolution, one head call on all crops
        with _amp("ours"):
            with torch.no_grad():
                t_out = list(t_head(encode_multicrop(c_teacher, our_views[:n_global])).split(batch_size))
            s_out = list(s_head(encode_multicrop(c_student, our_views)).split(batch_size))
            loss = criterion(s_out, t_out, teacher_temperature=0.04)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update_(teacher, student, 0.996)
        ema_update_(t_head, s_head, 0.996)

    p_student = build()
    p_head = DINOProjectionHead(dim, hidden, bottleneck, out_dim)
    p_teacher = copy.deepcopy(p_student)
    p_thead = DINOProjectionHead(dim, hidden, bottleneck, out_dim)  # weight_norm modules cannot be deep-copied
    p_thead.load_state_dict(p_head.state_dict())
    deactivate_requires_grad(p_teacher)
    deactivate_requires_grad(p_thead)
    p_criterion = DINOLoss(output_dim=out_dim)
    popt = _adamw(list(p_student.parameters()) + list(p_head.parameters()), args.lr)

    def peer_step():
        with _amp("peer"):
            with torch.no_grad():
                t_out = [p_thead(encode(p_teacher, v)) for v in views[:n_global]]
            s_out = [p_head(encode(p_student, v)) for v in views]
            loss = p_criterion(t_out, s_out, epoch=0)
        loss.backward()
        popt.step()
        popt.zero_grad(set_to_none=True)
        update_momentum(p_student, p_teacher, m=0.996)
        update_momentum(p_head, p_thead, m=0.996)

    return ours, peer_step, len(views)


def mae_encoder_pair(args):
    """MAE-style masked encoding (the part CAE / CropMAE / UMD / FSFM share): hf_ssl's visible-token forward on a
    stock transformers ViTModel (`backbones.vit_forward_visible`, 75% of patches dropped before the encoder) vs
    lightly's MaskedVisionTransformerTorchvision on a torchvision VisionTransformer of identical size, same mask,
    forward + backward + AdamW. (Different ViT implementations by necessity: lightly's MAE wraps torchvision/timm.)"""
    from lightly.models.modules import MaskedVisionTransformerTorchvision
    from torchvision.models.vision_transformer import VisionTransformer

    from hf_ssl.modeling.backbones import build_backbone, resolve_backbone_config, vit_forward_visible, vit_grid

    vit_cfg = resolve_backbone_config(args.vit_backbone, "vit-micro", image_size=args.image_size, num_channels=3)
    grid = vit_grid(vit_cfg)
    n = grid[0] * grid[1]
    keep = n - int(round(0.75 * n))
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    visible = torch.argsort(torch.rand(args.batch_size, n), dim=1)[:, :keep].sort(dim=1).values
    ours_vit = build_backbone(vit_cfg).train()
    opt = _adamw(ours_vit.parameters(), args.lr)
    forward_visible = _maybe_compile(vit_forward_visible)

    def ours():
        with _amp("ours"):
            loss = forward_visible(ours_vit, x, visible).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    tv = VisionTransformer(image_size=args.image_size, patch_size=vit_cfg.patch_size,
                           num_layers=vit_cfg.num_hidden_layers, num_heads=vit_cfg.num_attention_heads,
                           hidden_dim=vit_cfg.hidden_size, mlp_dim=vit_cfg.intermediate_size)
    peer = MaskedVisionTransformerTorchvision(vit=tv).train()
    popt = _adamw(peer.parameters(), args.lr)
    idx_keep = torch.cat([torch.zeros(args.batch_size, 1, dtype=torch.long), visible + 1], dim=1)  # + class token

    def peer_step():
        with _amp("peer"):
            loss = peer.encode(images=x, idx_keep=idx_keep).float().pow(2).mean()
        loss.backward()
        popt.step()
        popt.zero_grad(set_to_none=True)

    return ours, peer_step, 1


PAIRS = {"swav": swav_pair, "moco": moco_pair, "simclr": simclr_pair, "dino": dino_pair, "mae_encoder": mae_encoder_pair}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="*", default=sorted(PAIRS))
    p.add_argument("--backbone", default="resnet-18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--vit-backbone", default="vit-micro", help="ViT preset for the mae_encoder pair")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--compile", action="store_true", help="torch.compile hf_ssl's side (lightly stays eager, as its "
                   "examples run); warm-up steps absorb compilation")
    p.add_argument("--channels-last", action="store_true", help="hf_ssl's ConvNet side in channels-last memory "
                   "format, as SSLTrainingArguments(channels_last=True) trains it (lightly's examples stay contiguous)")
    p.add_argument("--bf16", choices=["ours", "both"], help="bfloat16 autocast around forward + loss (what "
                   "SSLTrainingArguments(bf16=True) does) on hf_ssl's side only ('ours': lightly as its examples run, "
                   "float32) or on both sides ('both'); needs a CPU with bfloat16 instructions (avx512_bf16 / AMX) or a "
                   "GPU to pay off")
    p.add_argument("--json")
    args = p.parse_args(argv)
    COMPILE[0] = args.compile
    CHANNELS_LAST[0] = args.channels_last
    BF16["ours"] = args.bf16 in ("ours", "both")
    BF16["peer"] = args.bf16 == "both"
    if args.threads:
        torch.set_num_threads(args.threads)
    import lightly

    print(f"torch {torch.__version__} | lightly {lightly.__version__} | threads {torch.get_num_threads()} | "
          f"backbone {args.backbone} | image {args.image_size} | batch {args.batch_size} | compile {args.compile} | "
          f"channels_last {args.channels_last} | bf16 {args.bf16 or 'off'}")
    rows = []
    for name in args.methods:
        ours_step, peer_step, views = PAIRS[name](args)
        ours_rates, peer_rates = [], []
        for _ in range(args.rounds):
            ours_rates.append(args.batch_size * args.steps / _timed(ours_step, args.steps, args.warmup))
            peer_rates.append(args.batch_size * args.steps / _timed(peer_step, args.steps, args.warmup))
        o, q = statistics.median(ours_rates), statistics.median(peer_rates)
        row = {"pair": name, "hf_ssl_images_per_s": round(o, 2), "lightly_images_per_s": round(q, 2),
               "speedup": round(o / q, 3), "views": views, "compiled": args.compile,
               "channels_last": args.channels_last, "bf16": args.bf16 or "off"}
        rows.append(row)
        print(f"{name:12s} hf_ssl {o:8.2f} img/s | lightly {q:8.2f} img/s | hf_ssl/lightly {o / q:5.2f}x", flush=True)
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=2)
    return rows


if __name__ == "__main__":
    main()
