"""notebooks/explore.ipynb, executed top to bottom by a real Jupyter kernel, and kept stripped.

The notebook runs through nbclient on an ipykernel kernel (the interpreter running
pytest, with this checkout's src/ first on its path), started in notebooks/ as
Jupyter would start it, on the CPU, on the committed CIFAR-10 sample. The parameters
cell is overridden the way papermill does it: a cell inserted right after the one
tagged ``parameters``, here a 2,000-image, 2-epoch run. Any cell error fails the test.
About 35 s on 2 cores, most of it unpacking and decoding the 12,000 JPEGs.
"""

from __future__ import annotations

import os
import re
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.support import REPO

NOTEBOOK = REPO / "notebooks" / "explore.ipynb"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_SIZE, TEST_SIZE, EPOCHS = 2000, 500, 2
CELL_TIMEOUT_S = 120

# The notebook extra (`dev` pulls it in): skip without it, except under CI, where that fails.
EXTRA = ("nbclient", "nbformat", "ipykernel", "matplotlib", "tqdm")
MISSING = [name for name in EXTRA if find_spec(name) is None]
if MISSING:
    message = f"missing {', '.join(MISSING)}: pip install -e '.[notebook]'"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)

import nbclient  # noqa: E402
import nbformat  # noqa: E402


def test_committed_notebook_has_no_outputs():
    """Outputs stay out of git (images, timings, widget state): strip with `nbstripout`."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count)
    ]
    assert not dirty, f"cells {dirty} have outputs or execution counts: nbstripout {NOTEBOOK}"
    assert "widgets" not in nb.metadata, f"widget state saved in the notebook: nbstripout {NOTEBOOK}"


def with_parameters(nb, **values) -> None:
    """Insert a cell setting ``values`` after the cell tagged ``parameters`` (papermill's convention)."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))


def text_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_the_sample(committed_sample: Path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with_parameters(nb, DATA=str(committed_sample), TRAIN_SIZE=TRAIN_SIZE, TEST_SIZE=TEST_SIZE, EPOCHS=EPOCHS)
    # This checkout's package first, whatever else is installed; the CPU even on a GPU machine.
    pythonpath = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "CUDA_VISIBLE_DEVICES": ""}
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # the kernel's working directory
    )
    client.execute(env=env)  # raises CellExecutionError, with the traceback, on any cell error

    code = [c for c in nb.cells if c.cell_type == "code"]
    texts = [text_of(c) for c in code]

    counts = next(t for t in texts if t.startswith("class"))
    rows = dict(re.findall(r"^(\w+)\s+(\d+)\s+\d+$", counts, re.MULTILINE))
    assert [name for name in rows if name != "total"] == list(CLASSES), counts
    assert {rows[name] for name in CLASSES} == {"1000"}, counts  # the sample: 1,000 train per class

    assert any(re.search(r"R: mean 0\.\d+\s+std 0\.\d+", t) for t in texts), "no pixel statistics printed"
    assert any(f"on {TEST_SIZE} images" in t for t in texts), "no test accuracy on the test subset"

    # Sample grid, pixel histograms, augmentation, loss curve, confusion matrix.
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5, f"{len(images)} images drawn"

    last = nb.cells[-1]
    assert last.cell_type == "markdown" and "dvc repro" in last.source
