"""Mod-X configuration (Ni et al., "Continual Vision-Language Representation Learning with Off-Diagonal
Information", ICML 2023)."""

from __future__ import annotations

from typing import Optional

from ..clip.configuration_clip import CLIPSSLConfig


class ModXConfig(CLIPSSLConfig):
    r"""Configuration of :class:`ModXForSelfSupervisedPretraining`: a CLIP dual encoder (all CLIP arguments apply)
    trained continually with off-diagonal distillation from a frozen copy of the previous model.

    Args:
        old_model_name_or_path: local folder of the previous phase's checkpoint (an `hf_ssl_clip` or `hf_ssl_modx`
            `save_pretrained` folder). Both the new model and the frozen old model start from it (official code:
            the new model is initialised from the old checkpoint). None: the old model is a snapshot of the new
            model taken at construction (e.g. after you load weights yourself, call `snapshot_old_model()`).
        distillation_weight: alpha in `L = L_CLIP + alpha * L_KL` (official 5-phase scripts: 20).
        distillation_temperature: temperature of the softmax over rows of the cosine-similarity matrices in the KL
            term (official code: 1, i.e. raw cosine similarities, no logit scale).
        screen_old_errors: drop the rows where the old model's most similar item is not the paired one (official
            `cognition_align`: such a row of the old matrix is replaced by the new model's row, which makes its KL
            and its gradient zero).
        distillation_reduction: `"sum"` over rows (official `F.kl_div(..., reduction="sum")`) or `"mean"`.
    """

    model_type = "hf_ssl_modx"
    paper_title = "Continual Vision-Language Representation Learning with Off-Diagonal Information"
    paper_url = "https://arxiv.org/abs/2305.07437"
    citation = (
        "@inproceedings{ni2023continual,\n"
        "  title={Continual Vision-Language Representation Learning with Off-Diagonal Information},\n"
        "  author={Ni, Zixuan and Wei, Longhui and Tang, Siliang and Zhuang, Yueting and Tian, Qi},\n"
        "  booktitle={International Conference on Machine Learning (ICML)},\n"
        "  year={2023}\n"
        "}"
    )

    def __init__(self, old_model_name_or_path: Optional[str] = None, distillation_weight: float = 20.0,
                 distillation_temperature: float = 1.0, screen_old_errors: bool = True,
                 distillation_reduction: str = "sum", **kwargs):
        self.old_model_name_or_path = old_model_name_or_path
        self.distillation_weight = distillation_weight
        self.distillation_temperature = distillation_temperature
        self.screen_old_errors = screen_old_errors
        self.distillation_reduction = distillation_reduction
        super().__init__(**kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(distillation_temperature=self.distillation_temperature)
        self._check_non_negative(distillation_weight=self.distillation_weight)
        if self.distillation_reduction not in ("sum", "mean"):
            raise ValueError(f"distillation_reduction must be 'sum' or 'mean', got {self.distillation_reduction!r}")
        if self.old_model_name_or_path is not None and not isinstance(self.old_model_name_or_path, str):
            raise ValueError("old_model_name_or_path must be a local checkpoint folder (str) or None")
