"""InterCLR: Delving into Inter-Image Invariance for Unsupervised Visual Representations.

Jiahao Xie, Xiaohang Zhan, Ziwei Liu, Yew-Soon Ong, Chen Change Loy. International Journal of Computer Vision 130,
2994-3013 (2022), arXiv:2008.11702. Official code: open-mmlab/mmselfsup (0.x branch)
`mmselfsup/models/algorithms/interclr_moco.py`, `mmselfsup/core/hooks/interclr_hook.py`, the ODC-style memory with
online labels, and `configs/selfsup/interclr/` (originally in OpenSelfSup).

Method (MoCo-InterCLR, as in the official code):

* Intra-image branch: MoCo v2 (query encoder + MLP neck 2048-128 without BN, EMA key encoder with momentum 0.999,
  65,536-key queue, InfoNCE with tau 0.2), optionally with a cosine margin on the positive (off by default).
* Inter-image branch: a memory bank with one L2-normalized feature per image, updated with the batch's keys as
  `normalize((1 - 0.5) * old + 0.5 * key)`; online pseudo-labels = nearest centroid (dot product) of the updated
  feature; centroids = per-cluster mean of the bank every 10 iterations; 10,000 clusters on ImageNet.
  Positive = a random bank entry of the query's cluster; negatives = 16,384 entries drawn uniformly from the 128,000
  most similar bank entries of other clusters ("semi-hard"); MarginNCE with cosine margin -0.5 on the positive
  (`cos - margin`), tau 0.2.
* Loss = 0.75 * intra + 0.25 * inter.

Presets: `"cpu-demo"` - the short CPU run of `hf-ssl pretrain` on the 32 px built-in digits (`resnet-tiny`, 512-64
neck, 1024-key queue, 8192-slot bank, 30 clusters, 64 semi-hard negatives from ranks [0, 512), k-means after 30
steps, teacher momentum 0.99; 400 steps at AdamW 3e-4, `METHOD.demo_training`). Not a paper setting.

Deviations from the paper / official code:

1. Streaming data has no dataset index: the `"interclr"` view policy gives each image a stable id from a CRC32 of its
   decoded pixels and the bank slot is `id % memory_bank_size`. Different images can share a slot (with a bank of
   the dataset's size roughly 1/e of the slots collide; use a bank several times larger than the dataset to make
   this rare). A dataset that knows exact indices can pass `sample_index` itself.
2. The official code clusters the features of the whole dataset (offline k-means, faiss) before training. Here the
   bank fills during training and is clustered once (Lloyd k-means, L2, 20 iterations, random distinct
   initialisation) at `inter_start_step` (default one ImageNet epoch at batch 256); until then only the intra-image
   branch trains (like the official `warmup_epochs` with inter weight 0). Images the bank has not seen yet take the
   nearest centroid of their key as label.
3. Small clusters are not re-assigned/split (official `deal_with_small_clusters` with min cluster 20); empty clusters
   keep their last centroid. Rows whose cluster has no filled entry contribute 0 to the inter loss.
4. Semi-hard sampling removes same-cluster (and never-written) entries before ranking and draws once without
   replacement; the official code ranks all entries and redraws the ones that hit the positive's cluster. Both draw
   uniformly among the most similar other-cluster entries; `semihard_rank_range=[low, high)` generalises the
   official `[0, semihard_neg_pool_num)`.
5. No shuffle-BN for the key encoder (BatchNorm statistics are per process); the default neck has no BN.
   The EMA update happens in `on_step_end` (after each optimizer step) instead of at the start of the next forward:
   the keys of every step see the same teacher.
6. Random draws of the sampling come from a generator seeded with `sampling_seed` and the number of training
   forwards, drawn for the global batch on every process (so DDP equals one process); the bank, labels, queue and
   centroids are kept identical on all processes with all_gathered keys and indices (the official bank lives on rank
   0 and is broadcast).
7. Augmentations are PIL/numpy re-implementations of the torchvision ops; the optimizer (SGD lr 0.03, cosine, wd 1e-4)
   belongs to the trainer.
"""

from ..registry import MethodSpec
from . import views_interclr  # noqa: F401  (registers the "interclr" view policy)
from .configuration_interclr import InterCLRConfig
from .image_processing_interclr import InterCLRImageProcessor
from .modeling_interclr import InterCLRForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "projection_hidden_dim": 512,
    "projection_dim": 64,
    "queue_length": 1024,
    "teacher_momentum": 0.99,
    "memory_bank_size": 8192,
    "num_clusters": 30,
    "kmeans_interval": 10,
    "inter_start_step": 30,
    "num_negatives": 64,
    "semihard_rank_range": [0, 512],
    "augmentation": {"crop_scale": [0.3, 1.0], "gaussian_blur": 0.0},
}

METHOD = MethodSpec(
    name="interclr",
    config_class=InterCLRConfig,
    model_class=InterCLRForSelfSupervisedPretraining,
    image_processor_class=InterCLRImageProcessor,
    family="contrastive",
    description=(
        "MoCo-style instance discrimination plus an inter-image branch: a momentum memory bank clustered online by "
        "k-means gives same-cluster positives and semi-hard other-cluster negatives, with a MarginNCE loss."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    # 400 steps of batch 64 at AdamW 3e-4: k-NN 0.907 -> 0.957 on the digits (1e-3 overshoots: 0.863)
    demo_training={"max_steps": 400, "learning_rate": 3e-4},
)

__all__ = ["InterCLRConfig", "InterCLRForSelfSupervisedPretraining", "InterCLRImageProcessor", "METHOD"]
