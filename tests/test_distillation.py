"""Shared self-distillation core: hand-computed loss, centering formula, head normalisation, DDP center."""

import math

import pytest
import torch
import torch.nn.functional as F

from ddp_utils import run_distributed
from hf_ssl.modeling.distillation import DINOHead, NormalizedLinear, SelfDistillationLoss


def test_loss_matches_hand_computation_and_skips_same_view():
    torch.manual_seed(0)
    loss_fn = SelfDistillationLoss(out_dim=4, student_temperature=0.5).train()
    s = [torch.randn(3, 4) for _ in range(3)]  # 2 global + 1 local student views
    t = [torch.randn(3, 4) for _ in range(2)]
    loss = loss_fn(s, t, teacher_temperature=0.25)
    expected, pairs = 0.0, 0
    for i in range(2):
        q = F.softmax(t[i] / 0.25, dim=-1)  # center is zero before the first update
        for v in range(3):
            if v != i:
                expected += (-(q * F.log_softmax(s[v] / 0.5, dim=-1)).sum(-1)).mean()
                pairs += 1
    assert pairs == 4
    assert torch.allclose(loss, expected / pairs)


def test_center_update_formula_and_no_update_in_eval():
    loss_fn = SelfDistillationLoss(out_dim=3, center_momentum=0.9).train()
    t = [torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])]
    loss_fn([torch.zeros(2, 3), torch.zeros(2, 3)], t, teacher_temperature=0.1)
    assert torch.allclose(loss_fn.center, 0.1 * torch.tensor([[2.0, 2.0, 2.0]]))
    loss_fn.eval()
    loss_fn([torch.zeros(2, 3), torch.zeros(2, 3)], t, teacher_temperature=0.1)
    assert torch.allclose(loss_fn.center, 0.1 * torch.tensor([[2.0, 2.0, 2.0]]))


def test_centering_and_sharpening_effects():
    loss_fn = SelfDistillationLoss(out_dim=5)
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    sharp = loss_fn.teacher_probabilities(logits, 0.04)
    soft = loss_fn.teacher_probabilities(logits, 1.0)
    entropy = lambda p: -(p * p.clamp_min(1e-12).log()).sum()  # noqa: E731
    assert entropy(sharp) < entropy(soft)  # lower temperature sharpens
    loss_fn.center.copy_(logits)  # centering by the mean output flattens the distribution
    assert torch.allclose(loss_fn.teacher_probabilities(logits, 0.04), torch.full((1, 5), 0.2))
    with torch.enable_grad():
        x = torch.randn(2, 5, requires_grad=True)
        assert not loss_fn.teacher_probabilities(x, 0.1).requires_grad  # teacher targets carry no gradient


def test_dino_head_last_layer_is_weight_normalised():
    head = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=6)
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)
    x = torch.randn(4, 8)
    out = head(x)
    z = F.normalize(head.mlp(x), dim=-1)
    assert torch.allclose(out, z @ F.normalize(head.last_layer.weight, dim=1).t(), atol=1e-6)
    assert out.abs().max() <= 1.0 + 1e-5  # cosine similarities with unit-norm prototypes
    layer = NormalizedLinear(3, 2, learn_scale=True)
    assert layer.scale is not None and layer.scale.shape == (2, 1)


def _ddp_center(rank, world, out_dir):
    torch.manual_seed(0)
    full = torch.randn(8, 6)
    loss_fn = SelfDistillationLoss(out_dim=6).train()
    part = full[rank * 4:(rank + 1) * 4]
    loss_fn([part, part + 1], [part], teacher_temperature=0.1)
    torch.save(loss_fn.center, f"{out_dir}/center{rank}.pt")


def test_center_is_synchronised_across_processes(tmp_path):
    run_distributed(_ddp_center, tmp_path, str(tmp_path))
    torch.manual_seed(0)
    full = torch.randn(8, 6)
    single = SelfDistillationLoss(out_dim=6).train()
    single([full, full + 1], [full], teacher_temperature=0.1)
    for r in range(2):
        assert torch.allclose(torch.load(tmp_path / f"center{r}.pt"), single.center, atol=1e-6)
    assert math.isclose(float(single.center.sum()), float(0.1 * full.mean(0).sum()), rel_tol=1e-5)


