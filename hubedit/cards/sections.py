"""Section builders shared by the editor card and the edited-model card.

A card is assembled like a skops card: an ordered list of titled Markdown sections under YAML metadata
(:class:`Card`), each produced by a small function of plain data. Nothing here talks to the network; the
builders take dicts and numbers so that a card can be re-rendered from a saved ``metrics.json`` alone.
"""

from __future__ import annotations

import json
import math
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import HubeditError

__all__ = [
    "Card",
    "CardError",
    "CardValidationError",
    "TASK_INFO",
    "REQUIREMENT_INFO",
    "requirement_info",
    "fmt",
    "markdown_table",
    "provenance_text",
    "repo_url",
    "framework_versions",
    "framework_versions_section",
    "human_review_section",
    "limitations_section",
    "method_section",
    "validate_card",
    "card_text",
]


class CardError(HubeditError, RuntimeError):
    """A model card could not be built or rendered."""


class CardValidationError(CardError, ValueError):
    """A card's YAML metadata does not parse or the Hub's validator rejected it."""


# --- what the cards say about tasks and requirements ---------------------------------------------------------
TASK_INFO: dict[str, dict[str, str]] = {
    "adult": {
        "dataset_name": "UCI Adult",
        "description": "UCI Adult (census income > 50K, 14 features), pre-processed as in Fernández-Delgado et al. (2014)",
        "citation": "Kohavi (1996)",
    },
    "bank": {
        "dataset_name": "UCI Bank Marketing",
        "description": "UCI Bank Marketing (term deposit subscription, 16 features), pre-processed as in "
        "Fernández-Delgado et al. (2014)",
        "citation": "Moro et al. (2011)",
    },
}

REQUIREMENT_INFO: dict[str, dict[str, Any]] = {
    "minimise": {
        "title": "data minimisation",
        "tag": "data-minimisation",
        "metric": "kept_features",
        "metric_label": "kept input features",
        "metric_type": "kept_features",
        "metric_name": "Kept input features (count)",
        "explain": "switches off input features: the weights leaving a dropped feature are exactly zero, so the model "
        "ignores it and the ONNX export no longer takes it as an input",
        "baselines": "FS (permutation feature importance, mask the k least important features), one point per k",
    },
    "fairness": {
        "title": "fairness (equalised odds)",
        "tag": "fairness",
        "metric": "eod",
        "metric_label": "equalised-odds difference",
        "metric_type": "equalized_odds_difference",
        "metric_name": "Equalised-odds difference",
        "explain": "edits the weights so that true- and false-positive rates of the sensitive groups move closer "
        "(equalised odds); the metric is max(TPR gap, FPR gap) between the groups",
        "baselines": "ThresholdOpt (fairlearn) and CalEqOdds post-processing of this model's scores",
    },
    "prune": {
        "title": "weight pruning",
        "tag": "pruning",
        "metric": "weights_kept",
        "metric_label": "fraction of weights kept",
        "metric_type": "weights_kept",
        "metric_name": "Fraction of weights kept",
        "explain": "sets weights (linear and skip matrices) to exactly zero; biases and normalisation parameters "
        "are kept",
        "baselines": "magnitude and random global unstructured pruning at several keep fractions",
    },
}


def requirement_info(requirement: str) -> dict[str, Any]:
    """The table entry of a requirement; for a composition (``"minimise+prune"``) the last one's."""
    last = str(requirement).split("+")[-1]
    if last not in REQUIREMENT_INFO:
        raise CardError(f"unknown requirement {requirement!r}; known: {', '.join(REQUIREMENT_INFO)}")
    return REQUIREMENT_INFO[last]


