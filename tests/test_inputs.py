"""Input kinds: integer/bool/float16 dtypes, nested paths, zip and store objects, pandas,
xarray; each compared with the float32 Zarr result.
"""

import zipfile

import numpy as np
import pytest
import zarr
from numpy.testing import assert_array_equal

from natgrad_stream._constants import DEFAULT_CHUNK_ROWS
from natgrad_stream.data import as_source, open_zarr
from natgrad_stream.data import stream as stream_mod
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.errors import DataError
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model

N, D, CHUNK = 700, 4, 128
_CFG = {"write_empty_chunks": True}


def _values():
    rng = np.random.default_rng(3)
    X = rng.integers(0, 6, size=(N, D)).astype(np.float64)  # exact in every dtype below
    y = (rng.random(N) < 1 / (1 + np.exp(-(X @ [0.5, -0.3, 0.2, -0.1] - 0.2)))).astype(
        np.uint8)
    return X, y


def _write(group, X, y, *, x_dtype="float32", y_dtype="uint8", x="X", yname="y",
           compressors="auto"):
    g = group
    for part in x.split("/")[:-1]:
        g = g.require_group(part)
    g.create_array(x.split("/")[-1], shape=X.shape, chunks=(CHUNK, D), dtype=x_dtype,
                   config=_CFG, compressors=compressors,
                   dimension_names=("row", "feature"))[...] = X.astype(x_dtype)
    g.create_array(yname.split("/")[-1], shape=y.shape, chunks=(CHUNK,), dtype=y_dtype,
                   config=_CFG, compressors=compressors,
                   dimension_names=("row",))[...] = y.astype(y_dtype)
    return group


def _store(path, **kw):
    return _write(zarr.open_group(str(path), mode="w", zarr_format=3), *_values(), **kw)


def _batches(source, **kw):
    out = []
    with source.batches(batch_size=50, seed=4, chunks_per_read=2, **kw) as stream:
        for b in stream:
            out.append((b.rows.copy(), b.X.copy(), b.y.copy()))
    return out


def _assert_same_batches(got, ref, dtype=np.float32):
    assert len(got) == len(ref)
    for (r1, X1, y1), (r2, X2, y2) in zip(got, ref, strict=True):
        assert X1.dtype == dtype and X1.flags.c_contiguous
        assert_array_equal(r1, r2)
        assert_array_equal(X1, X2)
        assert_array_equal(y1, y2)


def _theta(data, **kw):
    return NaturalGradientLearner(make_model("logistic", D)).fit(data, epochs=1, **kw).theta


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "f32.zarr"
    _store(path)
    ref64 = tmp_path_factory.mktemp("ref") / "f64.zarr"
    _store(ref64, x_dtype="float64")
    return {"path": path, "batches": _batches(open_zarr(path)), "theta": _theta(path),
            "batches64": _batches(open_zarr(ref64)), "theta64": _theta(ref64)}


# -- dtypes ----------------------------------------------------------------------------------
NARROW = ["bool", "int8", "int16", "uint8", "uint16", "float16"]
WIDE = ["int32", "int64", "uint32", "uint64"]


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("compressors", ["auto", None])  # zstd (direct reader) or raw bytes
@pytest.mark.parametrize("x_dtype", NARROW + WIDE)
def test_feature_dtypes_are_converted_in_the_read_buffer(tmp_path, ref, monkeypatch, x_dtype,
                                                         compressors, direct):
    monkeypatch.setattr(stream_mod, "_DIRECT_ENABLED", direct)
    X, y = _values()
    if x_dtype == "bool":
        X = X > 2
    _write(zarr.open_group(str(tmp_path / "s.zarr"), mode="w"), X, y, x_dtype=x_dtype,
           compressors=compressors)
    src = open_zarr(tmp_path / "s.zarr")
    wide = x_dtype in WIDE
    assert src.x_dtype == (np.float64 if wide else np.float32)
    got = _batches(src)
    if x_dtype == "bool":  # compare with the same values stored as float32
        _write(zarr.open_group(str(tmp_path / "b.zarr"), mode="w"), X, y)
        _assert_same_batches(got, _batches(open_zarr(tmp_path / "b.zarr")))
        return
    _assert_same_batches(got, ref["batches64" if wide else "batches"],
                         np.float64 if wide else np.float32)
    if x_dtype in ("uint8", "int64"):
        assert_array_equal(_theta(tmp_path / "s.zarr"), ref["theta64" if wide else "theta"])


