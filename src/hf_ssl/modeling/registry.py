"""The method registry: adding a method means adding its folder and ONE line to `METHODS`.

Each method package exposes `METHOD = MethodSpec(...)` in its `__init__.py`. `register_all()` (run on
`import hf_ssl`) registers every config, model and image processor with the transformers Auto classes, so
`AutoConfig/AutoModel/AutoModelForPreTraining/AutoImageProcessor.from_pretrained(dir)` work.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Dict, Type

# name -> module path. One line per method.
METHODS: Dict[str, str] = {
    "mochi": "hf_ssl.modeling.mochi",
    "gsimclr": "hf_ssl.modeling.gsimclr",
    "interclr": "hf_ssl.modeling.interclr",
    "obow": "hf_ssl.modeling.obow",
    "swav": "hf_ssl.modeling.swav",
    "clip": "hf_ssl.modeling.clip",
    "cae": "hf_ssl.modeling.cae",
    "umd": "hf_ssl.modeling.umd",
    "fsfm": "hf_ssl.modeling.fsfm",
    "mfm": "hf_ssl.modeling.mfm",
    "satvision": "hf_ssl.modeling.satvision",
    "cropmae": "hf_ssl.modeling.cropmae",
    "croco": "hf_ssl.modeling.croco",
    "genview": "hf_ssl.modeling.genview",
    "chada_vit": "hf_ssl.modeling.chada_vit",
    "groco": "hf_ssl.modeling.groco",
    "rpp": "hf_ssl.modeling.rpp",
    "mixedae": "hf_ssl.modeling.mixedae",
    "sit": "hf_ssl.modeling.sit",
    "semaim": "hf_ssl.modeling.semaim",
    "pixpro": "hf_ssl.modeling.pixpro",
    "sie": "hf_ssl.modeling.sie",
    "denseclip": "hf_ssl.modeling.denseclip",
    "composed_retrieval": "hf_ssl.modeling.composed_retrieval",
    "align": "hf_ssl.modeling.align",
    "dreamlip": "hf_ssl.modeling.dreamlip",
    "modx": "hf_ssl.modeling.modx",
    "record_linkage": "hf_ssl.modeling.record_linkage",
    "vse": "hf_ssl.modeling.vse",
    "char_sentence": "hf_ssl.modeling.char_sentence",
    "lvm_med": "hf_ssl.modeling.lvm_med",
    "heuristic_mtl": "hf_ssl.modeling.heuristic_mtl",
    "tips": "hf_ssl.modeling.tips",
    "villa": "hf_ssl.modeling.villa",
    "videomae": "hf_ssl.modeling.videomae",
    "crossvideomae": "hf_ssl.modeling.crossvideomae",
    "rspnet": "hf_ssl.modeling.rspnet",
    "i2p_mae": "hf_ssl.modeling.i2p_mae",
    "madeleine": "hf_ssl.modeling.madeleine",
    "gist": "hf_ssl.modeling.gist",
    "grasp2vec": "hf_ssl.modeling.grasp2vec",
    "nerf_mae": "hf_ssl.modeling.nerf_mae",
    "transitive_invariance": "hf_ssl.modeling.transitive_invariance",
    "gfslt_vlp": "hf_ssl.modeling.gfslt_vlp",
    "smtc": "hf_ssl.modeling.smtc",
    "isr": "hf_ssl.modeling.isr",
    "cmd": "hf_ssl.modeling.cmd",
    "solider": "hf_ssl.modeling.solider",
    "image_volume_clustering": "hf_ssl.modeling.image_volume_clustering",
    "alice": "hf_ssl.modeling.alice",
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_class: Type
    model_class: Type
    image_processor_class: Type
    family: str = ""  # "clustering", "contrastive", "masked image modeling", ...
    description: str = ""
    presets: Dict[str, dict] = field(default_factory=dict)  # named config presets (e.g. SEER for SwAV)
    # trainer settings of the "cpu-demo" run (`hf-ssl pretrain` defaults): max_steps, learning_rate, and optionally
    # any other `SSLTrainingArguments` field (e.g. freeze_last_layer_steps)
    demo_training: Dict[str, float] = field(default_factory=dict)
    # the dataset `hf-ssl pretrain --method <name>` and the reliability battery use when none is given
    # (a built-in source such as "builtin:digits"; video / volume methods name their own built-in data)
    default_dataset: str = "builtin:digits"

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    def make_config(self, preset: str = None, **kwargs):
        if preset is not None:
            if preset not in self.presets:
                raise ValueError(f"{self.name} has no preset {preset!r}; presets: {sorted(self.presets)}")
            kwargs = {**self.presets[preset], **kwargs}
        return self.config_class(**kwargs)


_LOADED: Dict[str, MethodSpec] = {}


def get_method(name: str) -> MethodSpec:
    key = name.lower().replace("-", "_")
    if key.startswith("hf_ssl_"):
        key = key[len("hf_ssl_"):]
    if key not in METHODS:
        raise ValueError(f"Unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    if key not in _LOADED:
        spec = importlib.import_module(METHODS[key]).METHOD
        _register(spec)
        _LOADED[key] = spec
    return _LOADED[key]


def _register(spec: MethodSpec) -> None:
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForPreTraining

    AutoConfig.register(spec.model_type, spec.config_class, exist_ok=True)
    AutoModel.register(spec.config_class, spec.model_class, exist_ok=True)
    AutoModelForPreTraining.register(spec.config_class, spec.model_class, exist_ok=True)
    AutoImageProcessor.register(spec.config_class, image_processor_classes={"pil": spec.image_processor_class},
                                exist_ok=True)


def register_all() -> Dict[str, MethodSpec]:
    return {name: get_method(name) for name in METHODS}


def available_methods():
    return sorted(METHODS)


__all__ = ["METHODS", "MethodSpec", "get_method", "register_all", "available_methods"]