def test_last_layer_init_is_official_nn_linear_default():
    """Official DINO builds the weight-normalised last layer after applying its trunc-normal(0.02) init to the MLP, so
    the direction `v` keeps nn.Linear's kaiming-uniform default (row norm ~ 1/sqrt(3) whatever the width). A std-0.02
    init (row norm 0.02 * sqrt(in_dim)) made every optimizer step turn the prototypes several times faster."""
    torch.manual_seed(3)
    layer = NormalizedLinear(64, 32)
    torch.manual_seed(3)
    reference = torch.nn.Linear(64, 32, bias=False)
    assert torch.equal(layer.weight, reference.weight)
    # inside a model, post_init must not re-initialise it (the MLP layers do get trunc-normal 0.02)
    from hf_ssl.modeling.cmd import CMDConfig, CMDForSelfSupervisedPretraining

    torch.manual_seed(0)
    model = CMDForSelfSupervisedPretraining(CMDConfig(
        backbone_config=dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, patch_size=8),
        image_size=32, head_out_dim=256, head_hidden_dim=64, head_bottleneck_dim=64, mil_attention_dim=16))
    rows = model.head.last_layer.weight.detach().norm(dim=1)
    assert abs(float(rows.mean()) - 3 ** -0.5) < 0.03  # std-0.02 init would give 0.16
    assert float(model.head.last_layer.weight.abs().max()) <= 64 ** -0.5 + 1e-6
    assert abs(float(model.head.mlp[0].weight.std()) - 0.02) < 0.003
    assert torch.equal(model.teacher_head.last_layer.weight, model.head.last_layer.weight)


def test_last_layer_is_frozen_for_the_first_steps(tmp_path):
    """`SSLTrainingArguments.freeze_last_layer_steps` (official `--freeze_last_layer`): the prototypes of every DINO
    head stay exactly as initialised during the first N optimizer steps while the rest of the student trains, and
    move afterwards."""
    from transformers import TrainerCallback

    from hf_ssl.modeling.cmd import METHOD, CMDForSelfSupervisedPretraining
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    with pytest.raises(ValueError, match="freeze_last_layer_steps"):
        SSLTrainingArguments(output_dir=str(tmp_path / "bad"), freeze_last_layer_steps=-1)
    config = METHOD.make_config("cpu-demo", backbone_config=dict(
        model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        patch_size=8), head_out_dim=32, head_hidden_dim=32, head_bottleneck_dim=16, mil_attention_dim=16)
    torch.manual_seed(0)
    model = CMDForSelfSupervisedPretraining(config)
    watched = {"last": model.head.last_layer.weight, "region_last": model.region_head.last_layer.weight,
               "mlp": model.head.mlp[0].weight}
    snapshots = [{k: v.detach().clone() for k, v in watched.items()}]

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            snapshots.append({k: v.detach().clone() for k, v in watched.items()})

    train = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8,
                                learning_rate=1e-3, weight_decay=0.04, freeze_last_layer_steps=2, logging_steps=1,
                                save_strategy="no", disable_tqdm=True)
    SSLTrainer(model=model, args=args, train_dataset=train, callbacks=[Snapshot()]).train()
    assert len(snapshots) == 4
    for step in (1, 2):  # frozen: not even weight decay touches the prototypes
        assert torch.equal(snapshots[step]["last"], snapshots[0]["last"])
        assert torch.equal(snapshots[step]["region_last"], snapshots[0]["region_last"])
        assert not torch.equal(snapshots[step]["mlp"], snapshots[step - 1]["mlp"])
    assert not torch.equal(snapshots[3]["last"], snapshots[2]["last"])
    assert not torch.equal(snapshots[3]["region_last"], snapshots[2]["region_last"])
