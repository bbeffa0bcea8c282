"""Self-verifying stores: the project's writers store checksummed zstd frames and a manifest
of which chunk was written where; both read paths (the direct zstd reader and zarr's own)
refuse a damaged chunk, a swapped chunk and rows past those written with one line naming
the array, chunk and rows, and stores written without them still read.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from natgrad_stream.app.cli import main
from natgrad_stream.data import FollowSource, append_rows, as_source
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.data.manifest import MANIFEST_ATTR, write_manifest
from natgrad_stream.errors import DataError

ROWS, FEATURES, CHUNK = 5000, 4, 1000
PATHS = ["direct", "zarr"]


def _made(path, rows=ROWS):
    make_dataset(path, task="logistic", rows=rows, features=FEATURES, chunk_rows=CHUNK)
    return path


def _chunk_file(path, name, c):
    return path / name / "c" / str(c) / "0" if name == "X" else path / name / "c" / str(c)


def _read(path, kind):
    """Every row of ``X`` and ``y``, in order, through the direct reader or zarr's path."""
    src = as_source(str(path))
    if kind == "zarr":
        src._direct = {}
    xs, ys = [], []
    with src.batches(batch_size=700, shuffle=False) as stream:
        for batch in stream:
            xs.append(batch.X.copy())
            ys.append(batch.y.copy())
    return np.concatenate(xs), np.concatenate(ys)


def _flip(file, byte, bit=0):
    data = bytearray(file.read_bytes())
    data[byte % len(data)] ^= 1 << bit
    file.write_bytes(bytes(data))


def _manifest(path, name):
    return json.loads((path / name / "zarr.json").read_text())["attributes"][MANIFEST_ATTR]


def _one_line_naming(exc, name, chunk, rows):
    text = str(exc)
    assert "\n" not in text
    assert text.startswith(f"array {name!r}, chunk {chunk}, row {rows[0]}:"), text
    assert f"rows {rows[0]}:{rows[1]}" in text, text


@pytest.mark.parametrize("kind", PATHS)
@pytest.mark.parametrize("name", ["X", "y"])
@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_a_bit_flip_in_a_chunk_is_refused_naming_array_chunk_and_rows(tmp_path, kind, name,
                                                                       where):
    path = _made(tmp_path / "d.zarr")
    file = _chunk_file(path, name, 2)
    _flip(file, int(where * file.stat().st_size), bit=3)
    with pytest.raises(DataError) as info:
        _read(path, kind)
    _one_line_naming(info.value, name, 2, (2000, 3000))


