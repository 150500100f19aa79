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
    import hashlib

    import nbformat
    from nbclient import NotebookClient
    from PIL import Image

    from facebank.embed import create_backbone, encode_images, write_bank

    rng = np.random.default_rng(0)
    engines = np.repeat(["real", "sdxl", "stylegan2"], 12)
    src = tmp_path / "images"
    paths = [f"{e}/{i}.png" for i, e in enumerate(engines)]
    tint = {"real": (200, 60, 60), "sdxl": (60, 200, 60), "stylegan2": (60, 60, 200)}
    for p, e in zip(paths, engines, strict=True):  # real files: tiles, and file queries
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 60, (32, 32, 3))
        Image.fromarray((np.array(tint[e]) * 0.7 + noise).astype(np.uint8)).save(src / p)
    # the test-only random-weight backbone: offline, and it embeds query files like a real one
    spec = create_backbone("tiny-cnn", device="cpu").spec
    enc = encode_images([str(src / p) for p in paths], backbone=spec, device="cpu")
    assert not enc.failures
    bank = write_bank(
        tmp_path / "tiny.zarr",
        enc.features,
        labels=(engines != "real").astype(int),
        engines=engines,
        paths=paths,
        sha256=[hashlib.sha256((src / p).read_bytes()).hexdigest() for p in paths],
        backbone=spec,
        source=str(src),
    )
    suspect = src / paths[20]
    monkeypatch.setenv("FACEBANK_BANK", str(bank.path))
    monkeypatch.setenv("FACEBANK_K", "4")
    monkeypatch.setenv("FACEBANK_SUSPECT", str(suspect))
    monkeypatch.delenv("FACEBANK_HEAD", raising=False)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    # the row grid, the suspect's grid, the confusion heatmap, then for one suspect row its
    # neighbour grid beside both attributions: feature-space bars and the IG overlay
    assert len(pngs) >= 6
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("similarity" in t for t in tables) and any("purity" in t for t in tables)
    # the suspect file: its head score printed, the head's score beside each neighbour,
    # and the suspect's own banked copy flagged as itself
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{suspect}: head score" in text and "threshold" in text
    # integrated gradients ran through the tiny backbone (not the "skipped" branch)
    assert "convergence delta" in text and "integrated gradients skipped" not in text
    assert "baseline: mean of 12 real rows" in text
    suspect_table = next(t for t in tables if "head_score" in t)
    assert "self_match" in suspect_table and "same file" in suspect_table
    assert paths[20] in suspect_table
