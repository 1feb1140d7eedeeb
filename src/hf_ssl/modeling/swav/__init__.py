"""SwAV: Unsupervised Learning of Visual Features by Contrasting Cluster Assignments.

Mathilde Caron, Ishan Misra, Julien Mairal, Priya Goyal, Piotr Bojanowski, Armand Joulin. NeurIPS 2020
(arXiv:2006.09882). Official code: https://github.com/facebookresearch/swav (`main_swav.py`, `src/resnet50.py`,
`src/multicropdataset.py`); also VISSL (`configs/config/pretrain/swav/`).

Method (as in the official `main_swav.py`):

* Multi-crop: 2 global crops (224 px, scale 0.14-1) + 6 local crops (96 px, scale 0.05-0.14), each with flip,
  colour jitter (0.8, 0.8, 0.8, 0.2) w.p. 0.8, grayscale w.p. 0.2, Gaussian blur w.p. 0.5 (`default_augmentation`).
  Crops of one resolution go through the encoder in one call; the projection head sees all crops at once.
* Projection head Linear(D, 2048)-BN-ReLU-Linear(2048, 128), output L2-normalized; K = 3000 prototypes (a bias-free
  linear layer) kept on the unit sphere.
* Codes: for each crop in `crops_for_assign` ([0, 1]), `q = Sinkhorn-Knopp(exp(scores / eps))` with eps = 0.05 and
  3 iterations, computed without gradient, with the equipartition over the global batch of all processes
  (`losses.sinkhorn_knopp`, all_reduce).
* Swapped prediction: for each assigned crop s, `sum_{v != s} -mean_b sum_k q_s log softmax(scores_v / 0.1)`
  divided by (V - 1), then averaged over the assigned crops.
* Prototypes get no gradient during the first 313 optimizer steps (`freeze_prototypes_steps`).
* Optional queue of past normalized embeddings of the assigned crops (official `--queue_length 3840`,
  `--epoch_queue_starts 15` in the batch-256 recipes): from `queue_start_step` on it is filled with each batch
  (newest first) and, once full (its last row is non-zero), its scores are prepended to the batch's scores for the
  Sinkhorn problem and only the batch rows of `q` are kept.

Presets (`METHOD.make_config(preset)`):

* `"seer"` — SEER (Goyal et al. 2021, "Self-supervised Pretraining of Visual Features in the Wild",
  arXiv:2103.01988): RegNetY-256GF (`backbones` preset `"regnet-y-256gf"`, from VISSL
  `pretrain/swav/models/regnet256Gf_1.yaml`: depth 27, w_0 640, w_a 230.83, w_m 2.53, group width 373 -> stages
  [2, 7, 17, 1] x [746, 1492, 4103, 10444], 1.27B parameters), a 3-layer projection head 10444-8192-8192-256 without
  BatchNorm (VISSL `heads/d10444_d8192_d8192_d256_proto16k.yaml`, `use_bn: False`), 16,000 prototypes, 10 Sinkhorn
  iterations (released checkpoints `..._sinkhorn10_proto16k_...`), eps 0.05 and tau 0.1, crops_for_assign [0, 1],
  prototypes frozen for 313 iterations (VISSL base `swav_8node_resnet.yaml`, which the SEER runs extend), no queue,
  multi-crop 2x224 + 4x96 with the SwAV scales (VISSL `transforms/multicrop_2x224_4x96.yaml`). Trainer-side SEER
  settings (not config fields): LARS, weight decay 1e-5, batch 8192, lr warm-up 0.15 -> 9.6 over 8k steps then cosine
  to 0.0096, SyncBN in groups of 64, mixed precision, activation checkpointing, one pass over 1B images.
* `"cpu-demo"` — the default CPU run of `hf-ssl pretrain` (32 px digits, `resnet-tiny`, 100 prototypes, 512-64 head,
  prototypes frozen 20 steps, two 32 px crops of scale 0.6-1 with flip and colour jitter, no blur; AdamW lr 5e-4,
  1200 steps of batch 64, `METHOD.demo_training`). Not a paper setting: with the paper's crop scales, or with 16 px
  local crops, this tiny model collapses on 32 px digits within ~20 AdamW steps (loss stuck at ln K, the failure mode
  described in the official README), while identical or mildly augmented views train normally. Measured on 2 CPU
  cores: k-NN 0.907 (random init) -> 0.957 in ~90 s of training (30 prototypes / lr 1e-3 / 400 steps stayed at 0.907).

Deviations from the paper / official code:

1. BatchNorm statistics are per process; the official code converts every BN to SyncBatchNorm (apex groups of 8 or
   PyTorch global). Convert with `torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)` before training to match.
2. The queue is one buffer holding the embeddings of *all* processes (all_gather, identical on every rank, saved in
   checkpoints) and each rank prepends its own `queue_length / world_size` rows in the distributed Sinkhorn; the
   official code keeps a per-rank queue of that rank's embeddings (saved to per-rank files). The set of queue
   columns over all ranks, hence the codes, are the same. This keeps the queue correct under DDP's buffer broadcast
   from rank 0 and when resuming from an hf_ssl checkpoint. The official code silently truncates `queue_length` to a
   multiple of the global batch size; here a non-multiple raises a clear error (use `dataloader_drop_last=True`).
3. The queue start is given in optimizer steps (`queue_start_step`) instead of epochs (`--epoch_queue_starts`).
   Under gradient accumulation every micro-batch is pushed to the queue (the official code has no accumulation).
4. Prototype normalization happens at init and after every optimizer step (`on_step_end`) instead of at the start of
   every iteration: the weights seen by the next forward are the same. A hand-written loop must call
   `model.on_step_end(step, max_steps)` after each optimizer step (SSLTrainer does).
5. Prototype freezing detaches the prototypes in the forward (their `.grad` stays `None`, so SGD/LARS/AdamW skip
   them, weight decay included) instead of setting `.grad = None` after backward: the same update. Under DDP this
   needs `find_unused_parameters=True` during the frozen phase, which is the Trainer default for hf_ssl models
   (unless activation checkpointing is on).
6. Encoders are stock transformers backbones (ResNet/RegNet/ViT...); the ResNet-50 is architecturally the
   official one (the official extra zero padding + conv padding 2 equals padding 3). ViT backbones (not in the
   paper) use the final-norm CLS token as the pooled feature and interpolated position embeddings for local crops.
7. Augmentations are PIL/numpy re-implementations of the torchvision ops (no torchvision dependency), and the
   normalization std is ImageNet's (0.229, 0.224, 0.225); the official code has 0.228 for red (a typo).
8. The Sinkhorn input subtracts the global maximum score before `exp` (numerical safety; mathematically
   identical) and Sinkhorn and the loss always run in float32 (the official code runs under apex O1).
9. The optimizer recipe (SGD + LARC with trust 0.001, lr 4.8 for batch 4096 with 10 warm-up epochs from 0.3 and
   cosine decay to 0.0048, weight decay 1e-6) belongs to the trainer (`SSLTrainingArguments(use_lars=True, ...)`),
   not to the model; hf_ssl's LARS excludes 1-D parameters (BN, biases) from adaptation, the official LARC does not.
"""

