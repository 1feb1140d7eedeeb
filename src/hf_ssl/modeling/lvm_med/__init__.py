"""LVM-Med: Learning Large-Scale Self-Supervised Vision Models for Medical Imaging via Second-order Graph Matching.

Duy M. H. Nguyen, Hoang Nguyen, Nghiem T. Diep, Tan N. Pham, Tri Cao, Binh T. Nguyen, Paul Swoboda, Nhat Ho,
Shadi Albarqouni, Pengtao Xie, Daniel Sonntag, Mathias Niepert. NeurIPS 2023 (arXiv:2306.11925). Official code
(released encoders and downstream scripts; the pre-training code is not part of the public repository):
https://github.com/duyhominhnguyen/LVM-Med.

Method (paper, Fig. 2 and Sec. 3):

* Two augmentations of every image of a batch go through the encoder `f` (ResNet-50 or ViT-B/16) and a projector
  `h`. The embeddings of each view form a graph whose nodes are the batch's images and whose edges connect
  k nearest neighbours; a message-passing network `g` aggregates every node's neighbourhood.
* Vertex affinities combine a global similarity (cosine of the node features) with a local one (nearest-neighbour
  similarity of the images' local feature vectors); edge affinities compare the edges of the two graphs, which
  makes the matching second order (a quadratic assignment problem, QAP).
* A combinatorial graph-matching solver computes the matching of the two graphs; the loss is the Hamming distance
  between this matching and the ground truth (node i of one view <-> node i of the other view), and the solver is
  differentiated with blackbox gradient estimation (Vlastelica et al., ICLR 2020, as in BB-GM, Rolinek et al.,
  ECCV 2020): the backward pass solves once more with the vertex costs perturbed by lambda x the incoming gradient.
* Under DDP the graphs span the global batch: embeddings and local features are all-gathered with gradient, every
  process solves the same matching and DDP's gradient averaging gives the single-process gradient (tested).

Which relaxation is used: by default (`matching_solver="blackbox"`) the exact paper scheme, a hard QAP solver
(`hf_ssl.modeling.graph_matching.solve_quadratic_assignment`: IPFP with Hungarian projections, exact linear
assignment when the edge weight is 0) differentiated with Vlastelica et al.'s interpolation gradient. The forward
output is an exact permutation matrix. `matching_solver="sinkhorn"` replaces it with an entropic relaxation
(graduated assignment: Sinkhorn of the QAP's linearisation at temperature `sinkhorn_temperature`, unrolled
autograd), giving a doubly stochastic matrix and dense gradients; it is an alternative for settings where the hard
solver's sparse gradients learn slowly, not the paper's choice.

Defaults: ResNet-50; 2048-256 projector; k = 5 neighbours; one message-passing round; local/global vertex
affinity 0.5/0.5 on a <= 4 x 4 grid of local features; edge weight 1 (divided by k); lambda = 80 and a
ground-truth cost margin of 0.1 (BB-GM's defaults for its blackbox solver: lambda 80, with a cost margin); IPFP with
10 iterations; BYOL/VICReg-style two-view augmentation (crop 0.08-1, jitter 0.8, grayscale 0.2, blur 0.5,
solarize 0.1). The paper's training recipe (LARS/Adam, epochs, batch size) is a trainer setting.

Presets: `"cpu-demo"` - the short CPU run of `hf-ssl pretrain` on the 32 px built-in digits (`resnet-tiny`, 512-128
projector, crops of scale 0.4-1, no blur/solarize). Not a paper setting.

Deviations from the paper / official code:

1. Solver: the paper's experiments call a dedicated graph-matching solver (LPMP-style dual block coordinate
   ascent, as in BB-GM); LPMP is a compiled dependency, so a pure torch/scipy IPFP solver (Leordeanu et al. 2009)
   returns the permutation here. Both are heuristics for the NP-hard QAP; the blackbox gradient is the same.
2. The pre-training code is not released, so some details could not be checked against code and are ours:
   the exact edge affinity (inner product of the two edges' node-difference vectors, BB-GM's node-to-edge
   features; closed-form O(N^3) evaluation), the message-passing layer (mean aggregation, GraphSAGE-style), the
   local similarity (symmetric nearest-neighbour cosine of pooled local features, VICRegL-like), k, projector
   widths, the margin and the 0.5 local/global split. All are config fields.
3. The k-NN graphs are built on the detached projector embeddings (the graph structure is discrete and gets no
   gradient); node features, vertex and edge affinities are differentiated.
4. The matching loss is averaged per node (Hamming / N) so its scale does not grow with the batch.
5. BatchNorm statistics in the projector are per process (no SyncBatchNorm).
"""

from ..registry import MethodSpec
from .configuration_lvm_med import LVMMedConfig
from .image_processing_lvm_med import LVMMedImageProcessor
from .modeling_lvm_med import LVMMedForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "projection_hidden_dim": 512,
    "projection_dim": 128,
    "local_dim": 64,
    "augmentation": {"crop_scale": [0.4, 1.0], "gaussian_blur": 0.0, "solarize": 0.0},
}

METHOD = MethodSpec(
    name="lvm_med",
    config_class=LVMMedConfig,
    model_class=LVMMedForSelfSupervisedPretraining,
    image_processor_class=LVMMedImageProcessor,
    family="graph matching (contrastive)",
    description=(
        "Second-order graph matching between the k-NN graphs of two views of a batch: vertex (global + local) and "
        "edge affinities, a combinatorial QAP solver with blackbox gradients (or a Sinkhorn relaxation), Hamming "
        "loss to the identity matching."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 400, "learning_rate": 1e-3},
)

__all__ = ["LVMMedConfig", "LVMMedForSelfSupervisedPretraining", "LVMMedImageProcessor", "METHOD"]
