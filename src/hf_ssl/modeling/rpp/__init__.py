"""Rethinking Positive Pairs in Contrastive Learning (SimLAP; "Hydra" in arXiv v1).

Jiantao Wu, Sara Atito, Zhenhua Feng, Shentong Mo, Josef Kittler, Muhammad Awais. arXiv preprint 2024
(arXiv:2410.18200; v2 2025). Authors' code: https://github.com/erow/vitookit (`vitookit/evaluation/simlap.py`,
`doc/simlap.md`) and https://github.com/erow/FastSSL (`model/simlap.py`, `configs/simclr_ffcv.gin`).

Method (as in the authors' code):

* Any pair of samples may be a positive pair. For a pair (x, x'), a feature filter produces a gate vector
  g = sigmoid(MLP(c)) in (0, 1)^d from the pair's condition c; in the paper c is the mean of two learned class
  embeddings of the pair's classes (`BasicGate`, `fuse=True`), so g is symmetric in the pair. The gate selects the
  subspace in which the two samples are compared.
* Gated multi-positive InfoNCE (`multipos_ce_loss`): logits `<n(z) * g * g, n(k_j)> / 0.1` against the partner
  embeddings of the whole (gathered) batch; positives are the candidates of the partner's class, candidates of the
  anchor's or the partner's class are removed from the negatives; each positive is contrasted against the negatives
  only and the terms are averaged over positives, then anchors.
* Projection 2048-2048-256 ending in LayerNorm; gate MLP ReLU-BN-Linear(512, 1024)-ReLU-BN-Linear(1024, 256); pairs
  are "arbitrary" (partner class drawn at random from the batch; "identical" = SupCon-style same-class pairs).

As implemented (self-supervised by default):

* `gate_condition="features"` (default): without labels, the condition of a pair is the mean of the two images'
  pooled encoder features, stop-gradient; positives/excluded candidates are defined by image identity (`pair_ids`).
  `gate_condition="labels"` reproduces the paper's class-pair gate when the batch carries `pair_labels` [B, 2].
* The `"arbitrary_pair"` view policy builds the pairs: the partner of an image is, with probability
  `arbitrary_pair_prob` (default 1.0), a random image among the `pair_buffer_size` most recent ones, otherwise
  another augmentation of the same image; content-hash ids identify the images.

Presets: `"cpu-demo"` - the short CPU run of `hf-ssl pretrain` on the 32 px built-in digits (`resnet-tiny`,
512-128 projection, gate width 256, half arbitrary / half same-image pairs, crops of scale 0.4-1, milder jitter,
no blur/solarize; paper temperature 0.1). Not a paper setting.

Deviations from the paper / authors' code:

1. Self-supervised conditioning: the paper conditions the gate on class labels (ImageNet classes); hf_ssl's default
   conditions it on the stop-gradient features of the two images and uses image identity instead of class identity
   for the positives and the excluded candidates. The class-label gate is available (`gate_condition="labels"`), but
   the built-in view policies do not deliver labels: a custom dataset/collator must provide `pair_labels`.
2. Pairs come from the data pipeline (a per-worker ring buffer of recent images) instead of a random permutation of
   the labels inside the batch; `arbitrary_pair_prob < 1` mixes in classical same-image pairs (not in the paper).
3. The candidates are the partner views; the official FastSSL code contrasts with the second augmentation of every
   batch image (whose class then plays the partner's role), vitookit with the single view itself. Same loss form.
4. The logits' row mean subtraction of `multipos_ce_loss` is replaced by an exact log-sum-exp (the loss is invariant
   to it); the loss is averaged per row (FastSSL head) rather than over all positives of the batch (vitookit), which
   is the same when every row has one positive, as with image identities.
5. Fixed temperature 0.1 (vitookit); FastSSL's learnable logit scale, its `alpha` term and the online linear classifier
   on detached features (`cls_head`, a supervised probe) are not included. `gate_penalty_weight` (mean Bernoulli
   entropy of the gates, default 0) is an optional binarisation penalty; the released code trains without one and
   the paper's exact penalty form was not available to check.
6. Gathered partner embeddings send every process its summed gradient (`losses.all_gather(with_grad=True)`), which is
   exactly the single-process gradient. BatchNorm statistics are per process.
7. Augmentations are PIL/numpy re-implementations (Gaussian blur is PIL's radius-based blur, not a 3x3 kernel); the
   optimizer recipe (AdamW/LARS, lr, warm-up) belongs to the trainer arguments.
"""

from ..registry import MethodSpec
from . import views_rpp  # noqa: F401  (registers the "arbitrary_pair" view policy)
from .configuration_rpp import RPPConfig
from .image_processing_rpp import RPPImageProcessor
from .modeling_rpp import RPPForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "projection_hidden_dim": 512,
    "projection_dim": 128,
    "gate_hidden_dim": 256,
    "augmentation": {"arbitrary_pair_prob": 0.5, "pair_buffer_size": 128, "crop_scale": [0.4, 1.0],
                     "color_jitter_strength": [0.4, 0.4, 0.4, 0.1], "gaussian_blur": 0.0, "partner_solarize": 0.0,
                     "grayscale": 0.2},
}

METHOD = MethodSpec(
    name="rpp",
    config_class=RPPConfig,
    model_class=RPPForSelfSupervisedPretraining,
    image_processor_class=RPPImageProcessor,
    family="contrastive (arbitrary pairs)",
    description=(
        "Rethinking Positive Pairs (SimLAP): any two images form a positive pair; a pair-conditioned sigmoid gate "
        "selects the feature subspace in which the gated InfoNCE compares them."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 400, "learning_rate": 1e-3},
)

__all__ = ["RPPConfig", "RPPForSelfSupervisedPretraining", "RPPImageProcessor", "METHOD", "CPU_DEMO_PRESET"]