@pytest.mark.parametrize("y_dtype", ["bool", "uint8", "int64", "float16"])
def test_label_dtypes_give_the_same_fit(tmp_path, ref, y_dtype):
    _store(tmp_path / "s.zarr", y_dtype=y_dtype, x_dtype="uint8")
    _assert_same_batches(_batches(open_zarr(tmp_path / "s.zarr")), ref["batches"])
    assert_array_equal(_theta(tmp_path / "s.zarr"), ref["theta"])


def test_label_domain_is_still_checked_for_integer_labels(tmp_path):
    X, y = _values()
    y = y.copy()
    y[300] = 2
    _write(zarr.open_group(str(tmp_path / "s.zarr"), mode="w"), X, y, x_dtype="uint8")
    with pytest.raises(DataError, match="y"):
        _theta(tmp_path / "s.zarr")


def test_float16_non_finite_features_are_located(tmp_path):
    X, y = _values()
    X[333, 2] = np.inf
    _write(zarr.open_group(str(tmp_path / "s.zarr"), mode="w"), X, y, x_dtype="float16")
    with pytest.raises(DataError, match="non-finite") as info:
        _batches(open_zarr(tmp_path / "s.zarr"))
    assert info.value.row == 333


def test_unsupported_feature_dtype_names_the_accepted_ones():
    X = np.zeros((10, 2), dtype=np.complex64)
    with pytest.raises(TypeError, match="float32 or float64, or bool"):
        as_source((X, np.zeros(10)))


def test_numpy_and_iterator_integer_features(ref):
    X, y = _values()
    _assert_same_batches(_batches(as_source((X.astype(np.uint8), y))),
                         _batches(as_source((X.astype(np.float32), y))))
    src = as_source(iter([(X[:300].astype(np.int16), y[:300]), (X[300:].astype(np.int16),
                                                                  y[300:])]))
    assert src.x_dtype == np.float32
    with src.batches(batch_size=1000, shuffle=False) as stream:
        got = np.concatenate([b.X for b in stream])
    assert got.dtype == np.float32
    assert_array_equal(got, X)


# -- stores, paths, groups -----------------------------------------------------------------------
def test_nested_array_paths(tmp_path, ref):
    _store(tmp_path / "n.zarr", x="train/X", yname="train/y")
    src = open_zarr(tmp_path / "n.zarr", x="train/X", y="train/y")
    _assert_same_batches(_batches(src), ref["batches"])
    assert_array_equal(_theta(tmp_path / "n.zarr", x="train/X", y="train/y"), ref["theta"])
    with pytest.raises(DataError, match=r"train/X"):
        open_zarr(tmp_path / "n.zarr", x="train/Z", y="train/y")


def _zip_of(directory, path):
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(directory.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(directory).as_posix())
    return path


def test_zip_store_by_path_and_object(tmp_path, ref):
    z = _zip_of(ref["path"], tmp_path / "data.zip")
    _assert_same_batches(_batches(open_zarr(z)), ref["batches"])
    assert_array_equal(_theta(z), ref["theta"])
    assert_array_equal(_theta(str(z)), ref["theta"])
    store = zarr.storage.ZipStore(z, mode="r")
    _assert_same_batches(_batches(as_source(store)), ref["batches"])


def test_memory_store_and_group(ref):
    store = zarr.storage.MemoryStore()
    _write(zarr.open_group(store, mode="w"), *_values())
    _assert_same_batches(_batches(as_source(store)), ref["batches"])
    assert_array_equal(_theta(store), ref["theta"])
    group = zarr.open_group(store, mode="r")
    assert_array_equal(_theta(group), ref["theta"])


def test_fsspec_memory_url(ref):
    pytest.importorskip("fsspec")
    url = "memory://natgrad-test-inputs/data.zarr"
    _write(zarr.open_group(url, mode="w"), *_values())
    _assert_same_batches(_batches(as_source(url)), ref["batches"])
    store = zarr.storage.FsspecStore.from_url(url, read_only=True)
    assert_array_equal(_theta(store), ref["theta"])


