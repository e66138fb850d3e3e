"""The dataset card of a zoo, assembled from sections (what it is, accuracy, architectures, how to load)."""

from __future__ import annotations

import numpy as np
from tabulate import tabulate

from .records import SPLITS

TASK_DESCRIPTIONS = {
    "adult": "UCI Adult (census income > 50K), 14 features, pre-processed by Fernández-Delgado et al. (2014)",
    "bank": "UCI Bank Marketing (term deposit subscription), 16 features, pre-processed by Fernández-Delgado et al. (2014)",
}


def _size_category(n: int) -> str:
    return "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K"


def _accuracy_section(zoo) -> str:
    frame = zoo.frame()
    rows = []
    for split in SPLITS:
        for stage in ("early", "middle", "final"):
            sub = frame[(frame["split"] == split) & (frame["stage"] == stage)]["test_accuracy"].to_numpy()
            if len(sub) == 0:
                continue
            q = np.quantile(sub, [0.0, 0.25, 0.5, 0.75, 1.0])
            rows.append([split, stage, len(sub), *(f"{v:.4f}" for v in q)])
    table = tabulate(rows, headers=["split", "checkpoint", "models", "min", "q25", "median", "q75", "max"], tablefmt="github")
    return "## Test accuracy of the population\n\nTest accuracy on the task's test split, by checkpoint stage:\n\n" + table


def _architecture_section(zoo) -> str:
    frame = zoo.frame()
    final = frame[frame["stage"] == "final"]
    parts = ["## Architectures\n\nCounts over configurations (one row per configuration):\n"]
    for col, title in [("depth", "hidden layers"), ("activation", "activation"), ("norm", "normalisation"),
                       ("n_skips", "skip connections"), ("batch_size", "batch size"), ("dropout", "dropout")]:
        counts = final[col].value_counts().sort_index()
        parts.append(
            tabulate([[k, int(v)] for k, v in counts.items()], headers=[title, "configs"], tablefmt="github")
        )
    widths = final["hidden"].map(lambda h: max(h))
    parts.append(tabulate([[k, int(v)] for k, v in widths.value_counts().sort_index().items()],
                          headers=["widest hidden layer", "configs"], tablefmt="github"))
    return "\n\n".join(parts)


def zoo_card(zoo, repo_id: str | None = None):
    """A ``huggingface_hub.DatasetCard`` for ``zoo`` (YAML metadata + Markdown body)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    n = len(zoo)
    info = zoo.info
    data = DatasetCardData(
        license="cc-by-4.0",
        pretty_name=f"hubedit {zoo.task_name} MLP zoo",
        tags=["hubedit", "model-zoo", "weight-space-learning", "tabular-classification", zoo.task_name],
        task_categories=["tabular-classification"],
        size_categories=[_size_category(n)],
        configs=[{
            "config_name": "default",
            "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in SPLITS if len(zoo[s])],
        }],
    )
    n_configs = len({c.config.config_id for c in zoo})
    intro = f"""# hubedit {zoo.task_name} MLP zoo

A population of **{n} trained MLP classifiers** ({n_configs} configurations x up to 3 checkpoints: early,
middle and final epoch) for the task **{zoo.task_name}**: {TASK_DESCRIPTIONS.get(zoo.task_name, zoo.task_name)}.
Built with hubedit to train *editors* (graph metanetworks that edit model weights to meet a
requirement, see "Metanetworks as Regulatory Operators"). Configurations follow the zoo table of hubedit's design
(paper A.6): depth 1-4, widths 8-64 non-decreasing, six activations, none/batch/layer norm, dropout, skip connections,
batch size, learning rate and weight decay sampled per configuration.

The zoo is split **by configuration**: all checkpoints of one configuration are in one split.

| field | value |
|---|---|
| preset | {info.get("preset", "?")} |
| seed | {info.get("seed", "?")} |
| configurations | {n_configs} |
| epochs | {info.get("epochs", "?")} (checkpoints at {info.get("checkpoint_epochs", "?")}) |
| checkpoints per split | {", ".join(f"{s}: {len(zoo[s])}" for s in SPLITS)} |
| built with | hubedit {info.get("hubedit_version", "?")}, torch {info.get("torch_version", "?")} |
"""
    usage = f"""## How to load it

With hubedit (weights become `hubedit.MLP` modules):

```python
from hubedit import Zoo
zoo = Zoo.from_hub("REPO_ID")            # or Zoo.load("path/to/folder")
model = zoo["test"][0].to_module()       # an nn.Module, eval mode
```

With plain `datasets` (one row per checkpoint; `weights` is the model as a safetensors blob):

```python
from datasets import load_dataset
from safetensors.torch import load as load_safetensors
ds = load_dataset("REPO_ID")
row = ds["train"][0]
state_dict = load_safetensors(row["weights"])   # tensors; the MLP config is the JSON in row["config"]
```

Columns: `model_id, task, config_id, epoch, stage, seed, config (JSON), depth, hidden, activation, norm, dropout,
n_skips, batch_size, lr, weight_decay, train_accuracy, validation_accuracy, test_accuracy, weights`.
Accuracies were computed in eval mode on the task's fold-0 splits; reloading a checkpoint reproduces them exactly.
"""
    licence = """## Data and licence

The models were trained on the UCI data set named above (CC BY 4.0; cite Kohavi 1996 for Adult, Moro et al. 2011 for
Bank Marketing) in the pre-processed form of Fernández-Delgado et al. (2014). The zoo is released under CC BY 4.0.
"""
    if repo_id is None:
        usage = usage.replace('Zoo.from_hub("REPO_ID")', 'Zoo.load("path/to/this/folder")').replace(
            'load_dataset("REPO_ID")', 'load_dataset("path/to/this/folder")')
    else:
        usage = usage.replace("REPO_ID", repo_id)
    body = "\n\n".join([intro, _accuracy_section(zoo), _architecture_section(zoo), usage, licence])
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
