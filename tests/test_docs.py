"""Each parameter is documented once, in the module, and shown in the model's docstring."""

from __future__ import annotations

import inspect

import pytest

from armed_bio._docs import module_parameters, parameter_entries
from armed_bio.model import ArmedImage, ArmedImageClassifier, ArmedRNA


@pytest.mark.parametrize("model_cls", [ArmedRNA, ArmedImage, ArmedImageClassifier])
def test_model_docstring_lists_every_argument_once(model_cls):
    documented = []
    for names in parameter_entries(model_cls.__doc__):
        documented += [n.strip() for n in names.split(",")]
    module_args = set(inspect.signature(model_cls._module_cls.__init__).parameters)
    model_args = set(inspect.signature(model_cls.__init__).parameters)
    expected = (module_args | model_args) - {"self", "module_kwargs", *model_cls._data_arguments}
    assert sorted(documented) == sorted(expected)
    assert "{module_parameters}" not in model_cls.__doc__


def test_parameter_entries_keep_descriptions():
    entries = parameter_entries(ArmedRNA._module_cls.__doc__)
    assert "fe_reconstruction_weight" in entries
    assert "Z = 0" in entries["fe_reconstruction_weight"]
    assert entries["n_latent, n_latent_re"].startswith("n_latent, n_latent_re\n    ")


def test_missing_placeholder_is_an_error():
    class Source:
        """Source.

        Parameters
        ----------
        a
            A.
        """

    with pytest.raises(ValueError, match="placeholder"):
        module_parameters(Source)(type("Target", (), {"__doc__": "No placeholder."}))


@pytest.mark.slow
def test_docs_site_builds_offline_without_warnings(tmp_path):
    """`make docs`: Sphinx with warnings as errors; API pages, tutorials and guides rendered."""
    import subprocess
    import sys
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-b", "html", docs, out],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.strip() == "", proc.stderr[-4000:]
    pages = {p.relative_to(out).as_posix() for p in out.rglob("*.html")}
    for page in (
        "index.html",
        "which_model.html",
        "model.html",
        "cli.html",
        "tutorials/04_microscopy.html",
        "api/generated/armed_bio.model.ArmedRNA.html",
        "api/generated/armed_bio.tl.umap.html",
    ):
        assert page in pages, page
    assert len([p for p in pages if p.startswith("tutorials/")]) == 5
    api = (out / "api/generated/armed_bio.model.ArmedRNA.html").read_text()
    assert "differential_expression" in api
    assert "fe_reconstruction_weight" in api  # module parameters shown on the model's page
