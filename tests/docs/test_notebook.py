"""docs/notebooks/quickstart.ipynb runs end to end (small sizes) and does what it says.

Executed with nbclient in a kernel of this interpreter (a kernelspec written for ``sys.executable``,
so the venv's compresskit is the one imported), in a temporary working directory; the sizes come
from the COMPRESSKIT_NB_* variables its first code cell reads. Needs the embedded model, like the
other integration tests.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "notebooks" / "quickstart.ipynb"
SMALL = {
    "COMPRESSKIT_NB_LENGTH": "256",
    "COMPRESSKIT_NB_TASKS": "ppl,passkey",
    "COMPRESSKIT_NB_PPL_WINDOWS": "1",
    "COMPRESSKIT_NB_PASSKEY_TRIALS": "2",
    "COMPRESSKIT_NB_PRUNE_MLP": "0.0417",
    "COMPRESSKIT_NB_CALIB_SAMPLES": "2",
    "COMPRESSKIT_NB_CALIB_SEQLEN": "256",
    "COMPRESSKIT_NB_NEW_TOKENS": "6",
    "COMPRESSKIT_NB_OUTPUT": "nb-w4g64",
}


def _kernel_manager(tmp_path: Path) -> KernelManager:
    """A kernel running this interpreter (whatever kernelspecs the machine has installed)."""
    spec_dir = tmp_path / "kernels" / "compresskit-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "compresskit (tests)", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="compresskit-test", kernel_spec_manager=specs)


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


def test_the_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_quickstart_notebook_runs_end_to_end(tmp_path, monkeypatch):
    for key, value in SMALL.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=600,
                            resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    summary_cell = next(c for c in nb.cells if "summary" in c.metadata.get("tags", []))
    summary = json.loads(_stdout(summary_cell).strip().splitlines()[-1])

    saved = work / SMALL["COMPRESSKIT_NB_OUTPUT"]
    assert Path(summary["saved"]) == saved.resolve() and (saved / "model.safetensors").is_file()
    config = json.loads((saved / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compresskit"
    assert config["compresskit_pruning"] and config["intermediate_size"] == 1472 == summary["intermediate_size"]
    assert summary["quantization"] == "rtn-w4g64"
    assert summary["logit_diff"] == 0.0  # plain transformers reload == the model in memory
    assert summary["same_generation"] and summary["new_tokens"] == int(SMALL["COMPRESSKIT_NB_NEW_TOKENS"])
    assert summary["gate_rows"] == 2  # ppl and passkey at one length
    assert summary["size_ratio"] < 0.35  # W4 g64 + int8 embeddings, against the bf16 original
    outputs = "".join(_stdout(c) for c in nb.cells if c.cell_type == "code")
    assert "gate: " in outputs and "max |logit difference|" in outputs
