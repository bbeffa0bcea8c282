"""Every layout but the direct zstd reader's goes through zarr's public API, with the same
batches; missing and damaged chunks are named on every store; the library never touches
zarr's internals or its global configuration.
"""

import ast
import pathlib

import numpy as np
import pytest
import zarr
from numcodecs import Blosc, Zstd
from numpy.testing import assert_array_equal
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec

import natgrad_stream
from natgrad_stream.data import ArraySource, open_zarr
from natgrad_stream.data._zstd_direct import DirectChunks
from natgrad_stream.errors import DataError

N, D, CHUNK = 1000, 6, 128
_CFG = {"write_empty_chunks": True}


def _values():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((N, D)).astype(np.float32)
    y = (rng.random(N) < 0.4).astype(np.float64)
    return X, y


def _write(group, *, chunks=(CHUNK, D), shards=None, compressors="auto", serializer="auto",
           zarr_format=3):
    X, y = _values()
    kw = {} if zarr_format == 2 else {"serializer": serializer}
    group.create_array("X", shape=X.shape, chunks=chunks, shards=shards, dtype="float32",
                       compressors=compressors, config=_CFG, **kw)[...] = X
    group.create_array("y", shape=y.shape, chunks=(CHUNK,), dtype="float64",
                       config=_CFG)[...] = y
    return group


#: name -> (group factory over a tmp dir, whether the direct zstd reader takes it)
LAYOUTS = {
    "zstd-local (direct)": (lambda p: _write(zarr.open_group(p, mode="w")), True),
    "zstd-memory": (lambda p: _write(zarr.open_group(zarr.storage.MemoryStore(), mode="w")),
                    False),
    "gzip": (lambda p: _write(zarr.open_group(p, mode="w"), compressors=GzipCodec()), False),
    "blosc-lz4": (lambda p: _write(zarr.open_group(p, mode="w"),
                                   compressors=BloscCodec(cname="lz4")), False),
    "uncompressed": (lambda p: _write(zarr.open_group(p, mode="w"), compressors=None),
                     False),
    "big-endian": (lambda p: _write(zarr.open_group(p, mode="w"),
                                    serializer=BytesCodec(endian="big"),
                                    compressors=ZstdCodec()), False),
    "sharded": (lambda p: _write(zarr.open_group(p, mode="w"), chunks=(64, D),
                                 shards=(256, D)), False),
    "column-chunked": (lambda p: _write(zarr.open_group(p, mode="w"), chunks=(CHUNK, 4)),
                       False),
    "v2-zstd": (lambda p: _write(zarr.open_group(p, mode="w", zarr_format=2),
                                 compressors=Zstd(), zarr_format=2), False),
    "v2-blosc": (lambda p: _write(zarr.open_group(p, mode="w", zarr_format=2),
                                  compressors=Blosc(cname="zstd"), zarr_format=2), False),
}


def _batches(source):
    out = []
    with source.batches(batch_size=70, seed=5, chunks_per_read=3) as s:
        for b in s:
            out.append((b.rows.copy(), b.X.copy(), b.y.copy()))
    return out


