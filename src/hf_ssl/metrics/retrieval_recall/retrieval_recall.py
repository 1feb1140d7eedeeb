"""Image<->text retrieval recall@k of paired embeddings (CLIP / VSE protocol).

Loadable offline with ``evaluate.load("<path>/retrieval_recall")`` or ``hf_ssl.metrics.load_metric``.
The numeric core lives in the installed package (``hf_ssl.metrics._vl``).
"""

import datasets
import evaluate

from hf_ssl.metrics._vl import retrieval_metrics

_DESCRIPTION = """\
Cross-modal retrieval recall@k: row i of the image embeddings and row i of the text embeddings are a matching
pair. For image->text retrieval each image ranks all texts by cosine similarity and counts a hit when its own
text is among the k best; text->image symmetrically. `mean_recall` averages all reported recalls (RSUM / n).
"""

_CITATION = """\
@inproceedings{faghri2018vse,
  title     = {VSE++: Improving Visual-Semantic Embeddings with Hard Negatives},
  author    = {Faghri, Fartash and Fleet, David J. and Kiros, Jamie Ryan and Fidler, Sanja},
  booktitle = {BMVC},
  year      = {2018}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): image embeddings, shape [N, D].
    references (`list` of `list` of `float`): the paired text embeddings, shape [N, D].
    k (`list` of `int`, defaults to [1, 5, 10]): cut-offs.
Returns:
    image_to_text_recall@k, text_to_image_recall@k (`float`) for every k, and mean_recall (`float`).
Examples:
    >>> rr = evaluate.load("path/to/hf_ssl/metrics/retrieval_recall")
    >>> rr.compute(predictions=[[1.0, 0.0], [0.0, 1.0]], references=[[1.0, 0.1], [0.1, 1.0]], k=[1])
    {'image_to_text_recall@1': 1.0, 'text_to_image_recall@1': 1.0, 'mean_recall': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    """Image->text and text->image recall@k."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")),
                 "references": datasets.Sequence(datasets.Value("float32"))}
            ),
            reference_urls=["https://arxiv.org/abs/2103.00020", "https://arxiv.org/abs/1707.05612"],
        )

    def _compute(self, predictions, references, k=(1, 5, 10)):
        return retrieval_metrics(predictions, references, k=k)
