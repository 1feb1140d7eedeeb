"""ISR: Identity-Seeking Self-Supervised Representation Learning for Generalizable Person Re-identification.

Zhaopeng Dou, Zhongdao Wang, Yali Li, Shengjin Wang. ICCV 2023 (oral), pp. 15847-15858 (arXiv:2308.08887). Official
code: https://github.com/dcp15/ISR_ICCV2023_Oral (inference only: `demo_A.py`, Swin-B + a 1024 -> 512 linear
embedding, 224 x 224 crops, cosine similarity of unit-norm embeddings).

Method:

* Data: persons detected in the frames of unlabeled videos (the paper: 47.8M person images from 7.4K video clips).
  Two frames of a clip are taken; the persons detected in each are cropped and encoded.
* Positive-pair construction: instance association between the two frames is a maximum-weight bipartite matching on
  the cosine similarities of the current embeddings (Hungarian / Kuhn-Munkres); every matched pair is a positive pair
  (the same identity seen at two times: pose, viewpoint, background and occlusion change), so no tracker, clustering
  or memory bank is needed and the cost grows linearly with the data.
* Reliability-guided contrastive loss: matching errors (missed / merged detections, people entering or leaving,
  look-alikes) make some positives noisy; each matched pair gets a reliability score from the matching and weights
  its InfoNCE term, so reliable pairs dominate; negatives are all other instances of the batch.
* Encoder: Swin-B/4 (window 7) on 224 x 224 crops; embedding = unit-norm `Linear(1024, 512)` of the pooled feature.

What hf_ssl implements (`modeling_isr`, `views_isr`):

* `isr` view policy: two frames `g ~ U{1..8}` apart, the stand-in detector (connected components of the ink; see
  the deviations below), one independently augmented crop per detection (random resized crop 0.5-1, flip, colour
  jitter 0.8, grayscale 0.2), up to `max_instances` = 4 per frame, padded + masked.
* `bipartite_match` (scipy `linear_sum_assignment`, maximise), `match_reliability` (dual softmax of the similarity
  matrix, tau_r 0.05: P(j | i) * P(i | j); optional `reliability="similarity"`), `reliability_threshold` (0 = keep all),
  `reliability_weighted_info_nce` (`contrastive_temperature` 0.05) in both directions of each pair; candidates =
  every other real instance of the GLOBAL batch (same frame, other frame, other clips; all-gathered with gradient)
  and the normaliser `sum r` all-reduced, so N processes compute the loss of one process on the concatenated batch.
* Paper defaults kept: Swin-B/4 w7 encoder (stock `SwinModel`), 224 px crops, 512-d linear embedding, cosine
  similarity, Hungarian association, reliability-weighted InfoNCE with in-batch negatives.
* `get_reid_features` = the paper's embedding; `get_image_features` / k-NN / vanilla export = the pooled backbone
  feature (the stock `SwinModel` `pooler_output`).

Presets: `"cpu-demo"` (`hf-ssl pretrain --method isr`): `resnet-tiny` on 32 px crops, 128-d embedding, on
`builtin:moving_digit_pairs` (two same-class real digits moving independently per clip: two "identities" per frame,
merged into one detection in ~45% of frames); k-NN on the largest digit crop of each clip's middle frame
(`isr_eval`). Not a paper setting. Measured (300 steps, batch 64 clips, lr 1e-3, 2 shared CPU cores): k-NN 0.710 ->
0.883 (random init -> trained); with `contrastive_temperature=0.1` 0.893.

Deviations from the paper / official code:

1. The paper text (loss equations, hyper-parameters) was not available to us offline and the official repository has
   no training code; what is documented above comes from the paper's abstract and the released inference code. The
   exact reliability formula, the temperatures (0.05 / 0.05), the reliability threshold (0), the frame-gap range
   (1-8), the crop augmentation and all optimisation settings are OUR choices, not verified paper values: treat
   them as defaults to tune. The reliability is a dual-softmax association probability (or the matched similarity)
   of the frame-to-frame similarity matrix - a reading of "a reliability score from the matching", not the paper's
   equation.
2. Detector: connected components of thresholded ink on the digit clips (`views_isr.detect_instances`) stand in for
   the paper's pedestrian detector; crops are square (person crops in the paper are 224 x 224 after resizing too).
   Touching digits merge into one detection and broken strokes give fragments: the noisy associations the
   reliability weights are meant to absorb.
3. Both crops of a pair are encoded by the same network with gradient (no momentum encoder or memory bank; the
   abstract stresses cost linear in the data). Matching uses the current embeddings without gradient.
4. k-NN / export use the pooled backbone feature (stock `SwinModel` export); the 512-d linear embedding stays in the
   hf_ssl checkpoint (`get_reid_features`).
5. Training from scratch on CPU-sized data; the paper pre-trains Swin-B on 47.8M crops (initialisation not verified).
   From a random initialisation the first associations are arbitrary between look-alike instances (both digits of a
   clip share a class): the reliability weights start low (~0.45) and rise as the matching becomes confident (~0.7
   after 150 demo steps).
6. The cpu-demo uses a small ResNet: a tiny 2-stage Swin (embed 32) with the linear embedding collapsed to a single
   direction under AdamW at this scale (loss stuck at log N, also with plain SimCLR on builtin:digits), so its
   numbers would say nothing about ISR. The paper default stays Swin-B.
"""

from ..registry import MethodSpec
from . import views_isr  # noqa: F401  (registers the "isr" / "isr_eval" view policies and builtin:moving_digit_pairs)
from .configuration_isr import ISRConfig
from .image_processing_isr import ISRImageProcessor
from .modeling_isr import ISRForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="isr",
    config_class=ISRConfig,
    model_class=ISRForSelfSupervisedPretraining,
    image_processor_class=ISRImageProcessor,
    family="contrastive (instance association in video)",
    description=("Instances detected in two frames of a video are associated by maximum-weight bipartite matching; "
                 "matched pairs are positives of a reliability-weighted InfoNCE with negatives from the global batch."),
    presets={
        # small ResNet (a 2-stage Swin collapsed to one direction from scratch at this scale, see DEVIATIONS 6)
        "cpu-demo": dict(backbone_config="resnet-tiny", image_size=32, embedding_dim=128),
    },
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
    default_dataset="builtin:moving_digit_pairs",
)

__all__ = ["ISRConfig", "ISRForSelfSupervisedPretraining", "ISRImageProcessor", "METHOD"]