@pytest.fixture
def spies(monkeypatch):
    """The arrays read through zarr's public ``Array.get_orthogonal_selection`` and through
    the direct zstd reader, by name, with each read counted.
    """
    calls = {"zarr": [], "direct": []}
    public, direct = zarr.Array.get_orthogonal_selection, DirectChunks.read_into

    def spy_public(self, *a, **k):
        calls["zarr"].append(self.path.rsplit("/", 1)[-1])
        return public(self, *a, **k)

    def spy_direct(self, *a, **k):
        calls["direct"].append(self.label)
        return direct(self, *a, **k)

    monkeypatch.setattr(zarr.Array, "get_orthogonal_selection", spy_public)
    monkeypatch.setattr(DirectChunks, "read_into", spy_direct)
    return calls


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_yields_the_same_batches_through_its_reader(tmp_path, spies, layout):
    make, direct = LAYOUTS[layout]
    group = make(str(tmp_path / "d.zarr"))
    X, y = _values()
    source = open_zarr(group)
    ref = _batches(ArraySource(X, y, chunk_rows=source.chunk_rows))
    spies.update(zarr=[], direct=[])
    got = _batches(source)
    assert len(got) == len(ref)
    for (r1, X1, y1), (r2, X2, y2) in zip(got, ref, strict=True):
        assert_array_equal(r1, r2)
        assert_array_equal(X1, X2)
        assert_array_equal(y1, y2)
    # every chunk of the features read once, by one of the two readers
    readers = {"direct": spies["direct"].count("X"), "zarr": spies["zarr"].count("X")}
    n = -(-N // source.chunk_rows)
    assert readers == ({"direct": n, "zarr": 0} if direct else {"direct": 0, "zarr": n})


def test_the_direct_reader_is_off_with_the_environment_switch(tmp_path, spies, monkeypatch):
    from natgrad_stream.data import stream

    monkeypatch.setattr(stream, "_DIRECT_ENABLED", False)
    group = LAYOUTS["zstd-local (direct)"][0](str(tmp_path / "d.zarr"))
    X, y = _values()
    got = _batches(open_zarr(group))
    assert spies["direct"] == [] and spies["zarr"].count("X") == 8
    ref = _batches(ArraySource(X, y, chunk_rows=CHUNK))
    assert_array_equal(np.concatenate([g[1] for g in got]), np.concatenate([r[1] for r in ref]))


# -- missing and damaged chunks on stores other than a local directory -----------------------
def _memory_group():
    return _write(zarr.open_group(zarr.storage.MemoryStore(), mode="w"))


def test_a_chunk_missing_from_a_memory_store_is_named(tmp_path):
    group = _memory_group()
    del group.store._store_dict["X/c/3/0"]  # the test's own store: remove one chunk
    with pytest.raises(DataError) as info:
        _batches(open_zarr(group))
    exc = info.value
    assert (exc.array, exc.chunk, exc.row) == ("X", 3, 3 * CHUNK)
    assert "X/c/3/0" in str(exc) and "missing" in str(exc)


def test_a_missing_shard_of_a_zip_store_is_named(tmp_path):
    path = tmp_path / "d.zip"
    with zarr.storage.ZipStore(path, mode="w") as store:
        _write(zarr.open_group(store, mode="w"), chunks=(64, D), shards=(256, D),
               compressors=None)
    # rebuild the zip without the second shard of X
    import zipfile

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "e.zip", "w") as dst:
        for info in src.infolist():
            if info.filename != "X/c/1/0":
                dst.writestr(info, src.read(info))
    store = zarr.storage.ZipStore(tmp_path / "e.zip", mode="r")
    with pytest.raises(DataError) as info:
        _batches(open_zarr(zarr.open_group(store, mode="r")))
    # the first read (in shuffled order) that meets the missing shard names its first row
    assert info.value.array == "X" and 256 <= info.value.row < 512
    assert info.value.chunk == info.value.row // 64 and info.value.row % 64 == 0


def test_a_truncated_blosc_frame_in_a_memory_store_is_named():
    group = _write(zarr.open_group(zarr.storage.MemoryStore(), mode="w"),
                   compressors=BloscCodec(cname="lz4"))
    d = group.store._store_dict
    d["X/c/2/0"] = type(d["X/c/2/0"]).from_bytes(d["X/c/2/0"].to_bytes()[:-7])
    with pytest.raises(DataError) as info:
        _batches(open_zarr(group))
    assert (info.value.array, info.value.chunk) == ("X", 2)
    assert "blosc header" in str(info.value)


def test_write_missing_chunks_finds_them_through_a_non_local_store(tmp_path):
    from natgrad_stream.data.metadata import StoredChunks

    group = _memory_group()
    del group.store._store_dict["X/c/5/0"]
    stored = StoredChunks(group["X"], "X")
    assert [c for c in range(8) if not stored.exists((c, 0))] == [5]


# -- no internals, no global configuration ---------------------------------------------------
def test_the_package_imports_nothing_from_zarr_internals():
    root = pathlib.Path(natgrad_stream.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names
                          if n.startswith(("zarr.core", "zarr._"))]
    assert offenders == []


def test_library_reads_leave_zarr_configuration_alone(tmp_path):
    group = LAYOUTS["gzip"][0](str(tmp_path / "d.zarr"))
    before = zarr.config.get("threading.max_workers")
    _batches(open_zarr(group))
    assert zarr.config.get("threading.max_workers") == before
