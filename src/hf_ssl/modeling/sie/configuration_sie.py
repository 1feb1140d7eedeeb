"""SIE configuration (Garrido et al., "Self-supervised learning of Split Invariant Equivariant representations")."""

from __future__ import annotations

from typing import Optional, Sequence

from ..backbones import feature_dim
from ..base import SSLConfig

NUM_VIEW_PARAMS = 7  # see views_sie.SIEViewPolicy: (dcx, dcy, dlog_w, dlog_h, dflip, dbrightness, dcontrast)


class SIEConfig(SSLConfig):
    r"""Configuration of :class:`SIEForSelfSupervisedPretraining`.

    Defaults follow the official SIE command of the README (`--experience SIE --arch resnet18 --equi 256
    --mlp 2048-2048-2048 --sim-coeff 10 --std-coeff 10 --cov-coeff 1 --equi-factor 0.45 --hypernetwork linear`,
    Adam lr 1e-3, batch 1024, 256 px 3DIEBench images).

    Args:
        backbone_config: the encoder (default `"resnet-18"`, 512-d representation).
        equivariant_dim: the LAST `equivariant_dim` dimensions of the representation form the equivariant part,
            the first `D - equivariant_dim` the invariant part (official `--equi 256`).
        projection_dims: widths of the projector MLP (official `--mlp 2048-2048-2048`). Each part has its own
            projector whose widths are these scaled by the part's share of the representation (rounded), as in
            the official code: Linear-BN-ReLU blocks, last Linear without bias.
        projection_batch_norm: BatchNorm1d in the projectors' hidden blocks (official True).
        num_transformation_params: size of the transformation-parameter vector given to the hypernetwork (official
            4, a quaternion; here 7, the relative 2-D view parameters of `views_sie`).
        hypernetwork: `"linear"` (one Linear layer, official default) or `"deep"` (3 Linear layers with ReLU of
            width `num_transformation_params`, official `--hypernetwork deep`).
        predictor_hidden_dims: hidden widths of the predictor whose weights the hypernetwork generates (official
            `--predictor ""`: a single equi_emb x equi_emb matrix).
        predictor_relu: ReLU between predictor layers (official `--predictor-relu`, off).
        predictor_bias: the hypernetwork also generates predictor biases (official `--bias-pred`, off).
        hypernetwork_bias: biases in the hypernetwork's Linear layers (official `--bias-hypernet`, off).
        sim_coeff: weight of the invariance MSE (official `--sim-coeff 10`).
        equi_factor: the equivariance MSE is weighted `equi_factor * sim_coeff` (official README 0.45).
        std_coeff: weight of the variance hinge terms (official 10), applied to both views' full embeddings and
            to the predictions.
        cov_coeff: weight of the covariance term on both views' full [inv, equi] embeddings (official 1).
        augmentation: the `"sie"` view policy (see `views_sie`).
    """

    model_type = "hf_ssl_sie"
    paper_title = "Self-supervised learning of Split Invariant Equivariant representations"
    paper_url = "https://arxiv.org/abs/2302.02809"
    citation = (
        "@inproceedings{garrido2023sie,\n"
        "  title={Self-supervised learning of Split Invariant Equivariant representations},\n"
        "  author={Garrido, Quentin and Najman, Laurent and LeCun, Yann},\n"
        "  booktitle={International Conference on Machine Learning (ICML)},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "resnet-18"
    default_augmentation = {
        "policy": "sie",
        "crop_scale": [0.3, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "brightness": 0.4,
        "contrast": 0.4,
    }

    def __init__(
        self,
        backbone_config=None,
        image_size: int = 256,
        equivariant_dim: int = 256,
        projection_dims: Sequence[int] = (2048, 2048, 2048),
        projection_batch_norm: bool = True,
        num_transformation_params: int = NUM_VIEW_PARAMS,
        hypernetwork: str = "linear",
        predictor_hidden_dims: Sequence[int] = (),
        predictor_relu: bool = False,
        predictor_bias: bool = False,
        hypernetwork_bias: bool = False,
        sim_coeff: float = 10.0,
        equi_factor: float = 0.45,
        std_coeff: float = 10.0,
        cov_coeff: float = 1.0,
        feature_pooling: str = "cls",
        augmentation: Optional[dict] = None,
        **kwargs,
    ):
        self.equivariant_dim = int(equivariant_dim)
        self.projection_dims = [int(d) for d in projection_dims]
        self.projection_batch_norm = bool(projection_batch_norm)
        self.num_transformation_params = int(num_transformation_params)
        self.hypernetwork = hypernetwork
        self.predictor_hidden_dims = [int(d) for d in (predictor_hidden_dims or [])]
        self.predictor_relu = bool(predictor_relu)
        self.predictor_bias = bool(predictor_bias)
        self.hypernetwork_bias = bool(hypernetwork_bias)
        self.sim_coeff = float(sim_coeff)
        self.equi_factor = float(equi_factor)
        self.std_coeff = float(std_coeff)
        self.cov_coeff = float(cov_coeff)
        super().__init__(backbone_config=backbone_config, image_size=image_size, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)
        self._validate_sie()

    def _validate_sie(self) -> None:
        if self.hypernetwork not in ("linear", "deep"):
            raise ValueError(f"hypernetwork must be 'linear' or 'deep', got {self.hypernetwork!r}")
        if not self.projection_dims or any(d <= 0 for d in self.projection_dims):
            raise ValueError(f"projection_dims must be non-empty positive widths, got {self.projection_dims}")
        if any(d <= 0 for d in self.predictor_hidden_dims):
            raise ValueError(f"predictor_hidden_dims must be positive, got {self.predictor_hidden_dims}")
        if self.num_transformation_params < 1:
            raise ValueError(f"num_transformation_params must be >= 1, got {self.num_transformation_params}")
        for name in ("sim_coeff", "equi_factor", "std_coeff", "cov_coeff"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        dim = feature_dim(self.backbone_config)
        if not 0 < self.equivariant_dim < dim:
            raise ValueError(f"equivariant_dim must be in (0, {dim}) for this backbone (representation size {dim}), "
                             f"got {self.equivariant_dim}")
        if min(self.part_projection_dims(self.invariant_dim)) < 1 or min(
                self.part_projection_dims(self.equivariant_dim)) < 1:
            raise ValueError("projection_dims scaled to the invariant/equivariant shares round to 0 somewhere; "
                             "use wider projection_dims or a more balanced equivariant_dim")

    # -- derived ------------------------------------------------------------------------------------
    @property
    def representation_dim(self) -> int:
        return feature_dim(self.backbone_config)

    @property
    def invariant_dim(self) -> int:
        return self.representation_dim - self.equivariant_dim

    def part_projection_dims(self, part_dim: int):
        """Official scaling: `round(mlp_dims * part_dim / D)`."""
        ratio = part_dim / float(self.representation_dim)
        return [int(round(d * ratio)) for d in self.projection_dims]
