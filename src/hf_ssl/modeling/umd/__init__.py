"""UMD: Unified Masked Diffusion.

Philippe Hansen-Estruch, Sriram Vishwanath, Amy Zhang, Manan Tomar. "Unified Auto-Encoding with Masked Diffusion",
arXiv:2406.17688, 2024. Official code: https://github.com/philippe-eecs/small-vision (JAX / big_vision;
`models/ae.py`, `trainers/train_ae.py`, `gaussian_diffusion.py`, `configs/ae_i1k.py`).

Method (as in the official trainer):

* An asymmetric ViT auto-encoder (DiT-style) trained with two corruption types in one batch. A fraction
  `no_noise_prob` (0.5) of each batch takes the noise-free *mask step* (t = 0): 75% of the patches are hidden and
  the decoder reconstructs them (MSE on masked pixels, MAE-like). The rest takes a *noise step*: a diffusion index
  i ~ U{0..T-1} (T = 1000, cosine schedule), x_t = sqrt(alpha_bar_i) x0 + sqrt(1 - alpha_bar_i) eps, conditioning
  t = i + 1, 37.5% of the patches of x_t hidden; the decoder predicts both x0 and eps for every patch and the loss
  is the mean of the eps-MSE over visible pixels and the x0-MSE over masked pixels.
* L_UMD = r * L_{t=0} + (1 - r) * L_{t>=1}, r = int(B * no_noise_prob) / B.
* Timestep conditioning: sinusoidal embedding of t -> MLP (Linear 2d, SiLU, Linear d); the decoder blocks are
  adaLN-Zero modulated by SiLU(embedding) and a zero-initialised final shift/scale precedes the prediction layer.
* The decoder has the encoder's width, depth 4 (B), learned position embeddings, one mask token, and receives
  the encoder's class-token representation as a prefix token. Masked tokens never enter the encoder.
* The representation is the encoder's class-token output on the clean image (t = 0), as in the official linear
  probe (`pre_logits`). Pixels are scaled to [-1, 1].

Deviations from the paper / official code:

1. Encoder: the stock transformers `ViTModel` (so `export_encoder` yields a vanilla checkpoint) with one CLS token
   (official: 4 class tokens averaged) and no adaLN. The official encoder blocks are also adaLN-conditioned on t;
   here the encoder gets an *additive* time conditioning `proj(c_t) - proj(c_0)` on every input token, which is
   exactly zero at t = 0 (`encoder_time_conditioning=True`, default), so the exported encoder equals the model's
   clean-image encoder. Set `encoder_time_conditioning=False` for a time-agnostic encoder.
2. Decoder: `heads.MaskedAutoencoderDecoder` with a linear input embedding (official: none, same width; the
   linear map is kept so `decoder_hidden_size` can differ) and pre-norm blocks with a fused key/value projection.
   `time_conditioning="token"` (official `adaln=False` variant) prepends the time embedding once as a prefix token
   instead of re-prepending it in every block.
3. Outputs are predicted per patch as `[x0 patch ; eps patch]` (a linear head) instead of a transposed
   convolution producing 2C channels per pixel: the same linear function class, different parameter layout.
4. No class-label conditioning / classifier-free guidance (only used by the paper's generative fine-tuning), no
   sampling (DDIM) code, no latent-diffusion (VAE) variant, no EMA of parameters (only with labels officially).
5. Initialisation follows the shared trunc-normal(0.02) convention for linears (official: xavier-uniform encoder
   linears, LeCun-normal trunk); adaLN modulations are zero-initialised as officially.
6. Masks are drawn in the model (exact count, uniform) rather than via the input pipeline; callers may pass
   `bool_masked_pos`, `timesteps` and `noise` explicitly (tests, custom schedules).
"""

from ..registry import MethodSpec
from . import views_umd  # noqa: F401  (registers the "umd" view policy)
from .configuration_umd import UMDConfig
from .image_processing_umd import UMDImageProcessor
from .modeling_umd import UMDForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="umd",
    config_class=UMDConfig,
    model_class=UMDForSelfSupervisedPretraining,
    image_processor_class=UMDImageProcessor,
    family="masked image modeling",
    description=(
        "Unified Masked Diffusion: a ViT masked auto-encoder whose timestep-conditioned (adaLN) decoder is a "
        "diffusion denoiser; half the batch takes a noise-free 75%-mask step (MAE loss), half a noised step with "
        "37.5% masking (eps loss on visible + x0 loss on masked pixels)."
    ),
    presets={
        "cpu-demo": dict(backbone_config="vit-micro", image_size=32, decoder_depth=2, decoder_hidden_size=128,
                         decoder_num_heads=4, augmentation={"crop_scale": [0.5, 1.0]}),
    },
)

__all__ = ["UMDConfig", "UMDForSelfSupervisedPretraining", "UMDImageProcessor", "METHOD"]
