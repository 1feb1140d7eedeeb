"""Base classes every method builds on: `SSLConfig`, `SSLPreTrainedModel`, `SSLImageProcessor`."""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, Optional, Union

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .backbones import backbone_family, build_backbone, check_pixel_values, encode, resolve_backbone_config

# Training-time augmentation policy. It lives in the config (so it is saved, pushed and shown in the model
# card) and `hf_ssl.training.data.build_view_generator` turns it into a callable. Methods override keys.
DEFAULT_AUGMENTATION: Dict[str, Any] = {
    "policy": "two_view",  # name of a view policy registered in hf_ssl.training.data
    "crop_scale": [0.2, 1.0],
    "horizontal_flip": 0.5,
    "color_jitter": 0.8,  # probability
    "color_jitter_strength": [0.4, 0.4, 0.4, 0.1],  # brightness, contrast, saturation, hue
    "grayscale": 0.2,
    "gaussian_blur": 0.0,
    "solarize": 0.0,
}


class SSLConfig(PretrainedConfig):
    """Configuration shared by every hf_ssl method.

    Args:
        backbone_config: the encoder, as a transformers config, a dict with `model_type`, or a preset name
            from `hf_ssl.modeling.backbones.BACKBONE_PRESETS` (e.g. `"resnet-50"`, `"vit-small"`).
        image_size: training/inference resolution of global views (also the ViT position grid).
        num_channels: input channels (3 for RGB; any count for multi-band data).
        feature_pooling: `"cls"` or `"mean"` pooling of ViT tokens for `get_image_features`.
        augmentation: the training view policy (see `DEFAULT_AUGMENTATION`); keys given here override the
            method's defaults.
        image_mean, image_std: normalization used by both the image processor and the training views.
    """

    model_type = "hf_ssl"
    sub_configs = {"backbone_config": AutoConfig}
    # class-level metadata used by the registry, README table and model cards
    # (left unannotated on purpose: PretrainedConfig turns annotated class attributes into dataclass fields)
    paper_title = ""
    paper_url = ""
    citation = ""
    default_backbone = "resnet-50"
    default_augmentation = {}

    def __init_subclass__(cls, **kwargs):
        # transformers 5 turns config subclasses into dataclasses, which gives a subclass without its own
        # __init__ a generated one that would bypass ours; keep the inherited __init__ in that case.
        own_init = "__init__" in cls.__dict__
        super().__init_subclass__(**kwargs)
        if not own_init:
            cls.__init__ = cls.__mro__[1].__init__

    def __init__(
        self,
        backbone_config: Union[None, str, dict, PretrainedConfig] = None,
        image_size: int = 224,
        num_channels: int = 3,
        feature_pooling: str = "cls",
        augmentation: Optional[Dict[str, Any]] = None,
        image_mean=None,
        image_std=None,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.image_size = image_size
        self.num_channels = num_channels
        self.backbone_config = resolve_backbone_config(
            backbone_config, self.default_backbone, image_size=image_size, num_channels=num_channels
        )
        self.feature_pooling = feature_pooling
        policy = copy.deepcopy(DEFAULT_AUGMENTATION)
        policy.update(copy.deepcopy(self.default_augmentation))
        policy.update(augmentation or {})
        self.augmentation = policy
        self.image_mean = list(image_mean) if image_mean is not None else list(IMAGENET_DEFAULT_MEAN)[:num_channels]
        self.image_std = list(image_std) if image_std is not None else list(IMAGENET_DEFAULT_STD)[:num_channels]
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_ssl()

    def validate_ssl(self) -> None:
        """Raise a clear error for nonsense settings; methods extend this (call super)."""
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.feature_pooling not in ("cls", "mean"):
            raise ValueError(f"feature_pooling must be 'cls' or 'mean', got {self.feature_pooling!r}")
        self._check_backbone_channels()
        if len(self.image_mean) != self.num_channels or len(self.image_std) != self.num_channels:
            raise ValueError(
                f"image_mean/image_std need one value per channel ({self.num_channels}); got "
                f"{len(self.image_mean)} and {len(self.image_std)}. Pass them explicitly for multi-band data."
            )
        if any(s <= 0 for s in self.image_std):
            raise ValueError("image_std values must be positive")
        if "intensity_normalization" in self.augmentation:  # volume policies' per-volume intensity preprocessing
            from ..training.volumes import intensity_settings

            intensity_settings(self.augmentation)
        if backbone_family(self.backbone_config) == "vit":
            patch = self.backbone_config.patch_size
            if self.image_size % patch:
                raise ValueError(f"image_size {self.image_size} must be divisible by the ViT patch size {patch}")

    def _check_backbone_channels(self) -> None:
        """The encoder sees the data's channels (methods that embed channels separately override this)."""
        bb_channels = getattr(self.backbone_config, "num_channels", self.num_channels)
        if bb_channels != self.num_channels:
            raise ValueError(
                f"num_channels={self.num_channels} but backbone_config.num_channels={bb_channels}; they must match."
            )

    @staticmethod
    def _check_positive(**values):
        for name, value in values.items():
            if value is None or value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @staticmethod
    def _check_non_negative(**values):
        """Loss weights, margins and the like: each value must be >= 0."""
        for name, value in values.items():
            if value is None or value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    @staticmethod
    def _check_integer(minimum, **values):
        """Counts, widths and depths: each value must be an int (not a bool) >= `minimum`."""
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

    @staticmethod
    def _check_range(name, value, low, high, low_inclusive=True, high_inclusive=False):
        ok_low = value >= low if low_inclusive else value > low
        ok_high = value <= high if high_inclusive else value < high
        if not (ok_low and ok_high):
            lb = "[" if low_inclusive else "("
            hb = "]" if high_inclusive else ")"
            raise ValueError(f"{name} must be in {lb}{low}, {high}{hb}, got {value}")


class SSLPreTrainedModel(PreTrainedModel):
    """Base of every `XxxForSelfSupervisedPretraining`.

    Subclasses create `self.encoder` (a stock transformers backbone from `config.backbone_config`) and
    implement `forward(pixel_values=..., ..., return_dict=True) -> SSLOutput`. They may override
    `on_step_end(step, max_steps)` (called by `SSLTrainer` after each optimizer step) for EMA updates,
    queues and schedules.
    """

    config_class = SSLConfig
    base_model_prefix = "ssl"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    # which encoder `export_encoder` writes by default ("encoder" or "teacher_encoder")
    export_attribute = "encoder"
    # Methods whose main input is not an image batch (video clips `[B, T, C, H, W]`, volumes, point sets) set
    # `main_input_name` (e.g. "pixel_values_videos"), the axis that holds channels (None: no channel axis) and
    # override `get_input_features`; evaluation, the CLI and the reliability battery use these three.
    input_channel_dim = 1

    def _build_encoder(self) -> nn.Module:
        return build_backbone(self.config.backbone_config)

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)

    # -- encoder access -----------------------------------------------------------------------------
    def get_encoder(self) -> nn.Module:
        return self.encoder

    def get_input_embeddings(self):
        emb = getattr(self.encoder, "embeddings", None)
        return getattr(emb, "patch_embeddings", emb)

    def check_pixel_values(self, pixel_values, name="pixel_values"):
        check_pixel_values(pixel_values, self.config.num_channels, name)

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor, pooling: Optional[str] = None) -> torch.Tensor:
        """Pooled embedding `[B, D]` of the exported encoder (what k-NN, retrieval and plots use)."""
        self.check_pixel_values(pixel_values)
        encoder = getattr(self, self.export_attribute)
        return encode(encoder, pixel_values, pooling or self.config.feature_pooling)

    def get_input_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pooled embedding `[B, D]` of a batch of the model's main input (`main_input_name`): images for most
        methods; video / volume / point-set methods override this (k-NN evaluation and the battery call it)."""
        return self.get_image_features(inputs)

    # -- parameters that never take gradients ----------------------------------------------------------
    def frozen_parameter_prefixes(self) -> tuple:
        """Name prefixes of parameters that never receive gradients: EMA teachers by default; methods add
        fixed embeddings. transformers 5 `from_pretrained` hands loaded parameters back with
        `requires_grad=True`, so the freeze is re-applied by `train()` / `eval()` (the Trainer calls
        `train()`, `from_pretrained` ends with `eval()`). A config with `encoder_sincos_pos_embed=True` (MAE-style
        fixed sin-cos positions, filled by `backbones.init_sincos_position_embeddings_`) also freezes the encoder's
        position table."""
        prefixes = ("teacher_encoder.",)
        if getattr(self.config, "encoder_sincos_pos_embed", False):
            prefixes += ("encoder.embeddings.position_embeddings",)
        return prefixes

    def apply_frozen_parameters_(self) -> None:
        prefixes = self.frozen_parameter_prefixes()
        if prefixes:
            for name, param in self.named_parameters():
                if name.startswith(prefixes):
                    param.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.apply_frozen_parameters_()
        return self

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Called by SSLTrainer after every optimizer step (global step count, total steps)."""

    # -- host mirrors of integer state buffers ----------------------------------------------------------
    # Step counters, queue pointers and flags live in 0-d buffers (saved, resumed, moved with the model). Reading
    # one with int() in the training step is a device->host sync on a GPU. `host_int` keeps a Python mirror that
    # is valid while the buffer is the same tensor at the same version (`Tensor._version` counts in-place writes:
    # loading a state dict, re-initialisation or a DDP buffer broadcast bump it, and the next read goes to the
    # device once); `set_host_int` / `add_host_int` write buffer and mirror together.
    def _host_key(self, name: str):
        buf = getattr(self, name)
        return buf, (id(buf), buf.data_ptr(), buf._version)

    def host_int(self, name: str) -> int:
        """The value of the 0-d integer (or bool) buffer `name`, read from the device only when it changed
        outside `set_host_int` / `add_host_int`."""
        mirrors = self.__dict__.setdefault("_host_mirrors", {})
        buf, key = self._host_key(name)
        cached = mirrors.get(name)
        if cached is None or cached[0] != key:
            cached = (key, int(buf))
            mirrors[name] = cached
        return cached[1]

    def set_host_int(self, name: str, value: int) -> None:
        """Write `value` to the buffer `name` (no host read) and to its mirror."""
        value = int(value)
        getattr(self, name).fill_(value)
        self.__dict__.setdefault("_host_mirrors", {})[name] = (self._host_key(name)[1], value)

    def add_host_int(self, name: str, delta: int = 1) -> int:
        """`buffer += delta` through the mirror; returns the new value."""
        value = self.host_int(name) + int(delta)
        self.set_host_int(name, value)
        return value

    # -- export -------------------------------------------------------------------------------------
    def export_encoder(self, save_directory: Union[str, os.PathLike], image_processor=None,
                       attribute: Optional[str] = None, push_to_hub: bool = False, **push_kwargs) -> str:
        """Write the encoder as a vanilla transformers checkpoint (config + safetensors + a stock image
        processor) that `AutoModel.from_pretrained(save_directory)` loads without hf_ssl installed."""
        encoder = getattr(self, attribute or self.export_attribute)
        os.makedirs(save_directory, exist_ok=True)
        encoder.save_pretrained(save_directory, safe_serialization=True)
        processor = image_processor or SSLImageProcessor.from_ssl_config(self.config)
        stock = processor.to_stock_dict()
        with open(os.path.join(save_directory, "preprocessor_config.json"), "w") as f:
            json.dump(stock, f, indent=2)
        with open(os.path.join(save_directory, "hf_ssl_export.json"), "w") as f:
            json.dump({"method": self.config.model_type, "exported_attribute": attribute or self.export_attribute,
                       "feature_pooling": self.config.feature_pooling,
                       "input_name": getattr(encoder, "main_input_name", "pixel_values")}, f, indent=2)
        if push_to_hub:
            from huggingface_hub import HfApi

            repo_id = push_kwargs.pop("repo_id")
            api = HfApi(token=push_kwargs.pop("token", None))
            api.create_repo(repo_id, exist_ok=True, private=push_kwargs.pop("private", None))
            api.upload_folder(folder_path=str(save_directory), repo_id=repo_id,
                              commit_message=push_kwargs.pop("commit_message", "Upload exported encoder"))
        return str(save_directory)


