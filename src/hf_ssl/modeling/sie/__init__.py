"""SIE: Self-supervised learning of Split Invariant Equivariant representations.

Quentin Garrido, Laurent Najman, Yann LeCun. ICML 2023 (arXiv:2302.02809). Official code:
https://github.com/facebookresearch/SIE (`src/models.py` class `SIE`, `src/hypernetwork.py`, `main.py`).

Method (as in the official code, `--experience SIE`):

* The encoder's pooled representation (ResNet-18, 512-d) is split into an invariant part (first D - E dims) and an
  equivariant part (last E = 256 dims). Each part has its own projector (Linear-BN-ReLU x2, Linear without bias)
  whose widths are the official `--mlp 2048-2048-2048` scaled by the part's share of D (rounded).
* Invariance: `mse(z1_inv, z2_inv)` (only the invariant embeddings).
* Equivariance: a predictor maps `z1_equi` to `z2_equi`; its weights (a single E x E matrix by default) are
  produced by a hypernetwork (one bias-free Linear layer by default, `"deep"`: 3 layers) from the transformation
  parameters relating view 1 to view 2; loss `mse(pred, z2_equi)` weighted `equi_factor * sim_coeff`.
* Regularisation (VICReg): variance hinge on both views' full embeddings `[z_inv | z_equi]` and on the
  predictions (each halved), covariance on both views' full embeddings (so the cross inv/equi blocks are
  decorrelated too), on the batch gathered over all processes with gradient (official `FullGatherLayer`).
* Loss `10 * inv + 0.45 * 10 * equi + 10 * (std + pred_std) + 1 * cov`; no stop-gradient (both branches and the
  hypernetwork are trained), Adam lr 1e-3, wd 1e-6, batch 1024 (trainer settings, not config fields).

Presets: `"cpu-demo"` (see CPU_DEMO_PRESET) for 32 px digits on CPU.

Deviations from the paper / official code:

1. Transformations: the paper's 3DIEBench gives relative 3-D object rotations (quaternions, 4 params) between two
   renders; for 2-D image data the `"sie"` view policy (views_sie.py) uses the augmentations themselves and returns
   7 relative parameters `p2 - p1`, with `p = (crop centre x, y (fractions), log crop width/height fractions,
   flip, brightness factor, contrast factor)`. This is a 2-D stand-in for the rotation groups of the paper.
2. BatchNorm statistics are per process (the official code uses no SyncBatchNorm either in main.py; convert with
   `torch.nn.SyncBatchNorm.convert_sync_batchnorm` if wanted).
3. The covariance divides by (global batch - 1) of the actual gathered batch; the official code divides by
   `args.batch_size - 1` (the same for full batches).
4. The official online evaluator (linear/MLP probes trained jointly on detached features) is not part of the
   model; hf_ssl evaluates with its own k-NN / linear-probe tools.
5. The loss runs in float32 (the official code runs under AMP).
"""

from ..registry import MethodSpec
from . import views_sie  # noqa: F401  (registers the "sie" view policy)
from .configuration_sie import SIEConfig
from .image_processing_sie import SIEImageProcessor
from .modeling_sie import SIEForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "equivariant_dim": 128,
    "projection_dims": [512, 512, 512],
    "augmentation": {"crop_scale": [0.5, 1.0]},
}

METHOD = MethodSpec(
    name="sie",
    config_class=SIEConfig,
    model_class=SIEForSelfSupervisedPretraining,
    image_processor_class=SIEImageProcessor,
    family="joint-embedding (invariant + equivariant)",
    description=(
        "Split Invariant Equivariant representations: VICReg-style invariance on one part of the representation, "
        "and on the other part a hypernetwork-parametrised predictor of view 2 from view 1 conditioned on the "
        "transformation parameters."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
)

__all__ = ["SIEConfig", "SIEForSelfSupervisedPretraining", "SIEImageProcessor", "METHOD"]
