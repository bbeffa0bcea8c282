"""A malformed group attribute is named, with its store (issue 19: a ``natgrad_stream``
attribute that was not a JSON object failed with ``cannot convert dictionary update
sequence element #0``).
"""

import numpy as np
import pytest
import zarr

from natgrad_stream.app.cli import main
from natgrad_stream.data.follow import _committed_attr

from .conftest import write_group


def _softmax_store(path, attribute):
    rng = np.random.default_rng(0)
    write_group(path, X=rng.normal(size=(300, 2)), y=rng.integers(0, 3, 300).astype("f8"))
    zarr.open_group(str(path), mode="r+").attrs["natgrad_stream"] = attribute
    return path


@pytest.mark.parametrize(("attribute", "phrase"), [
    (["x", "y"], "group attribute 'natgrad_stream' of {store} must be a JSON object, got "
                 "list"),
    ({"true_params": 5}, "group attribute 'natgrad_stream'.true_params of {store} must be a "
                         "JSON object, got int"),
    ({"true_params": {"n_classes": "three"}}, "group attribute 'natgrad_stream'.true_params "
                                              "of {store}.n_classes must be an integer >= 2, "
                                              "got 'three'"),
])
def test_malformed_attribute_is_named(tmp_path, capsys, attribute, phrase):
    store = _softmax_store(tmp_path / "d.zarr", attribute)
    code = main(["fit", str(store), "--model", "softmax", "--out", str(tmp_path / "run"),
                 "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"natgrad-stream fit: error: {phrase.format(store=store)}\n"


def test_well_formed_attribute_is_used(tmp_path, capsys):
    store = _softmax_store(tmp_path / "d.zarr", {"true_params": {"n_classes": 4}})
    assert main(["fit", str(store), "--model", "softmax", "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--progress", "never"]) == 0
    assert "n_classes" in (tmp_path / "run" / "run.json").read_text()


def test_committed_rows_attribute_is_checked(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.attrs["natgrad_stream"] = {"committed_rows": "12"}
    with pytest.raises(ValueError, match=r"committed_rows must be an integer >= 0, got '12'"):
        _committed_attr(g)
    g.attrs["natgrad_stream"] = {"committed_rows": 12}
    assert _committed_attr(g) == 12
