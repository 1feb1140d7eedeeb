"""hf_ssl: self-supervised visual representation learning as HuggingFace transformers models.

`import hf_ssl` registers every method with the transformers Auto classes. Public names are resolved
lazily, so `import hf_ssl` stays cheap for what it does not use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    # core
    "SSLOutput": "hf_ssl.modeling.outputs",
    "SSLConfig": "hf_ssl.modeling.base",
    "SSLPreTrainedModel": "hf_ssl.modeling.base",
    "SSLImageProcessor": "hf_ssl.modeling.base",
    "get_method": "hf_ssl.modeling.registry",
    "available_methods": "hf_ssl.modeling.registry",
    # methods
    "SwAVConfig": "hf_ssl.modeling.swav",
    "SwAVForSelfSupervisedPretraining": "hf_ssl.modeling.swav",
    "SwAVImageProcessor": "hf_ssl.modeling.swav",
    "CAEConfig": "hf_ssl.modeling.cae",
    "CAEForSelfSupervisedPretraining": "hf_ssl.modeling.cae",
    "CAEImageProcessor": "hf_ssl.modeling.cae",
    # training
    "SSLTrainer": "hf_ssl.training.trainer",
    "SSLTrainingArguments": "hf_ssl.training.arguments",
    "load_image_stream": "hf_ssl.training.data",
    "build_view_generator": "hf_ssl.training.data",
    "SSLDataCollator": "hf_ssl.training.data",
    "finetune_with_lora": "hf_ssl.training.downstream",
    # metrics & cards
    "load_metric": "hf_ssl.metrics",
    "render_model_card": "hf_ssl.model_cards",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_ssl' has no attribute {name!r}")


def __dir__():
    return __all__


from .modeling.registry import register_all as _register_all  # noqa: E402

_register_all()
