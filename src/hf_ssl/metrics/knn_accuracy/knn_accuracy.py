"""Weighted k-NN accuracy of embeddings, the standard self-supervised evaluation protocol.

Loadable offline with ``evaluate.load("<path>/knn_accuracy")`` or ``hf_ssl.metrics.load_metric``.
The numeric core lives in the installed package (``hf_ssl.metrics._core``) because ``evaluate``
copies this script into its module cache, where relative imports would not resolve.
"""

import datasets
import evaluate

from hf_ssl.metrics._core import knn_metrics

_DESCRIPTION = """\
Weighted k-nearest-neighbour classification accuracy of (frozen) embeddings, as used to
monitor and evaluate self-supervised representations (InstDisc, DINO). Query and reference
features are L2-normalised; each query takes its k most cosine-similar labelled reference
("train") samples, which vote for their class with weight exp(similarity / temperature).
The predicted class is the one with the largest total vote. k is clipped to the size of the
reference set; similarities are computed in chunks so large banks (e.g. 50k x 50k) fit in memory.
"""

_CITATION = """\
@inproceedings{wu2018unsupervised,
  title     = {Unsupervised Feature Learning via Non-Parametric Instance Discrimination},
  author    = {Wu, Zhirong and Xiong, Yuanjun and Yu, Stella X. and Lin, Dahua},
  booktitle = {CVPR},
  year      = {2018}
}
@inproceedings{caron2021emerging,
  title     = {Emerging Properties in Self-Supervised Vision Transformers},
  author    = {Caron, Mathilde and Touvron, Hugo and Misra, Ishan and J{\\'e}gou, Herv{\\'e} and
               Mairal, Julien and Bojanowski, Piotr and Joulin, Armand},
  booktitle = {ICCV},
  year      = {2021}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): query embeddings, shape [N, D].
    references (`list` of `int`): class ids of the queries, shape [N].
    train_embeddings (`list`/`np.ndarray`/`torch.Tensor`): labelled reference bank, shape [M, D].
    train_labels (`list` of `int`): class ids of the reference bank, shape [M].
    k (`int`, defaults to 20): number of neighbours (clipped to M).
    temperature (`float`, defaults to 0.07): temperature of the exp(sim / T) vote weights.
    num_classes (`int`, *optional*): number of classes; inferred from the labels when omitted.
    chunk_size (`int`, *optional*): queries per similarity block; chosen automatically when omitted.
Returns:
    knn_accuracy (`float`): top-1 accuracy in [0, 1].
    knn_top5 (`float`): top-5 accuracy in [0, 1], only present with at least 5 classes.
Examples:
    >>> knn = evaluate.load("path/to/hf_ssl/metrics/knn_accuracy")
    >>> knn.compute(predictions=[[1.0, 0.1]], references=[0],
    ...             train_embeddings=[[1.0, 0.0], [0.0, 1.0]], train_labels=[0, 1], k=1)
    {'knn_accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KnnAccuracy(evaluate.Metric):
    """Weighted k-NN accuracy of query embeddings against a labelled reference bank."""

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
            reference_urls=["https://arxiv.org/abs/1805.01978", "https://arxiv.org/abs/2104.14294"],
        )

    def _compute(
        self,
        predictions,
        references,
        train_embeddings=None,
        train_labels=None,
        k=20,
        temperature=0.07,
        num_classes=None,
        chunk_size=None,
    ):
        if train_embeddings is None or train_labels is None:
            raise ValueError("knn_accuracy needs `train_embeddings` and `train_labels` keyword arguments.")
        return knn_metrics(
            train_embeddings,
            train_labels,
            predictions,
            references,
            k=k,
            temperature=temperature,
            num_classes=num_classes,
            chunk_size=chunk_size,
        )
