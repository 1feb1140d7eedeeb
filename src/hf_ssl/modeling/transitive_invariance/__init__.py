"""Transitive Invariance for Self-supervised Visual Representation Learning.

Xiaolong Wang, Kaiming He, Abhinav Gupta. ICCV 2017 (arXiv:1708.02901). Official code (Caffe):
https://github.com/xiaolonw/TransitiveInvariance (not available offline here; this implementation follows the
paper and its predecessor, Wang & Gupta, "Unsupervised Learning of Visual Representations using Videos", ICCV 2015).

Method:

* A graph over object patches mined from unlabeled videos. Intra-instance edges ("different viewpoints of the same
  instance"): a patch is tracked through the video and the first and last patch of the track are connected.
  Inter-instance edges ("different instances, similar viewpoint and category"): patches whose self-supervised
  features fall into the same (small) cluster are connected.
* Transitivity: if A -inter- B and B -intra- B', then (A, B') is a positive pair too; the training pairs are the
  intra pairs, the inter pairs and the transitive (inter-then-intra) pairs.
* A Triplet-Siamese network (VGG16 in the paper) embeds every patch; loss = ranking loss with cosine distance
  `D(X1, X2) = 1 - X1.X2 / (|X1| |X2|)`: `max(0, D(X, X+) - D(X, X-) + M)`, margin M = 0.5, negatives = patches of
  other instances, with hard negative mining (the K highest-loss negatives of the batch).

hf_ssl implementation (method `"transitive_invariance"`):

* Data: clips (`builtin:moving_digits` by default: real digits moving on a canvas). The view policy
  (`views_transitive_invariance.py`) tracks the object of the first frame from the clip's own pixels (bright-pixel
  box initialisation, NCC template matching inside a search window, interpolated template), cuts square patches
  around the first and last box and augments each; `pixel_values = [first_patches, last_patches]`.
* Model: `encoder` = stock transformers image backbone applied to every patch, `head` = fully connected embedding
  (two linear layers, no BatchNorm so no cross-sample statistics leak), L2-normalised.
* Graph per step over the DDP-gathered batch (`losses.all_gather` with gradient): intra edges first_i - last_i;
  inter edges from spherical k-means (`losses.kmeans(gather=True)`, stop-grad, identical on every process) over the
  first-patch embeddings, `k = ceil(N / instances_per_cluster)`; the pair types come from the transitive closure
  (`transitive_pair_types`). Every local patch is an anchor; positives = all nodes connected to it (intra, inter,
  transitive), negatives = nodes of unconnected instances, the K = 4 hardest per anchor (after a warm-up with all
  negatives); per-type means with
  process-summed pair counts, so N processes compute the single-process loss on the global batch.
* Features: `get_image_features(images)` = pooled backbone feature; `get_input_features(clips [B, T, C, H, W])` = the
  mean of its frames' image features (k-NN on clips, the `transitive_invariance_eval` policy); the vanilla export is
  the stock image backbone.

Paper defaults kept: cosine-distance ranking loss, margin 0.5, hard negatives from other instances, three pair types
with equal weight, patches tracked over the video (first / last patch of a track).

DEVIATIONS:

1. The graph is built online over each (gathered) batch instead of offline over ~millions of patches mined from
   100K videos; clusters are therefore batch clusters (`instances_per_cluster` = 4, our choice for "small, tight
   clusters").
2. The inter-instance edges cluster the network's OWN embeddings (stop-grad) after `inter_start_step` steps of
   intra-only (tracking) training, instead of the features of a separately trained context-prediction network
   (Doersch et al.), which is not bundled.
3. Tracking: NCC template matching on the clip's pixels (bright-region initialisation) instead of KCF on SURF /
   improved-dense-trajectory proposals; good for objects on plain backgrounds like the moving digits, not a
   general-purpose object-proposal pipeline. Single images become flagged synthetic camera-motion clips.
4. Moving digits do not change shape along a track, so the intra edge alone would be trivial: each patch gets an
   independent random resized crop (`crop_scale`), which the paper does not use.
5. Backbone: stock transformers ResNet / ViT (default ResNet-50) instead of VGG16; the embedding head widths
   (4096 -> 1024) are ours; K = 4 hard negatives as we read Wang & Gupta 2015.
6. Hard negative mining starts after `hard_negative_start_step` steps (default 1000; cpu-demo 200); before it the
   hinge is averaged over all negatives of the batch. Hardest-negative triplets from a random initialisation
   collapsed the embedding in our runs (every cosine -> 1, loss stuck at the margin).
7. Every node of a local track is an anchor (first and last patch), with every connected node as its positive, so
   the pair types appear in the proportions the batch graph gives (per-type means keep them equally weighted).
"""

from ..registry import MethodSpec
from . import views_transitive_invariance  # noqa: F401  (registers the view policies)
from .configuration_transitive_invariance import TransitiveInvarianceConfig
from .image_processing_transitive_invariance import TransitiveInvarianceImageProcessor
from .modeling_transitive_invariance import (TransitiveInvarianceForSelfSupervisedPretraining, track_graph,
                                             transitive_pair_types, transitive_triplet_loss)

METHOD = MethodSpec(
    name="transitive_invariance",
    config_class=TransitiveInvarianceConfig,
    model_class=TransitiveInvarianceForSelfSupervisedPretraining,
    image_processor_class=TransitiveInvarianceImageProcessor,
    family="graph / ranking (video tracking + clustering)",
    description=("Triplet-Siamese ranking (cosine distance, margin 0.5, hard negatives) on positive pairs from the "
                 "transitive closure of a graph: intra-instance edges from tracking a patch through a clip, "
                 "inter-instance edges from k-means clusters of the (gathered) batch."),
    presets={
        "cpu-demo": dict(backbone_config="resnet-tiny", image_size=32, num_frames=16, sampling_rate=1,
                         projection_hidden_dim=256, projection_dim=128, inter_start_step=100,
                         hard_negative_start_step=200,
                         augmentation={"crop_scale": [0.5, 1.0]}),
    },
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
    default_dataset="builtin:moving_digits",
)

__all__ = ["TransitiveInvarianceConfig", "TransitiveInvarianceForSelfSupervisedPretraining",
           "TransitiveInvarianceImageProcessor", "transitive_pair_types", "track_graph", "transitive_triplet_loss",
           "METHOD"]
