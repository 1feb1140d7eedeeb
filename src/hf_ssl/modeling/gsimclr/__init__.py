"""G-SimCLR: Self-Supervised Contrastive Learning with Guided Projection via Pseudo Labelling.

Souradip Chakraborty, Aritra Roy Gosthipaty, Sayak Paul. 2020 International Conference on Data Mining Workshops
(ICDMW), pp. 912-916 (arXiv:2009.12007). Official code (TensorFlow notebooks): https://github.com/ariG23498/G-SimCLR.

Method (paper + official notebooks):

* SimCLR with NT-Xent (temperature 0.1 in the official code), an encoder (ResNet-20 for CIFAR-10, ResNet-50 for the
  ImageNet subset) and a projection MLP Dense(256)-ReLU-Dense(128)-ReLU-Dense(50) without BatchNorm; the loss is the
  mean over the 2B anchors; negatives are both views of every other image in the batch.
* Guidance: pseudo-labels from k-means (k = batch size = 64) of a denoising autoencoder's latent features; images
  of the same pseudo-label should not act as each other's negatives.
* Augmentation (ImageNet-subset notebook): flip 0.5, colour jitter p=0.8 with strength s=1 (brightness/contrast/
  saturation 0.8, hue 0.2), colour drop p=0.2, no random crop (images are resized to 224).

Presets: `"cpu-demo"` - the short CPU run of `hf-ssl pretrain` on the 32 px built-in digits (`resnet-tiny`, 256-128-64
head, temperature 0.2, 10 clusters recomputed every 50 steps from a 2048-entry bank, crops of scale 0.4-1 and
milder colour jitter). Not a paper setting.

Deviations from the paper / official code:

1. Guidance is applied in the loss instead of in the batch sampler: the official code sorts the dataset so that each
   batch of 64 holds (as far as cluster sizes allow) one image per cluster; here every negative that shares the
   anchor's pseudo-label is removed from the NT-Xent denominator (`losses.nt_xent_label_masked`). With at most one
   image per pseudo-label in a batch both are the same loss; the masking form works with streaming data and any
   batch composition.
2. Pseudo-label source: the paper's denoising autoencoder is not trained here. The default `"encoder"` source runs
   a deterministic k-means (k-means++ init seeded by `kmeans_seed`, `kmeans_iterations` Lloyd steps) every
   `pseudo_label_interval` optimizer steps over a FIFO bank of the current encoder's detached, L2-normalized pooled
   features (`normalize(normalize(h1) + normalize(h2))`, all-gathered across processes, so every process gets the
   same centroids); each image of a batch gets the label of its nearest centroid (streaming-friendly, no dataset
   index needed). Until the first k-means run all pseudo-labels are distinct (plain NT-Xent). The paper's recipe is
   available as `pseudo_label_source="provided"`: compute the labels offline (autoencoder latents + k-means) and
   deliver them as `pseudo_labels` in the batch (a custom dataset/collator; the built-in view policies do not
   carry extra columns).
3. The official CIFAR-10 notebook's colour-drop function returns its input unchanged (no grayscale is ever
   applied) and uses weaker jitter (s=0.2, p=0.5); the defaults here follow the ImageNet-subset notebook.
4. Optimizer/schedule (SGD lr 0.1 with cosine decay) belong to the training arguments, not to the config.
"""

from ..registry import MethodSpec
from .configuration_gsimclr import GSimCLRConfig
from .image_processing_gsimclr import GSimCLRImageProcessor
from .modeling_gsimclr import GSimCLRForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "projection_hidden_dims": [256, 128],
    "projection_dim": 64,
    "contrastive_temperature": 0.2,
    "num_clusters": 10,
    "pseudo_label_interval": 50,
    "feature_bank_size": 2048,
    "augmentation": {"crop_scale": [0.4, 1.0], "color_jitter_strength": [0.4, 0.4, 0.4, 0.1]},
}

METHOD = MethodSpec(
    name="gsimclr",
    config_class=GSimCLRConfig,
    model_class=GSimCLRForSelfSupervisedPretraining,
    image_processor_class=GSimCLRImageProcessor,
    family="contrastive",
    description=(
        "SimCLR guided by pseudo-labels: k-means pseudo-labels (of the encoder's features, or provided) remove "
        "same-cluster negatives from the NT-Xent denominator (temperature 0.1, 256-128-50 projection head)."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
)

__all__ = ["GSimCLRConfig", "GSimCLRForSelfSupervisedPretraining", "GSimCLRImageProcessor", "METHOD"]
