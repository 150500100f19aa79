"""examples/forensics.ipynb runs headless (nbclient) on a tiny bank made here, so it never rots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "forensics.ipynb"


def test_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_forensics_notebook_executes_on_a_tiny_bank(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from PIL import Image

    from facebank.embed import write_bank

    rng = np.random.default_rng(0)
    engines = np.repeat(["real", "sdxl", "stylegan2"], 20)
    centres = rng.normal(size=(3, 8)) * 4
    X = (centres[np.repeat(np.arange(3), 20)] + rng.normal(size=(60, 8))).astype(np.float32)
    src = tmp_path / "images"
    paths = [f"{e}/{i}.png" for i, e in enumerate(engines)]
    for i, p in enumerate(paths):  # real files, so the grid shows image tiles
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (4 * i, 80, 160)).save(src / p)
    bank = write_bank(
        tmp_path / "tiny.zarr",
        X,
        labels=(engines != "real").astype(int),
        engines=engines,
        paths=paths,
        source=str(src),
    )
    monkeypatch.setenv("FACEBANK_BANK", str(bank.path))
    monkeypatch.setenv("FACEBANK_K", "4")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2  # the neighbour grid and the confusion heatmap
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("similarity" in t for t in tables) and any("purity" in t for t in tables)