def test_every_bit_flip_in_a_chunk_is_refused_or_harmless(tmp_path):
    """Flips all over one chunk (header, blocks, checksum): an error or the same values."""
    path = _made(tmp_path / "d.zarr", rows=3000)
    ref = _read(path, "direct")
    file = _chunk_file(path, "X", 1)
    original = file.read_bytes()
    nbits = 8 * len(original)
    rng = np.random.default_rng(0)
    bits = set(range(0, 120)) | set(range(nbits - 40, nbits)) | set(rng.integers(0, nbits, 40))
    refused = 0
    for bit in sorted(bits):
        file.write_bytes(original)
        _flip(file, bit // 8, bit % 8)
        for kind in PATHS:
            try:
                got = _read(path, kind)
            except DataError:
                refused += 1
                continue
            for a, b in zip(got, ref, strict=True):
                np.testing.assert_array_equal(a, b)  # an unused header bit: same values
    assert refused > 0.95 * 2 * len(bits)


def test_cli_fit_exits_2_on_a_flipped_bit(tmp_path, capsys):
    path = _made(tmp_path / "d.zarr")
    _flip(_chunk_file(path, "X", 3), 5000)
    code = main(["fit", str(path), "--model", "logistic", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "array 'X', chunk 3" in err[0] and "checksum" in err[0], err


@pytest.mark.parametrize("kind", PATHS)
@pytest.mark.parametrize("name", ["X", "y"])
def test_swapped_chunks_are_refused_where_a_manifest_exists(tmp_path, kind, name):
    path = _made(tmp_path / "d.zarr")
    one, three = _chunk_file(path, name, 1), _chunk_file(path, name, 3)
    a, b = one.read_bytes(), three.read_bytes()
    one.write_bytes(b)
    three.write_bytes(a)
    with pytest.raises(DataError) as info:
        _read(path, kind)
    _one_line_naming(info.value, name, 1, (1000, 2000))
    assert "not the chunk written there" in str(info.value)


@pytest.mark.parametrize("kind", PATHS)
def test_an_old_store_without_checksums_or_manifest_still_reads(tmp_path, kind):
    path, X, y = _old_store(tmp_path / "old.zarr")
    got_X, got_y = _read(path, kind)
    np.testing.assert_array_equal(got_X, X)
    np.testing.assert_array_equal(got_y, y)


def test_the_writer_stores_checksummed_frames_and_a_manifest_of_every_chunk(tmp_path):
    path = _made(tmp_path / "d.zarr")
    for name in ("X", "y"):
        meta = json.loads((path / name / "zarr.json").read_text())
        assert meta["codecs"][-1] == {"name": "zstd",
                                      "configuration": {"level": 1, "checksum": True}}
        doc = _manifest(path, name)
        assert doc["rows"] == ROWS and doc["writing_from"] is None
        assert doc["hash"] == "zstd-checksum" and len(doc["chunks"]) == ROWS // CHUNK
        for c in range(ROWS // CHUNK):
            data = _chunk_file(path, name, c).read_bytes()
            key = f"c/{c}/0" if name == "X" else f"c/{c}"
            assert doc["chunks"][key] == [len(data), data[-4:].hex()]


@pytest.mark.parametrize("kind", PATHS)
def test_append_rows_keeps_checksums_and_the_manifest_valid(tmp_path, kind):
    path = _made(tmp_path / "d.zarr")
    X0, y0 = _read(path, kind)
    rng = np.random.default_rng(1)
    X1 = rng.standard_normal((1500, FEATURES)).astype(np.float32)
    y1 = rng.integers(0, 2, 1500).astype(np.uint8)
    append_rows(str(path), X=X1[:700], y=y1[:700])
    append_rows(str(path), X=X1[700:], y=y1[700:])  # rewrites the partial chunk 5
    got_X, got_y = _read(path, kind)
    np.testing.assert_array_equal(got_X, np.concatenate([X0, X1]))
    np.testing.assert_array_equal(got_y, np.concatenate([y0, y1]).astype(np.float64))
    doc = _manifest(path, "X")
    assert doc["rows"] == ROWS + 1500 and doc["writing_from"] is None
    assert sorted(doc["chunks"]) == [f"c/{c}/0" for c in range(7)]
    # the appended chunks are checksummed and recorded: damage and swaps are refused
    file = _chunk_file(path, "X", 5)
    original = file.read_bytes()
    _flip(file, len(original) // 2)
    with pytest.raises(DataError, match=r"array 'X', chunk 5, row 5000: .*checksum"):
        _read(path, kind)
    file.write_bytes(_chunk_file(path, "X", 4).read_bytes())
    with pytest.raises(DataError, match="not the chunk written there"):
        _read(path, kind)


@pytest.mark.parametrize("kind", PATHS)
def test_a_shape_grown_inside_the_last_chunks_padding_is_refused(tmp_path, kind):
    path = _made(tmp_path / "d.zarr", rows=4500)
    for name in ("X", "y"):
        meta_file = path / name / "zarr.json"
        meta = json.loads(meta_file.read_text())
        meta["shape"][0] = 4900  # the chunk files stay valid: 400 rows of padding
        meta_file.write_text(json.dumps(meta))
    with pytest.raises(DataError) as info:
        _read(path, kind)
    assert "rows 4500:4900 that were never written" in str(info.value)
    _one_line_naming(info.value, "X", 4, (4000, 4900))


@pytest.mark.parametrize("kind", PATHS)
def test_a_reader_opened_before_an_append_reads_the_rewritten_chunk(tmp_path, kind):
    """The last chunk is rewritten by an append after the reader loaded its manifest: the
    reader looks at the manifest in the store again before refusing.
    """
    path = _made(tmp_path / "d.zarr", rows=4500)
    src = as_source(str(path))
    if kind == "zarr":
        src._direct = {}
    append_rows(str(path), X=np.ones((300, FEATURES), np.float32), y=np.ones(300, np.uint8))
    n = 0
    with src.batches(batch_size=500, shuffle=False) as stream:
        for batch in stream:
            n += len(batch.rows)
    assert n == 4500


def test_chunks_an_unfinished_append_was_rewriting_are_verified_by_checksum(tmp_path):
    """An append marks the rows it rewrites (so readers accept the chunk's new bytes before
    its entry is recorded); other chunks keep their entries, and the next append clears it.
    """
    path = _made(tmp_path / "d.zarr", rows=4500)
    arr = zarr.open_array(str(path / "X"), mode="r+")
    arr.update_attributes({MANIFEST_ATTR: {**arr.attrs[MANIFEST_ATTR], "writing_from": 4500}})
    one, two = _chunk_file(path, "X", 1), _chunk_file(path, "X", 2)
    a, b = one.read_bytes(), two.read_bytes()
    one.write_bytes(b)
    two.write_bytes(a)
    with pytest.raises(DataError, match="array 'X', chunk 1, .*not the chunk written there"):
        _read(path, "direct")
    one.write_bytes(a)
    two.write_bytes(b)
    last = _chunk_file(path, "X", 4)
    last.write_bytes(_chunk_file(path, "X", 3).read_bytes())  # what an append might write
    assert len(_read(path, "direct")[0]) == 4500
    _flip(last, 900)
    with pytest.raises(DataError, match="array 'X', chunk 4, .*checksum"):
        _read(path, "direct")
    with pytest.raises(DataError, match="array 'X', chunk 4, row 4000: .*could not be dec"):
        append_rows(str(path), X=np.ones((10, FEATURES), np.float32),
                    y=np.ones(10, np.uint8))
    _flip(last, 900)
    append_rows(str(path), X=np.ones((10, FEATURES), np.float32), y=np.ones(10, np.uint8))
    assert _manifest(path, "X")["writing_from"] is None
    assert _manifest(path, "X")["rows"] == 4510


def test_append_rows_refuses_rows_written_past_the_manifest(tmp_path):
    path = _made(tmp_path / "d.zarr", rows=4500)
    for name in ("X", "y"):  # another writer grows the arrays without the manifest
        arr = zarr.open_array(str(path / name), mode="r+")
        arr.resize((4600,) + arr.shape[1:])
        arr[4500:] = 1
    with pytest.raises(DataError, match=r"array 'X', chunk 4, row 4500: its manifest records "
                                        r"4500 rows written but 4600"):
        append_rows(str(path), X=np.ones((10, FEATURES), np.float32),
                    y=np.ones(10, np.uint8))


def _old_store(path):
    """A store as make-data wrote it before: zstd without checksums, no manifest."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    y = rng.integers(0, 2, ROWS).astype(np.uint8)
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    codec = zarr.codecs.ZstdCodec(level=1)
    g.create_array("X", shape=X.shape, chunks=(CHUNK, FEATURES), dtype="float32",
                   compressors=codec)[...] = X
    g.create_array("y", shape=y.shape, chunks=(CHUNK,), dtype="uint8",
                   compressors=codec)[...] = y
    return path, X, y


@pytest.mark.parametrize("kind", PATHS)
def test_an_old_store_given_a_manifest_refuses_swaps_and_flips_by_crc32c(tmp_path, kind):
    path, X, _ = _old_store(tmp_path / "old.zarr")
    assert write_manifest(path) == {"X": 5, "y": 5}
    assert _manifest(path, "X")["hash"] == "crc32c"
    np.testing.assert_array_equal(_read(path, kind)[0], X)
    one, three = _chunk_file(path, "X", 1), _chunk_file(path, "X", 3)
    a, b = one.read_bytes(), three.read_bytes()
    one.write_bytes(b)
    three.write_bytes(a)
    with pytest.raises(DataError, match="array 'X', chunk 1, .*not the chunk written there"):
        _read(path, kind)
    one.write_bytes(a)
    three.write_bytes(b)
    _flip(three, len(b) // 2)
    with pytest.raises(DataError, match="array 'X', chunk 3, .*not the chunk written there"):
        _read(path, kind)


def test_write_manifest_records_a_store_changed_on_purpose(tmp_path):
    path = _made(tmp_path / "d.zarr")
    one, three = _chunk_file(path, "X", 1), _chunk_file(path, "X", 3)
    a, b = one.read_bytes(), three.read_bytes()
    one.write_bytes(b)
    three.write_bytes(a)
    assert write_manifest(path) == {"X": 5, "y": 5}
    X, _ = _read(path, "direct")
    np.testing.assert_array_equal(X[1000:2000], _read(path, "zarr")[0][1000:2000])
    # damaged bytes are not recorded: their checksum fails as the manifest is written
    _flip(one, 700)
    with pytest.raises(DataError, match="chunk 1"):
        write_manifest(path)


def test_a_malformed_manifest_is_one_line(tmp_path):
    path = _made(tmp_path / "d.zarr")
    meta_file = path / "X" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"][MANIFEST_ATTR]["chunks"] = ["c/0/0"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=f"array 'X': has a malformed {MANIFEST_ATTR}"):
        _read(path, "direct")


def test_follow_mode_verifies_and_tolerates_a_concurrent_writer(tmp_path):
    """A follower of a checksummed store with a manifest gets every row once while another
    process appends (the window in which an append rewrites a chunk the reader is about to
    read is tested deterministically by the test above), and refuses a damaged chunk.
    """
    path = _made(tmp_path / "live.zarr", rows=1000)
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, numpy as np
        from natgrad_stream.data.follow import append_rows
        for i in range(25):
            a = 1000 + 70 * i
            X = np.zeros((70, {FEATURES}), np.float32); X[:, 0] = np.arange(a, a + 70)
            append_rows({str(path)!r}, X=X, y=np.ones(70, np.uint8))
            time.sleep(0.01)
        """)])
    try:
        src = FollowSource(path, poll_seconds=0.005, idle_timeout=1.5)
        ids = []
        with src.batches(batch_size=64, shuffle=False) as stream:
            for batch in stream:
                ids.append(batch.rows)
    finally:
        assert writer.wait(timeout=60) == 0
    np.testing.assert_array_equal(np.concatenate(ids), np.arange(1000 + 25 * 70))
    _flip(_chunk_file(path, "X", 1), 300)
    with pytest.raises(DataError, match="array 'X', chunk 1"):
        with FollowSource(path, poll_seconds=0.01, idle_timeout=0.2).batches(
                batch_size=64, shuffle=False) as stream:
            for _ in stream:
                pass
