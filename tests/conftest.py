"""Test set-up. Hub variables are read when huggingface_hub is imported, so they are set here, first."""

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="hubedit-test-hf-home-")
os.environ["HF_HOME"] = _HF_HOME  # never the user's real cache
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_HOME, "datasets")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.pop("HF_TOKEN", None)
