"""SparseRows: the CSR batch type, against SciPy as the reference."""

import numpy as np
import pytest
import scipy.sparse as sp

from natgrad_stream.data.sparse import SparseRows, as_sparse_rows, is_sparse


def _random_csr(n=40, d=30, density=0.2, seed=0, dtype=np.float64):
    return sp.random(n, d, density=density, format="csr", random_state=seed, dtype=dtype)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil"])
def test_from_scipy_any_format_equals_dense(fmt):
    M = _random_csr().asformat(fmt)
    R = SparseRows.from_scipy(M)
    assert R.shape == M.shape and R.indices.dtype == np.int32 and R.indptr.dtype == np.int64
    np.testing.assert_array_equal(R.toarray(), M.toarray())


def test_sparse_arrays_and_dtypes():
    M = sp.csr_array(_random_csr(dtype=np.float32))
    R = as_sparse_rows(M)
    assert R.dtype == np.float32
    counts = sp.csr_matrix(np.array([[0, 3], [2, 0]], dtype=np.int64))
    assert SparseRows.from_scipy(counts).dtype == np.float64
    assert is_sparse(M) and is_sparse(R) and not is_sparse(np.zeros((2, 2)))


def test_slice_take_compact_to_scipy():
    M = _random_csr(n=50)
    R = SparseRows.from_scipy(M)
    V = R.rows_slice(10, 25)
    assert V.shape == (15, 30) and V.indptr[0] == M.indptr[10]
    np.testing.assert_array_equal(V.toarray(), M[10:25].toarray())
    rows = np.array([7, 3, 3, 49, 0])
    np.testing.assert_array_equal(V.take(np.array([2, 0])).toarray(), M[[12, 10]].toarray())
    T = R.take(rows)
    np.testing.assert_array_equal(T.toarray(), M[rows].toarray())
    assert T.nnz == M[rows].nnz
    np.testing.assert_array_equal(V.to_scipy().toarray(), M[10:25].toarray())
    empty = R.take(np.array([], dtype=np.int64))
    assert empty.shape == (0, 30) and empty.nnz == 0


def test_duplicates_add_like_scipy():
    R = SparseRows.from_arrays(np.array([1.0, 2.0]), np.array([1, 1]), np.array([0, 2]), 3)
    np.testing.assert_array_equal(R.toarray(), [[0.0, 3.0, 0.0]])


def test_refuses_non_numeric_values():
    with pytest.raises(TypeError, match="sparse values"):
        SparseRows.from_arrays(np.array(["a"]), np.array([0]), np.array([0, 1]), 1)
