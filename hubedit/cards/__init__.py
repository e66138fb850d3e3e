"""Model cards: editors (:func:`build_editor_card`), edited models (:func:`edited_model_card`) and their shared
sections (:mod:`.sections`). Zoo dataset cards live with the zoo (:func:`hubedit.zoo.card.zoo_card`).

Cards are ``huggingface_hub.ModelCard`` objects assembled from sections (as skops does), with
``model-index`` eval results; :func:`validate_card` checks the YAML before anything is pushed.
Importing this package does not import ``huggingface_hub`` (its endpoint variables are read on import).
:mod:`.edited_folder` (not imported here) writes an edited model's folder -- weights, report, ONNX, card -- and
publishes it in one commit: the code behind ``EditedMLP.save_pretrained`` / ``push_to_hub`` and
:mod:`hubedit.publish`.
"""

from .edited_card import (
    PLOT_FILE,
    ParetoPosition,
    baseline_fronts,
    dominance_sentence,
    edited_model_card,
    editor_front,
    load_folder,
    pareto_position,
    requirement_metric,
    write_pareto_plot,
)
from .sections import CardError, CardValidationError, framework_versions, requirement_info, validate_card

__all__ = [
    "CardError",
    "CardValidationError",
    "ParetoPosition",
    "PLOT_FILE",
    "baseline_fronts",
    "dominance_sentence",
    "edited_model_card",
    "build_editor_card",
    "EditorModelCard",
    "editor_front",
    "framework_versions",
    "load_folder",
    "pareto_position",
    "requirement_info",
    "requirement_metric",
    "validate_card",
    "write_pareto_plot",
]


def __getattr__(name):  # lazy: editor_card imports huggingface_hub
    if name in ("build_editor_card", "EditorModelCard"):
        from . import editor_card as _mod

        return getattr(_mod, name)
    raise AttributeError(f"module 'hubedit.cards' has no attribute {name!r}")