from ..registry import MethodSpec
from .configuration_swav import SwAVConfig
from .image_processing_swav import SwAVImageProcessor
from .modeling_swav import SwAVForSelfSupervisedPretraining

SEER_PRESET = {
    "backbone_config": "regnet-y-256gf",
    "image_size": 224,
    "num_prototypes": 16000,
    "projection_hidden_dim": 8192,
    "projection_dim": 256,
    "projection_num_layers": 3,
    "projection_batch_norm": False,
    "swav_temperature": 0.1,
    "sinkhorn_epsilon": 0.05,
    "sinkhorn_iterations": 10,
    "crops_for_assign": [0, 1],
    "freeze_prototypes_steps": 313,
    "queue_length": 0,
    "augmentation": {"num_global": 2, "num_local": 4, "local_size": 96, "global_scale": [0.14, 1.0],
                     "local_scale": [0.05, 0.14]},
}

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "num_prototypes": 100,
    "projection_hidden_dim": 512,
    "projection_dim": 64,
    "freeze_prototypes_steps": 20,
    "augmentation": {"num_global": 2, "num_local": 0, "global_scale": [0.6, 1.0], "gaussian_blur": 0.0,
                     "grayscale": 0.0},
}

METHOD = MethodSpec(
    name="swav",
    config_class=SwAVConfig,
    model_class=SwAVForSelfSupervisedPretraining,
    image_processor_class=SwAVImageProcessor,
    family="clustering",
    description=(
        "Swapping Assignments between Views: online clustering of multi-crop views onto learnable prototypes; the "
        "equipartitioned Sinkhorn-Knopp code of one view is predicted from every other view."
    ),
    presets={"seer": SEER_PRESET, "cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 1200, "learning_rate": 5e-4},
)

__all__ = ["SwAVConfig", "SwAVForSelfSupervisedPretraining", "SwAVImageProcessor", "METHOD"]