# --- Markdown helpers ------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table: fixed digits, small values in scientific notation, ``–`` for missing."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2e}"
        if abs(value) >= 1:
            return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
        return f"{value:.{digits}f}"
    return _escape(str(value))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (cells through :func:`fmt`)."""
    head = "| " + " | ".join(_escape(str(h)) for h in headers) + " |"
    sep = "|" + "|".join("---" for _ in headers) + "|"
    body = ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join([head, sep, *body])


def repo_url(repo_id: str, *, repo_type: str = "model", revision: str | None = None, endpoint: str | None = None) -> str:
    """Web address of a Hub repo (at a revision), on ``endpoint`` (default: the configured one)."""
    if endpoint is None:  # "" gives a root-relative path
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]
    url = f"{endpoint.rstrip('/')}/{prefix}{repo_id}"
    return f"{url}/tree/{revision}" if revision else url


def provenance_text(source: Mapping[str, Any] | None, *, repo_type: str = "model", link: bool = False) -> str:
    """One line naming where something came from: ``repo@commit``, a local path, or a zoo checkpoint."""
    if not source:
        return "unknown (not saved or published when used)"
    source = dict(source)
    parts = []
    if source.get("repo_id"):
        rev = source.get("revision")
        text = f"`{source['repo_id']}`" + (f" at commit `{rev}`" if rev else "")
        if link:  # root-relative: right on whichever Hub serves the card
            text = f"[{text}]({repo_url(source['repo_id'], repo_type=repo_type, revision=rev, endpoint='')})"
        parts.append(text)
    elif source.get("path"):
        parts.append(f"local folder `{source['path']}`")
    if source.get("model_id"):
        parts.append(f"zoo checkpoint `{source['model_id']}`")
    zoo = source.get("zoo")
    if isinstance(zoo, Mapping) and zoo:
        parts.append("of zoo " + provenance_text(zoo, repo_type="dataset", link=link))
    if source.get("settings") == "unsaved editor":
        return "an editor that was not saved or published when it edited"
    if not parts:
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(source.items())))
    return " ".join(parts)


# --- shared sections ---------------------------------------------------------------------------------------
def framework_versions() -> dict[str, str]:
    """Versions of the packages that produced (and that read) the artefacts."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("hubedit", "torch", "torch-geometric", "huggingface-hub", "safetensors", "onnx", "onnxruntime",
                "onnxscript", "fairlearn", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def framework_versions_section(versions: Mapping[str, str] | None = None) -> str:
    versions = versions if versions is not None else framework_versions()
    return markdown_table(["package", "version"], sorted(versions.items()))


def method_section() -> str:
    return (
        "Edits are produced by a trained *editor*, a graph metanetwork that reads the weights of an MLP "
        "classifier as a parameter graph and writes edited weights in one forward pass, trained to minimise "
        "`JSD(f_theta(x), f_theta'(x)) + lambda * R(theta')` (method: \"Metanetworks as Regulatory Operators: "
        "Learning to Edit for Requirement Compliance\"; implementation: the `hubedit` library)."
    )


def limitations_section(requirement: str | None = None, *, kind: str = "edited model") -> str:
    lines = [
        "- The figures in this card are measured on one fixed split of one tabular data set. They say nothing "
        "about other populations, later data (drift) or other deployments.",
        "- JSD to the original model measures how much the *function* changed on that data, not whether the "
        "original was right; an edited model inherits every flaw of the model it was edited from.",
        "- A requirement metric being met on a test split is evidence, not a proof of legal or regulatory "
        "compliance.",
    ]
    req = (requirement or "").split("+")
    if "fairness" in req:
        lines.append(
            "- Equalised odds is one fairness criterion among several that cannot in general hold together; "
            "the sensitive attribute is binary here and measured with its recorded value, and intersectional "
            "groups are not examined."
        )
    if "minimise" in req:
        lines.append(
            "- Dropping a feature from the model's inputs is data minimisation for *this model*; features "
            "correlated with a dropped one still carry its information (proxies)."
        )
    if "prune" in req:
        lines.append(
            "- Unstructured zeros shrink the compressed files and the compute only with sparse kernels; dense "
            "runtimes (including onnxruntime's default) still multiply by the zeros."
        )
    if kind == "editor":
        lines.append(
            "- An editor is trained on a population (zoo) of small MLPs of one task; models far from that "
            "population (other sizes, other training recipes) may be edited badly. Check every edit."
        )
    return "\n".join(lines)


