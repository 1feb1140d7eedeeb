"""Joint Self-Supervised Image-Volume Representation Learning with Intra-Inter Contrastive Clustering.

Duy M. H. Nguyen, Hoang Nguyen, Truong T. N. Mai, Tri Cao, Binh T. Nguyen, Nhat Ho, Paul Swoboda, Shadi Albarqouni,
Pengtao Xie, Daniel Sonntag. AAAI 2023 (vol. 37 no. 12, pp. 14426-14435; arXiv:2212.01893).
Official code: https://github.com/duyhominhnguyen/Self-supervised-Image-Volume-Intra-Inter-Contrastive.

Method. One 2-D encoder serves 2-D images and the slices of 3-D volumes. (i) Slice-level ("intra") contrastive
clustering: two augmented 2-D views of an image / slice are assigned to prototypes with Sinkhorn-Knopp codes and
each view predicts the other's code (SwAV; DeepCluster in the paper's second variant). (ii) Volume-level ("inter")
clustering: every slice of a volume is embedded by the 2-D encoder, a transformer over the slice embeddings
(deformable self-attention in the paper) gives contextual slice tokens whose mean is the holistic volume
embedding, and two augmented 3-D views of a volume are clustered with the same swapped prediction. (iii) Masked
embedding prediction (BERT-like): a fraction of the slice embeddings is replaced by a mask token and the transformer
predicts them.

Implementation. `encoder` is a stock transformers 2-D backbone (ResNet by default) applied to every slice;
`aggregator` is a transformer over slice tokens with fixed 1-D sin-cos depth positions; both clustering terms use
`losses.sinkhorn_knopp` (equipartition over the batch of ALL processes, the official `distributed_sinkhorn`), so
DDP computes what one process computes on the concatenated batch. Main input `pixel_values_volumes [B, C, D, H, W]`
(view policy `image_volume_views`: two 3-D views, two 2-D views of `num_slices_2d` slices, one slice mask);
`get_input_features(volumes)` is the aggregated volume embedding, `get_input_features(slices [N, C, H, W])` the 2-D
encoder's pooled feature. The EXPORTED vanilla encoder is the 2-D slice encoder (a stock ResNetModel / ViTModel on
`[N, C, H, W]` slices or 2-D images; `export_check_input` flattens volumes to their slices); the slice transformer is
part of the hf_ssl checkpoint only.

Paper / official defaults (config defaults): ResNet-50 slice encoder with the multi-scale slice feature (every
stage average-pooled and L2-normalised, concatenated: `ResNet.forward_2D`), volumes resized to 64 x 128 x 128,
slice transformer d_model 640, 4 layers, FFN 720; 3000 prototypes, temperature 0.1, Sinkhorn epsilon 0.05 with 3
iterations, prototypes frozen for 313 iterations and re-normalised every step; masked embedding ratio 0.1;
optimiser SGD + LARC (trust 0.001), lr 1e-2 with warm-up and cosine decay, weight decay 1e-6, gradient clipping 2.0,
batch 6 volumes per GPU, 100 epochs; 2-D stage: VISSL SwAV (2048-128 projection head, 3000 prototypes, tau 0.1).

Deviations from the paper / official code:

1. Stages inside one run. The official code trains in three runs: 2-D SwAV on images and slices (VISSL), then
   the masked-embedding transformer on the frozen 2-D encoder's features (`mask_swav_3D.py`), then 3-D SwAV end to
   end (`ssl_swav_3D.py`). `stage_steps=[n_2d, n_mask]` runs the same three stages in one run, switched by the
   (checkpointed) optimizer step; the cpu-demo preset uses it. The default `stage_steps=None` sums the three terms
   with weights `weight_2d`, `weight_3d`, `weight_mask` from the first step (joint training, not the paper's); there
   the masked-embedding targets are the stop-gradient features of the encoder being trained, which it can make
   trivially predictable, so prefer the staged schedule. Stage 3 uses no SwAV queue (official: a queue for its
   6-volume batches); use batches of a few dozen volumes or more.
2. Slice transformer: dense multi-head self-attention (pre-norm `heads.TransformerBlock`, no dropout) with fixed 1-D
   sin-cos depth positions instead of the 1-D deformable attention (lucidrains `DeformableAttention1D`) of the
   official `EncoderLayer`; with at most a few hundred slices dense attention is exact and affordable, the
   deformable sampling is an approximation of it. The official slice-feature deconvolution is a linear projection.
3. Masked embedding loss on masked slices only (the paper's objective); the released stage-2 script averages the
   MSE over all slices and divides by the number of masked ones. As there, the transformer predicts the slice
   features (the 2-D encoder's output), not the projected slice tokens.
4. 2-D data: the slice-level term uses slices of the training volumes (`num_slices_2d` per volume, two in-plane crops
   each); stand-alone 2-D image datasets are not mixed into the stream. Slice mask: `round` instead of `ceil`.
5. Augmentation: numpy 3-D crop / flips / intensity gamma, scale, shift and noise (`training/volumes.py`) instead of
   torchio's RandomAffine / Anisotropy / Blur / BiasField (the official loader applies two different single torchio
   transforms to the two views and no crop); AdamW (the Trainer's) instead of SGD + LARC by default
   (`--use-lars` is available).
6. Volume projection head (`volume_projection=True`, default): a SwAV projection MLP (with BatchNorm) between the
   volume embedding and the 3-D prototypes; the official `ResNet_Trans` scores the L2-normalised mean of the slice
   tokens directly (`volume_projection=False`). Measured on the demo: that mean is dominated by a component all
   volumes share (ReLU slice features, depth positions), volume embeddings start at a pairwise cosine of 0.9999, so
   Sinkhorn codes and predictions are uniform and the 3-D loss sits at exactly ln K with a vanishing gradient (every
   earlier demo, with 32 or 100 prototypes, jointly or staged). With the head the 3-D loss falls (ln 100 = 4.61 ->
   3.76 in the demo's stage 3) and prototype usage rises to ~64%. The head is training-only: k-NN features and the
   export are the pre-head volume embedding / 2-D encoder.
7. Data: no labelled volume ships offline, so the default data is `builtin:shapes3d` (synthetic grey 32^3 volumes of
   ten shape classes, each with its own background / foreground level and texture); the cpu-demo preset uses a tiny
   ResNet on 16 x 32 x 32 volumes, the staged schedule (100 steps 2-D, 50 masked, 150 3-D), 100 3-D prototypes and
   per-volume percentile intensity normalisation (`augmentation["intensity_normalization"] = "percentile"`, the
   usual CT / MRI preprocessing; off by default, as the released loader reads its pre-processed arrays as they are).
   Without the normalisation the clusters follow each volume's intensity levels: a ridge probe on the trained
   features predicts the background level with R^2 0.985 (random init 0.22), and shape-class k-NN fell
   (0.493 -> 0.387). With it: k-NN 0.537 -> 0.700 (seed 42) and 0.573 -> 0.663 (seed 1); without the volume
   projection head, normalised, the 3-D loss stays at ln K and k-NN moves 0.533 -> 0.550.
"""

