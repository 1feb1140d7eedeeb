"""Linear-probe accuracy of embeddings (multinomial logistic regression fitted with L-BFGS).

Loadable offline with ``evaluate.load("<path>/linear_probe")`` or ``hf_ssl.metrics.load_metric``.
The numeric core lives in the installed package (``hf_ssl.metrics._core``) because ``evaluate``
copies this script into its module cache, where relative imports would not resolve.
"""

import datasets
import evaluate

from hf_ssl.metrics._core import linear_probe_metrics

_DESCRIPTION = """\
Linear-probe accuracy: a multinomial logistic-regression classifier is trained on frozen,
labelled "train" embeddings and its accuracy is measured on the query embeddings. Features
are standardised with the train mean/std; the classifier minimises mean cross-entropy plus
c/2 * ||W||^2 (L2 weight decay `c` on the weights, not the bias) with full-batch L-BFGS
(strong-Wolfe line search) for a fixed number of iterations from a seeded initialisation,
so results are deterministic.
"""

_CITATION = """\
@inproceedings{kolesnikov2019revisiting,
  title     = {Revisiting Self-Supervised Visual Representation Learning},
  author    = {Kolesnikov, Alexander and Zhai, Xiaohua and Beyer, Lucas},
  booktitle = {CVPR},
  year      = {2019}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): query (test) embeddings, shape [N, D].
    references (`list` of `int`): class ids of the queries, shape [N].
    train_embeddings (`list`/`np.ndarray`/`torch.Tensor`): embeddings to fit the probe on, [M, D].
    train_labels (`list` of `int`): class ids of the train embeddings, shape [M].
    c (`float`, defaults to 1e-4): L2 weight decay (larger = stronger regularisation).
    max_iter (`int`, defaults to 100): L-BFGS iterations.
    seed (`int`, defaults to 0): seed of the weight initialisation.
    num_classes (`int`, *optional*): number of classes; inferred from the labels when omitted.
Returns:
    linear_probe_accuracy (`float`): accuracy in [0, 1] on the queries.
Examples:
    >>> probe = evaluate.load("path/to/hf_ssl/metrics/linear_probe")
    >>> probe.compute(predictions=[[2.0], [-2.0]], references=[1, 0],
    ...               train_embeddings=[[1.0], [-1.0]], train_labels=[1, 0])
    {'linear_probe_accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LinearProbe(evaluate.Metric):
    """Accuracy of a logistic-regression probe fitted on labelled train embeddings."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/1901.09005"],
        )

    def _compute(
        self,
        predictions,
        references,
        train_embeddings=None,
        train_labels=None,
        c=1e-4,
        max_iter=100,
        seed=0,
        num_classes=None,
    ):
        if train_embeddings is None or train_labels is None:
            raise ValueError("linear_probe needs `train_embeddings` and `train_labels` keyword arguments.")
        return linear_probe_metrics(
            train_embeddings,
            train_labels,
            predictions,
            references,
            c=c,
            max_iter=max_iter,
            seed=seed,
            num_classes=num_classes,
        )
