"""SMTC: Semantics Meets Temporal Correspondence: Self-supervised Object-centric Learning in Videos.

Rui Qian, Shuangrui Ding, Xian Liu, Dahua Lin. ICCV 2023 (arXiv:2308.09951). Official code:
https://github.com/shvdiwnkozbw/SMTC (`src/train.py`, `src/model/model_twostage.py`, `src/utils.py`).

Method:

* Every frame of a short clip (4 frames, stride 4, 256 px) is encoded by a ViT (DINO ViT-S/16). Each frame's patch
  features are fused with a temporal-correspondence map: the dot products of each token with all tokens of the
  previous frame, projected to the feature width (`transport_proj`), are added to the features.
* Semantic-aware masked slot attention with 16 learnable Gaussians (mean, log-sigma) shared by two stages (3
  iterations each, shared projections / MLP, no GRU, gradients through the last iteration + the initialisation):
  stage 1 starts the semantic slots at the means and yields semantic masks (softmax over slots); stage 2 samples 4
  instance slots from each semantic Gaussian, whose attention is a softmax over the instances of one semantic slot,
  restricted to that slot's semantic area (probability > 0.3).
* Student / teacher: both encode a photometric augmentation of the same clip (grayscale 0.2, colour jitter
  (0.4, 0.4, 0.4, 0.1) p 0.8, blur p 0.5; the same on every frame, no crop); the teacher is an EMA (0.999).
* Losses (weights 1 / 1 / 1): (a) diversity: mean off-diagonal cosine similarity of the slots' spatial masks;
  (b) semantic temporal consistency: for every frame pair i != j, the student's slot distribution at token n of frame
  i is trained towards the teacher's at token m of frame j, weighted by a Sinkhorn optimal-transport plan (eps 0.05,
  3 iterations, cost 1 - cos of teacher tokens, masses = L1 norms of unit tokens); (c) instance temporal consistency:
  per semantic slot, the student's instance embeddings (MLP D-2D-D, unit norm) of frame i are matched to the
  teacher's of frame j by Hungarian matching; valid instances (semantic area > 20 % of the frame, cosine to their
  semantic slot > 0.5) pull their match (times its validity) and push the other instances below cosine 0.5.
* Official optimisation (trainer settings, not part of the model): AdamW lr 2e-5 (cosine to 0.1x), weight decay
  0.04 -> 0.1, 10k iterations, batch 4 x 32; the encoder's lr is 0 for the first 3000 iterations, then 0.01 x lr.

Evaluation. SMTC is an object-discovery method: its losses decompose scenes into objects, they do not teach class
semantics to a randomly initialised encoder (the paper starts from DINO), so clip k-NN is not its measure. The task
metric is object discovery (the paper reports FG-ARI / mIoU of instance masks): `predict_instance_masks` assigns every
token to (argmax semantic slot, argmax instance slot within it) and `hf_ssl.training.object_discovery` scores these
masks against ground-truth instance masks that ship with the data (`builtin:moving_digit_pairs` writes one mask TIFF
per clip under `masks/`, from the same seeded draws as the clip) with FG-ARI (per frame; `video_fg_ari` over a whole
clip, so ids must persist over time) and Hungarian-matched mIoU. Entry points: `model.task_metrics(dataset)` (printed
before / after training by `hf-ssl pretrain`), `hf-ssl evaluate <ckpt> --dataset builtin:moving_digit_pairs
--object-discovery`, `evaluate_object_discovery(model, ...)`. The cpu-demo preset's masks are at token resolution
(4 x 4 tokens of 8 px per 32 px frame), so its scores are coarse. Measured (`hf-ssl pretrain --method smtc`, 300
steps, batch 64, 2 shared CPU cores): FG-ARI 0.138 -> 0.196, video FG-ARI 0.048 -> 0.066, mIoU 0.134 -> 0.184
(random init -> trained); clip k-NN 0.207 -> 0.193 (no class signal, as expected).

Deviations from the paper / official code:

1. Training from scratch instead of from DINO weights (none are bundled, no download): the teacher encoder therefore
   follows the EMA too (`ema_teacher_encoder=True`; official: the teacher encoder keeps the initial DINO weights,
   only the slot modules are averaged), and the encoder trains at the full learning rate (the official 0 / 0.01x
   encoder lr schedule would freeze a random encoder; reproduce it with optimizer parameter groups if starting from
   pretrained weights).
2. Frame features are the stock ViTModel's final patch tokens (`last_hidden_state`); the official model uses the
   keys of the last attention block (not exposed by the stock model).
3. The correlation with the previous frame uses the token grid itself; the official code first resizes the previous
   frame's keys to the training grid (an identity at the training resolution).
4. Instance slots are drawn with the reparameterisation mu + exp(log_sigma) * eps, so both Gaussian parameters are
   learnable as the paper describes; official `torch.normal(mu, sigma)` passes no gradient to them.
5. The semantic area that masks the instance stage is `softmax over slots > 0.3` (the paper's semantic mask); the
   released code thresholds the raw attention logits at 0.3 (it computes the softmax and then overwrites it).
6. The instance-loss normaliser (number of valid student instances) is summed over all processes (`all_reduce`), so
   DDP training equals one process on the concatenated batch; official: per-process normaliser.
7. Data: clips from animated GIF / APNG / TIFF / frame lists (PIL; mp4 only through optional PyAV); a single image
   becomes a flagged synthetic camera-motion clip. The demo data is `builtin:moving_digit_pairs` (two moving real
   digits of one class per clip: one semantic class, two instances). Clip features for k-NN / export = the mean over
   frames of the per-frame pooled ViT features; the vanilla export is the image ViT (apply it frame by frame).
"""

from ..registry import MethodSpec
from . import views_smtc  # noqa: F401  (registers the "smtc" view policy and builtin:moving_digit_pairs)
from .configuration_smtc import SMTCConfig
from .image_processing_smtc import SMTCImageProcessor
from .modeling_smtc import SMTCForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="smtc",
    config_class=SMTCConfig,
    model_class=SMTCForSelfSupervisedPretraining,
    image_processor_class=SMTCImageProcessor,
    family="object-centric (video slots)",
    description=("Semantic-aware masked slot attention over per-frame ViT features fused with a temporal-correspondence "
                 "map; slot-mask diversity + Sinkhorn-weighted semantic consistency + Hungarian-matched instance "
                 "consistency against an EMA teacher."),
    presets={
        # small ViT (8 px patches: 16 tokens per frame), 3-frame clips; two views of 64 clips are encoded every step
        "cpu-demo": dict(backbone_config=dict(model_type="vit", hidden_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=256, patch_size=8),
                         image_size=32, num_frames=3, sampling_rate=4, num_slots=6, num_instances=2,
                         teacher_momentum=0.99, feature_pooling="mean"),
    },
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
    default_dataset="builtin:moving_digit_pairs",
)

__all__ = ["SMTCConfig", "SMTCForSelfSupervisedPretraining", "SMTCImageProcessor", "METHOD"]