from ...training import volumes as _volumes  # noqa: F401  (registers the volume view policies)
from ..registry import MethodSpec
from . import views_image_volume_clustering as _views  # noqa: F401  (registers "image_volume_views")
from .configuration_image_volume_clustering import ImageVolumeClusteringConfig
from .image_processing_image_volume_clustering import ImageVolumeClusteringImageProcessor
from .modeling_image_volume_clustering import ImageVolumeClusteringForSelfSupervisedPretraining

_DEMO_ENCODER = dict(model_type="resnet", layer_type="basic", depths=[1, 1, 1, 1], embedding_size=16,
                     hidden_sizes=[16, 32, 64, 128], num_channels=1)

METHOD = MethodSpec(
    name="image_volume_clustering",
    config_class=ImageVolumeClusteringConfig,
    model_class=ImageVolumeClusteringForSelfSupervisedPretraining,
    image_processor_class=ImageVolumeClusteringImageProcessor,
    family="clustering (joint 2-D / 3-D)",
    description=(
        "A 2-D encoder embeds images and volume slices; slice-level and volume-level (slice transformer) SwAV "
        "clustering plus masked slice-embedding prediction."
    ),
    presets={
        "cpu-demo": dict(backbone_config=_DEMO_ENCODER, image_size=32, volume_depth=16, aggregator_hidden_size=64,
                         aggregator_layers=2, aggregator_num_heads=4, aggregator_intermediate_size=128,
                         num_prototypes=100, num_prototypes_2d=32, projection_hidden_dim=128, projection_dim=32,
                         num_slices_2d=2, freeze_prototypes_steps=20, stage_steps=[100, 50],
                         augmentation={"intensity_normalization": "percentile"}),
    },
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
    default_dataset="builtin:shapes3d",
)

__all__ = ["ImageVolumeClusteringConfig", "ImageVolumeClusteringForSelfSupervisedPretraining",
           "ImageVolumeClusteringImageProcessor", "METHOD"]
