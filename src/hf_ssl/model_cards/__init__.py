"""Hugging Face Hub model cards for hf_ssl checkpoints.

:func:`render_model_card` fills ``template.md`` (``str.format_map`` placeholders; literal braces are
doubled) and :func:`write_model_card` writes the result as ``README.md`` next to a checkpoint.
The YAML front matter carries ``library_name: hf_ssl``, the license, tags, datasets and the
``image-feature-extraction`` pipeline tag, so the card parses with ``huggingface_hub.ModelCard``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["TEMPLATE_PATH", "render_model_card", "write_model_card"]

TEMPLATE_PATH = Path(__file__).resolve().parent / "template.md"


def _yaml_str(value: str) -> str:
    """A YAML-safe scalar: plain when unambiguous, else a double-quoted (JSON) string."""
    value = str(value)
    reserved = {"yes", "no", "true", "false", "null", "on", "off", "y", "n"}
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9._/-]*", value) and value.lower() not in reserved:
        return value
    return json.dumps(value)


def _format_value(value: Any) -> str:
    """Human-readable table cell for a hyperparameter or metric value."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4f}".rstrip("0").rstrip(".")  # 0.91234 -> 0.9123, 100.0 -> 100
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _format_value(value.item())
    return str(value)


def _table(rows: Mapping[str, Any], header: tuple[str, str]) -> str:
    """Two-column markdown table (pipes escaped, newlines flattened)."""

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {cell(k)} | {cell(_format_value(v))} |" for k, v in rows.items()]
    return "\n".join(lines)


def _section(heading: str, body: str) -> str:
    """A markdown section, or ``""`` when ``body`` is empty (so the template has no gaps)."""
    body = body.strip()
    return f"## {heading}\n\n{body}\n\n" if body else ""


def render_model_card(
    *,
    method_name: str,
    model_type: str,
    paper_title: str,
    paper_url: str,
    citation: str,
    backbone: str,
    dataset: str,
    hyperparameters: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    loss_curve: str | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    deviations: str = "",
    encoder_ref: str | None = None,
) -> str:
    """Render the model card (YAML front matter + markdown) for an hf_ssl checkpoint.

    Args:
        method_name: display name of the method, e.g. ``"SwAV"``.
        model_type: the hf_ssl / transformers ``model_type`` (also added as a tag), e.g. ``"swav"``.
        paper_title, paper_url: the method's paper (linked when ``paper_url`` is given).
        citation: BibTeX entry of the paper (section omitted when empty).
        backbone: encoder description, e.g. ``"ViT-S/16"``.
        dataset: pretraining dataset (Hub id preferred; listed in the card metadata).
        hyperparameters: name -> value, rendered as a table (omitted when empty).
        metrics: name -> value (e.g. ``{"knn_accuracy": 0.91}``), rendered as a table (omitted when empty).
        loss_curve: path of the loss-curve picture relative to the card (omitted when ``None``).
        repo_id: Hub repo id used in the usage snippets (a placeholder path when ``None``).
        license: license identifier for the metadata.
        deviations: free text on deviations from the paper's recipe (omitted when empty).
        encoder_ref: repo id / path of the encoder exported with ``export_encoder`` for the
            plain-transformers snippet (a placeholder path when ``None``).
    """
    model_ref = repo_id or "path/to/checkpoint"
    method_tag = re.sub(r"[^a-z0-9-]+", "-", model_type.lower()).strip("-") or "ssl"
    paper_link = f"[{paper_title}]({paper_url})" if paper_url else paper_title
    values = {
        "license": _yaml_str(license),
        "method_tag": _yaml_str(method_tag),
        "datasets_yaml": f"datasets:\n- {_yaml_str(dataset)}\n" if dataset else "",
        "title": f"{method_name} {backbone} pretrained on {dataset}" if dataset else f"{method_name} {backbone}",
        "method_name": method_name,
        "model_type": model_type,
        "paper_link": paper_link or "-",
        "backbone": backbone,
        "dataset": dataset or "an unspecified dataset",
        "model_ref": model_ref,
        "encoder_ref": encoder_ref or "path/to/exported-encoder",
        "deviations_section": _section("Deviations from the paper", deviations),
        "hyperparameters_section": _section(
            "Training hyperparameters", _table(hyperparameters, ("Hyperparameter", "Value")) if hyperparameters else ""
        ),
        "metrics_section": _section(
            "Evaluation", (
                "Frozen-feature evaluation of the pretrained encoder.\n\n" + _table(metrics, ("Metric", "Value"))
            ) if metrics else ""
        ),
        "loss_curve_section": _section("Training curve", f"![Training loss curve]({loss_curve})" if loss_curve else ""),
        "citation_section": _section(
            "Citation", f"{paper_link}\n\n```bibtex\n{citation.strip()}\n```" if citation.strip() else ""
        ),
    }
    text = TEMPLATE_PATH.read_text(encoding="utf-8").format_map(values)
    return text.rstrip() + "\n"


def write_model_card(save_directory: str | os.PathLike, **kwargs: Any) -> Path:
    """Render the card with :func:`render_model_card` (keyword arguments) and write ``README.md``.

    Returns the path of the written file; ``save_directory`` is created if needed.
    """
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "README.md"
    path.write_text(render_model_card(**kwargs), encoding="utf-8")
    return path
