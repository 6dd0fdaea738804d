"""Every notebook in ``notebooks/`` runs top to bottom on the embedded model without an error.

Each notebook is executed in a fresh Jupyter kernel (``nbclient``, the kernel of this interpreter),
cell by cell, within ``SWIFT_NOTEBOOK_TIMEOUT`` seconds (default 1800) for the whole notebook: a
hang guard, not a speed check (a busy 2-core machine once took 292 s for one notebook). The
notebooks keep their own scratch profile stores; the benchmark notebook writes its figures to a
temporary folder here (``SWIFT_BENCH_FIGURES_DIR``), not to ``docs/``. The files in ``notebooks/``
are never modified.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TIMEOUT_S = float(os.environ.get("SWIFT_NOTEBOOK_TIMEOUT", "1800"))


def test_notebooks_are_committed_without_outputs() -> None:
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits this process's environment.
    monkeypatch.setenv("SWIFT_BENCH_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' scratch profile stores land here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=int(TIMEOUT_S),
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # the kernel starts in notebooks/, as in Jupyter
    )
    deadline = time.monotonic() + TIMEOUT_S
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{path.name} ran past its {TIMEOUT_S:.0f} s budget before cell {index}")
            client.timeout = max(1, int(left))  # the rest of the notebook's budget
            client.execute_cell(cell, index)  # raises CellExecutionError / CellTimeoutError
