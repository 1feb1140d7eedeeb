"""CrossVideoMAE configuration (Ahamed et al., "CrossVideoMAE: Self-Supervised Image-Video Representation Learning with
Masked Autoencoders", WACV 2025)."""

from __future__ import annotations

from transformers import AutoConfig

from ..backbones import backbone_family, resolve_backbone_config
from ..video_base import VideoSSLConfig


class CrossVideoMAEConfig(VideoSSLConfig):
    r"""Configuration of :class:`CrossVideoMAEForSelfSupervisedPretraining`.

    Args:
        backbone_config: the video encoder, a stock VideoMAEModel (default `"videomae-base"`, ViT-B/16, tubelet 2).
        image_backbone_config: the frame (image) encoder, a stock ViT (default `"vit-base"`, ViT-B/16 as in the paper).
        num_frames / sampling_rate: 16 frames, 4 apart (the paper follows VideoMAE's sampling).
        video_mask_type / video_mask_ratio: VideoMAE tube masking, 0.9 (paper: 90-95% best).
        image_mask_ratio: random patch masking of the sampled frame, 0.75 (paper: 75-90%).
        decoder_hidden_size / decoder_depth / decoder_num_heads: the VideoMAE decoder (384 / 4 / 6 for ViT-B).
        image_decoder_hidden_size / image_decoder_depth / image_decoder_num_heads: the frame MAE decoder (MAE: 512 / 8 /
            16).
        norm_pix_loss: per-tube / per-patch normalized pixel targets (VideoMAE / MAE default).
        projection_hidden_dim / projection_dim: the 2-layer MLP heads mapping pooled visible-token features of each
            branch into the shared feature-invariant space (2048 / 256; not given in the paper).
        contrastive_temperature: NT-Xent temperature of the intra- and cross-modal terms (0.1; not given in the paper).
        intra_weight / cross_weight / image_reconstruction_weight: loss weights (1 / 1 / 1).
        freeze_image_encoder: keep the frame encoder fixed (the paper's image branch is a pre-trained MAE; load its
            weights into `model.image_encoder` and set True); the frame reconstruction term is then dropped.
        augmentation: `crossvideomae` policy: both clips share the sampled window; each gets its own clip-consistent
            random resized crop (scale 0.4-1), flip, colour jitter (0.8: 0.4/0.4/0.4/0.1) and grayscale (0.2); the
            frame is one random frame of the window with its own crop / flip / jitter.
    """

    model_type = "hf_ssl_crossvideomae"
    sub_configs = {"backbone_config": AutoConfig, "image_backbone_config": AutoConfig}
    paper_title = "CrossVideoMAE: Self-Supervised Image-Video Representation Learning with Masked Autoencoders"
    paper_url = "https://arxiv.org/abs/2502.07811"
    citation = (
        "@inproceedings{ahamed2025crossvideomae,\n"
        "  title={CrossVideoMAE: Self-Supervised Image-Video Representation Learning with Masked Autoencoders},\n"
        "  author={Ahamed, Shihab Aaqil and Gunawardhana, Malitha and David, Liel and Sidorov, Michael and Harari, "
        "Daniel and Khan, Muhammad Haris},\n"
        "  booktitle={IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},\n"
        "  year={2025}\n"
        "}"
    )
    default_backbone = "videomae-base"
    default_image_backbone = "vit-base"
    default_augmentation = {
        "policy": "crossvideomae",
        "eval_policy": "video_eval",
        "crop": "resized",
        "crop_scale": [0.4, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.4, 0.1],
        "grayscale": 0.2,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
        "frame_crop_scale": [0.4, 1.0],
        "single_image_clip": "camera",
    }

    def __init__(self, backbone_config=None, image_backbone_config=None, num_frames: int = 16, sampling_rate: int = 4,
                 image_size: int = 224, video_mask_type: str = "tube", video_mask_ratio: float = 0.9,
                 image_mask_ratio: float = 0.75, decoder_hidden_size: int = 384, decoder_depth: int = 4,
                 decoder_num_heads: int = 6, image_decoder_hidden_size: int = 512, image_decoder_depth: int = 8,
                 image_decoder_num_heads: int = 16, norm_pix_loss: bool = True, projection_hidden_dim: int = 2048,
                 projection_dim: int = 256, contrastive_temperature: float = 0.1, intra_weight: float = 1.0,
                 cross_weight: float = 1.0, image_reconstruction_weight: float = 1.0,
                 freeze_image_encoder: bool = False, num_channels: int = 3, **kwargs):
        self.video_mask_type = video_mask_type
        self.video_mask_ratio = video_mask_ratio
        self.image_mask_ratio = image_mask_ratio
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.image_decoder_hidden_size = image_decoder_hidden_size
        self.image_decoder_depth = image_decoder_depth
        self.image_decoder_num_heads = image_decoder_num_heads
        self.norm_pix_loss = norm_pix_loss
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.contrastive_temperature = contrastive_temperature
        self.intra_weight = intra_weight
        self.cross_weight = cross_weight
        self.image_reconstruction_weight = image_reconstruction_weight
        self.freeze_image_encoder = freeze_image_encoder
        self.image_backbone_config = resolve_backbone_config(image_backbone_config, self.default_image_backbone,
                                                             image_size=image_size, num_channels=num_channels)
        super().__init__(backbone_config=backbone_config, num_frames=num_frames, sampling_rate=sampling_rate,
                         image_size=image_size, num_channels=num_channels, **kwargs)

    # the policy and the battery read `mask_type` / `mask_ratio` of a video config
    @property
    def mask_type(self) -> str:
        return self.video_mask_type

    @property
    def mask_ratio(self) -> float:
        return self.video_mask_ratio

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if self.video_mask_type not in ("tube", "random"):
            raise ValueError(f"video_mask_type must be 'tube' or 'random', got {self.video_mask_type!r}")
        self._check_range("video_mask_ratio", self.video_mask_ratio, 0.0, 1.0, low_inclusive=False)
        self._check_range("image_mask_ratio", self.image_mask_ratio, 0.0, 1.0, low_inclusive=False)
        ib = self.image_backbone_config
        if backbone_family(ib) != "vit":
            raise ValueError(f"image_backbone_config must be a ViT, got model_type {ib.model_type!r}")
        if getattr(ib, "num_channels", self.num_channels) != self.num_channels:
            raise ValueError(f"image_backbone_config.num_channels={ib.num_channels} but num_channels="
                             f"{self.num_channels}")
        if self.image_size % ib.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by the image patch size {ib.patch_size}")
        t, h, w = self.token_grid
        per = h * w if self.video_mask_type == "tube" else t * h * w
        if int(round(per * self.video_mask_ratio)) in (0, per):
            raise ValueError(f"video_mask_ratio={self.video_mask_ratio} leaves no masked or no visible token")
        n_img = (self.image_size // ib.patch_size) ** 2
        if int(round(n_img * self.image_mask_ratio)) in (0, n_img):
            raise ValueError(f"image_mask_ratio={self.image_mask_ratio} leaves no masked or no visible patch")
        for name in ("decoder_hidden_size", "decoder_depth", "decoder_num_heads", "image_decoder_hidden_size",
                     "image_decoder_depth", "image_decoder_num_heads", "projection_hidden_dim", "projection_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.decoder_hidden_size % self.decoder_num_heads:
            raise ValueError("decoder_hidden_size must be divisible by decoder_num_heads")
        if self.image_decoder_hidden_size % self.image_decoder_num_heads or self.image_decoder_hidden_size % 4:
            raise ValueError("image_decoder_hidden_size must be divisible by image_decoder_num_heads and by 4")
        self._check_positive(contrastive_temperature=self.contrastive_temperature)
        self._check_non_negative(intra_weight=self.intra_weight, cross_weight=self.cross_weight,
                                 image_reconstruction_weight=self.image_reconstruction_weight)


__all__ = ["CrossVideoMAEConfig"]
