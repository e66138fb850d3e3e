import io

import numpy as np
import pandas as pd
import pytest
import torch

import hubedit
from hubedit.errors import CorruptFileError, UnknownTaskError
from hubedit.tasks import load_task, read_shipped_file


@pytest.mark.parametrize(
    "name, n, f, sizes, counts",
    [
        ("adult", 48842, 14, (25999, 6562, 16281), (37155, 11687)),
        ("bank", 4521, 16, (2690, 701, 1130), (4000, 521)),
    ],
)
def test_shapes_splits_and_class_balance(name, n, f, sizes, counts):
    task = load_task(name)
    assert task.X.shape == (n, f) and task.X.dtype == torch.float32
    assert task.y.shape == (n,) and task.y.dtype == torch.int64
    assert len(task.feature_names) == f
    assert tuple(len(task.splits[s]) for s in ("train", "validation", "test")) == sizes
    assert torch.bincount(task.y).tolist() == list(counts)
    tr, va, te = (set(task.splits[s].tolist()) for s in ("train", "validation", "test"))
    assert not (tr & va or tr & te or va & te) and len(tr | va | te) == n
    ed, ev = set(task.splits["editing"].tolist()), set(task.splits["evaluation"].tolist())
    assert not ed & ev and ed | ev == va and abs(len(ed) - len(ev)) <= 1
    X, y, s = task.split("editing")
    assert X.shape == (len(ed), f) and y.shape == s.shape == (len(ed),)
    # z-scored columns
    assert torch.allclose(task.X.mean(0), torch.zeros(f), atol=0.05)


def test_adult_test_split_is_the_official_uci_test_file():
    task = load_task("adult")
    assert task.splits["test"].tolist() == list(range(32561, 48842))


def _adult_raw() -> pd.DataFrame:
    data = read_shipped_file("adult/uci_raw/adult.data").decode()
    test = read_shipped_file("adult/uci_raw/adult.test").decode().split("\n", 1)[1]  # '|1x3 Cross validator'
    frames = [pd.read_csv(io.StringIO(t), header=None, skipinitialspace=True) for t in (data, test)]
    return pd.concat(frames, ignore_index=True)


def test_adult_sex_column_and_labels_match_raw_uci_file():
    task = load_task("adult")
    raw = _adult_raw()
    assert len(raw) == 48842
    female = (raw[9] == "Female").to_numpy()
    assert female.sum() == 16192
    assert np.array_equal(task.sensitive.numpy() == 1, female)
    assert np.array_equal((task.X[:, 9] > 0).numpy(), female)
    rich = raw[14].str.rstrip(".").eq(">50K").to_numpy()
    assert np.array_equal(task.y.numpy() == 1, rich)
    assert task.sensitive_groups == ("male", "female")


def test_bank_marital_column_matches_raw_file():
    task = load_task("bank")
    raw = pd.read_csv(io.BytesIO(read_shipped_file("bank/uci_raw/bank.csv")), sep=";")
    married = (raw["marital"] == "married").to_numpy()
    assert np.array_equal(task.sensitive.numpy() == 1, married)
    assert np.array_equal(task.y.numpy() == 1, (raw["y"] == "yes").to_numpy())


def test_unknown_task_lists_known_ones():
    with pytest.raises(UnknownTaskError, match="known tasks: adult, bank"):
        load_task("mnist")


def test_hash_mismatch_is_refused(monkeypatch):
    from hubedit import tasks

    monkeypatch.setitem(tasks._SHA256, "bank/labels_py.dat", "0" * 64)
    tasks.load_task.cache_clear()
    try:
        with pytest.raises(CorruptFileError, match="sha256"):
            tasks.load_task("bank")
    finally:
        monkeypatch.undo()
        tasks.load_task.cache_clear()


def test_schema_names_features():
    schema = hubedit.load_task("adult").schema()
    assert schema["n_features"] == 14 and schema["feature_names"][9] == "sex"
    assert schema["sensitive"] == {"name": "sex", "groups": ["male", "female"]}