def human_review_section(kind: str = "edited model") -> str:
    what = "this edited model" if kind == "edited model" else "any model this editor edits"
    return (
        f"Automated editing is a tool for people who are accountable for a model, not a replacement for them. "
        f"Before deploying {what}, a person with knowledge of the domain and of the applicable rules should: "
        "check the compliance metrics and the accuracy on data representative of the deployment; check the "
        "per-group rates, not only their summary; compare with the baselines in the Pareto position; and record "
        "the decision. The paper behind this method says as much (\"Automated model editing & human oversight\"): "
        "complete automation is not recommended, and domain experts must evaluate edited models and make the "
        "final deployment decision."
    )


# --- the card container -------------------------------------------------------------------------------------
@dataclass
class Card:
    """YAML metadata plus ordered ``(title, body)`` sections (``level`` 2 = ``##``), rendered to Markdown."""

    metadata: Any  # huggingface_hub.CardData
    title: str
    intro: str = ""
    sections: list[tuple[str, str, int]] = field(default_factory=list)

    def add(self, title: str, body: str, level: int = 2) -> "Card":
        if body is not None:
            self.sections.append((title, body.strip(), level))
        return self

    def markdown(self) -> str:
        parts = [f"# {self.title}"]
        if self.intro:
            parts.append(self.intro.strip())
        for title, body, level in self.sections:
            parts.append(f"{'#' * level} {title}\n\n{body}" if body else f"{'#' * level} {title}")
        return "\n\n".join(parts) + "\n"

    def render(self) -> str:
        return card_text(self.metadata.to_yaml(), self.markdown())


def card_text(yaml_text: str, body: str) -> str:
    return f"---\n{yaml_text.strip()}\n---\n\n{body}"


_YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")  # as huggingface_hub.repocard


def validate_card(card, *, remote: bool = False, repo_type: str = "model") -> dict:
    """Check a card before it is published; return its metadata as a dict.

    Locally: the front matter parses with ``yaml.safe_load`` to a mapping, ``huggingface_hub`` reads it
    back (``model-index`` -> ``eval_results``) and every eval result has a finite value. With ``remote``,
    also the endpoint's ``/api/validate-yaml`` (``RepoCard.validate``), skipped in offline mode.
    Raises :class:`CardValidationError` naming the problem.
    """
    import yaml
    from huggingface_hub import ModelCard, RepoCard, constants

    text = str(card)
    match = _YAML_BLOCK.search(text)
    if match is None:
        raise CardValidationError("the card has no YAML front matter (--- ... ---)")
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        raise CardValidationError(f"the card's YAML front matter does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise CardValidationError(f"the card's YAML front matter must be a mapping, got {type(data).__name__}")
    if repo_type == "model":
        try:
            parsed = ModelCard(text)
        except Exception as exc:  # huggingface_hub raises ValueError and friends on bad model-index
            raise CardValidationError(f"huggingface_hub cannot read the card's metadata back: {exc}") from exc
        for r in parsed.data.eval_results or []:
            v = r.metric_value
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(float(v)):
                raise CardValidationError(f"eval result {r.metric_type!r} has a non-finite or non-numeric value {v!r}")
    try:
        json.dumps(data, allow_nan=False, default=str)
    except ValueError as exc:
        raise CardValidationError(f"the card's metadata holds NaN/Inf: {exc}") from exc
    if remote and not constants.HF_HUB_OFFLINE:
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        try:
            RepoCard(text).validate(repo_type=repo_type)
        except ValueError as exc:
            raise CardValidationError(f"the Hub at {constants.ENDPOINT} rejected the card's metadata: {exc}") from exc
        except (HfHubHTTPError, OSError, httpx2.TransportError) as exc:
            from ..hub import HubError

            raise HubError(f"could not validate the card on {constants.ENDPOINT}, the endpoint is unreachable or "
                           f"failed ({type(exc).__name__}: {exc})") from exc
    return data