def test_missing_path_and_non_zip_file(tmp_path):
    with pytest.raises(DataError, match="no Zarr group"):
        open_zarr(tmp_path / "nope.zarr")
    (tmp_path / "f.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="zip"):
        open_zarr(tmp_path / "f.zip")


# -- pandas, xarray ------------------------------------------------------------------------------
def test_pandas_dataframe_and_series(ref):
    pd = pytest.importorskip("pandas")
    X, y = _values()
    df = pd.DataFrame(X.astype(np.float32), columns=[f"f{i}" for i in range(D)])
    s = pd.Series(y, name="y")
    src = as_source((df, s))
    assert src.chunk_rows == DEFAULT_CHUNK_ROWS
    _assert_same_batches(_batches(as_source((df, s))),
                         _batches(as_source((X.astype(np.float32), y))))
    np.testing.assert_allclose(_theta((df, s)), _theta((X.astype(np.float32), y)), rtol=0,
                               atol=0)
    assert as_source(df).n_features == D
    _assert_same_batches(_batches(as_source((df.astype(np.uint8), s))),
                         _batches(as_source((X.astype(np.float32), y))))


def test_xarray_dataset_and_dataarrays(tmp_path, ref):
    xr = pytest.importorskip("xarray")
    X, y = _values()
    ds = xr.Dataset({"X": (("row", "feature"), X.astype(np.float32)),
                     "y": (("row",), y)})
    f32 = _batches(as_source((X.astype(np.float32), y)))
    _assert_same_batches(_batches(as_source(ds)), f32)
    _assert_same_batches(_batches(as_source((ds["X"], ds["y"]))), f32)
    ds2 = ds.rename({"X": "features", "y": "label"})
    _assert_same_batches(_batches(as_source(ds2, x="features", y="label")), f32)
    with pytest.raises(DataError, match="features"):
        as_source(ds2)


def test_xarray_open_zarr_is_read_lazily_by_chunk(tmp_path, ref):
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(ref["path"], consolidated=False, chunks=None)
    src = as_source(ds)
    assert src.chunk_rows == CHUNK
    assert not isinstance(src.X, np.ndarray)  # slices are loaded as they are read
    _assert_same_batches(_batches(src), ref["batches"])
    assert_array_equal(_theta(ds), ref["theta"])


def test_make_data_stores_open_in_xarray(tmp_path):
    xr = pytest.importorskip("xarray")
    make_dataset(tmp_path / "d.zarr", task="logistic", rows=300, features=3, chunk_rows=100,
                 test_rows=50)
    ds = xr.open_zarr(tmp_path / "d.zarr", consolidated=False)
    assert ds["X"].dims == ("row", "feature") and ds["y"].dims == ("row",)
    assert ds["X_test"].dims == ("test_row", "feature")
    assert_array_equal(np.asarray(ds["X"]), zarr.open_group(tmp_path / "d.zarr")["X"][...])
    make_dataset(tmp_path / "g.zarr", task="gaussian-mean", rows=100, features=3)
    assert "A" in xr.open_zarr(tmp_path / "g.zarr", consolidated=False)


# -- refused kinds -------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [42, {"X": np.zeros((3, 2))}, {1, 2}, b"bytes", None])
def test_unsupported_kinds_raise_type_error_naming_the_accepted_ones(data):
    with pytest.raises(TypeError, match="pandas DataFrame.*xarray Dataset"):
        as_source(data)


# -- dask ------------------------------------------------------------------------------------
def test_dask_arrays_and_dask_backed_xarray(ref):
    """Dask arrays, and an xarray Dataset whose variables are dask arrays, stream chunk by
    chunk (nothing is computed whole) and give the float32 Zarr result.
    """
    da = pytest.importorskip("dask.array")
    xr = pytest.importorskip("xarray")
    g = zarr.open_group(str(ref["path"]), mode="r")
    X, y = da.from_zarr(g["X"]), da.from_zarr(g["y"])
    src = as_source((X, y))
    assert src.chunk_rows == CHUNK and not isinstance(src.X, np.ndarray)
    _assert_same_batches(_batches(src), ref["batches"])
    assert_array_equal(_theta((X, y)), ref["theta"])
    ds = xr.open_zarr(ref["path"], consolidated=False)  # dask-backed variables
    assert hasattr(ds["X"].data, "dask")
    _assert_same_batches(_batches(as_source(ds)), ref["batches"])
    assert_array_equal(_theta(ds), ref["theta"])
