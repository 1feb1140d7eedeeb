"""Zero-shot classification accuracy of a vision-language model (CLIP protocol).

Loadable offline with ``evaluate.load("<path>/zero_shot_accuracy")`` or ``hf_ssl.metrics.load_metric``.
The numeric core lives in the installed package (``hf_ssl.metrics._vl``).
"""

import datasets
import evaluate

from hf_ssl.metrics._vl import zero_shot_metrics

_DESCRIPTION = """\
Zero-shot classification: class names are turned into text prompts ("a photo of a {}."), embedded by the text
encoder and averaged over the prompt ensemble into one embedding per class. Each image is assigned the class
whose text embedding has the largest cosine similarity with its image embedding; accuracy is reported.
"""

_CITATION = """\
@inproceedings{radford2021learning,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and others},
  booktitle = {ICML},
  year      = {2021}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): image embeddings in the joint space, shape [N, D].
    references (`list` of `int`): class ids of the images, shape [N].
    class_embeddings (`list`/`np.ndarray`/`torch.Tensor`): one text embedding per class, shape [C, D].
Returns:
    zero_shot_accuracy (`float`): top-1 accuracy in [0, 1].
    zero_shot_top5 (`float`): top-5 accuracy, only present with at least 5 classes.
Examples:
    >>> zs = evaluate.load("path/to/hf_ssl/metrics/zero_shot_accuracy")
    >>> zs.compute(predictions=[[1.0, 0.1]], references=[0], class_embeddings=[[1.0, 0.0], [0.0, 1.0]])
    {'zero_shot_accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ZeroShotAccuracy(evaluate.Metric):
    """Zero-shot accuracy of image embeddings against per-class text embeddings."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://arxiv.org/abs/2103.00020"],
        )

    def _compute(self, predictions, references, class_embeddings=None):
        if class_embeddings is None:
            raise ValueError("zero_shot_accuracy needs the `class_embeddings` keyword argument ([C, D]).")
        return zero_shot_metrics(predictions, references, class_embeddings)
