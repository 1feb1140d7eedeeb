"""GeneCIS conditional-similarity Recall@K (Vaze et al., CVPR 2023).

Loadable offline with ``evaluate.load("<path>/genecis")`` or ``hf_ssl.metrics.load_metric("genecis")``.
The numeric core lives in the installed package (``hf_ssl.metrics.genecis.core``).
"""

import datasets
import evaluate

from hf_ssl.metrics.genecis.core import genecis_recall

_DESCRIPTION = """\
GeneCIS: each sample is a reference image, a condition text and a small gallery with exactly one positive. A model
scores every gallery image for the (reference, condition) query; Recall@K is the fraction of samples whose positive
is among the K best-scored gallery images (ties count against the positive only when strictly better). The paper
reports Recall@{1, 2, 3} on four tasks (focus / change attribute, focus / change object) and their average.
"""

_CITATION = """\
@inproceedings{vaze2023gen,
  title     = {GeneCIS: A Benchmark for General Conditional Image Similarity},
  author    = {Vaze, Sagar and Carion, Nicolas and Misra, Ishan},
  booktitle = {CVPR},
  year      = {2023}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): per sample, the score of every gallery image (galleries may differ
        in size between samples).
    references (`int`): per sample, the gallery index of the positive (0 in the official annotation layout, where
        the target is put first).
    k (`list` of `int`, defaults to [1, 2, 3]): cut-offs.
Returns:
    recall@k (`float`) for every k.
Examples:
    >>> g = evaluate.load("path/to/hf_ssl/metrics/genecis")
    >>> g.compute(predictions=[[0.9, 0.1, 0.3], [0.2, 0.8, 0.5]], references=[0, 2], k=[1, 2])
    {'recall@1': 0.5, 'recall@2': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GeneCIS(evaluate.Metric):
    """Recall@K of conditional image similarity rankings."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Value("int64")}),
            reference_urls=["https://arxiv.org/abs/2306.07969", "https://github.com/facebookresearch/genecis"],
        )

    def _compute(self, predictions, references, k=(1, 2, 3)):
        return genecis_recall(predictions, references, k=k)