class SSLImageProcessor(PilBackend):
    """Inference preprocessing shared by every method (PIL/numpy backend, no torchvision needed):
    resize the shorter side to `size["shortest_edge"]`, center crop to `crop_size`, rescale to [0, 1],
    normalize. Methods subclass it only to change defaults."""

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = list(IMAGENET_DEFAULT_MEAN)
    image_std = list(IMAGENET_DEFAULT_STD)
    size = {"shortest_edge": 256}
    crop_size = {"height": 224, "width": 224}
    default_to_square = False
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = None

    @classmethod
    def from_ssl_config(cls, config: SSLConfig, **kwargs):
        """Processor matching a config's resolution and normalization (resize to size/0.875, crop to size)."""
        size = config.image_size
        kwargs.setdefault("size", {"shortest_edge": int(round(size / 0.875))})
        kwargs.setdefault("crop_size", {"height": size, "width": size})
        kwargs.setdefault("image_mean", list(config.image_mean))
        kwargs.setdefault("image_std", list(config.image_std))
        if config.num_channels != 3:
            kwargs.setdefault("do_convert_rgb", False)
        return cls(**kwargs)

    def to_stock_dict(self) -> dict:
        """The same preprocessing expressed as transformers' stock `BitImageProcessor` (resize shorter side,
        center crop, normalize), so exported encoders need no hf_ssl to preprocess."""
        d = self.to_dict()
        keep = ["do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                "do_normalize", "image_mean", "image_std", "do_convert_rgb"]
        out = {k: d[k] for k in keep if k in d}
        out["image_processor_type"] = "BitImageProcessor"
        return out


__all__ = ["SSLConfig", "SSLPreTrainedModel", "SSLImageProcessor", "DEFAULT_AUGMENTATION"]
