"""Sparse rows: the CSR batch type every sparse path shares.

A :class:`SparseRows` is the sparse counterpart of a dense feature batch ``X`` of shape
``(n, d)``: three flat arrays in compressed-sparse-row form. Row ``i``'s non-zeros are
``data[indptr[i]:indptr[i+1]]`` in the columns ``indices[indptr[i]:indptr[i+1]]``.
``indptr[0]`` need not be 0, so a run of rows of a larger CSR matrix is a view
(:meth:`SparseRows.rows_slice`); kernels read row ``i`` through ``indptr`` only.

Canonical dtypes (what kernels are compiled for): ``data`` float32 or float64 (by the
rule of :func:`~natgrad_stream.data.validation.compute_dtype`), ``indices`` int32,
``indptr`` int64. Column indices may repeat within a row (duplicates add, as in SciPy)
and need not be sorted.
"""

from __future__ import annotations

import numpy as np

from natgrad_stream.data.validation import compute_dtype

#: The largest feature count a CSR batch's int32 column indices can address.
MAX_SPARSE_FEATURES = np.iinfo(np.int32).max


class SparseRows:
    """Rows of a CSR matrix.

    Parameters
    ----------
    data : ndarray, shape (nnz_total,), float32 or float64
    indices : ndarray, shape (nnz_total,), int32
    indptr : ndarray, shape (n + 1,), int64, non-decreasing
    n_features : int
        ``d``: columns; every index is in ``[0, d)``.

    Attributes
    ----------
    shape : tuple (n, d)
    dtype : numpy.dtype (of ``data``)
    """

    __slots__ = ("checked", "data", "indices", "indptr", "shape")
    ndim = 2

    def __init__(self, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
                 n_features: int, *, checked: bool = False):
        self.data = data
        self.indices = indices
        self.indptr = indptr
        self.shape = (int(indptr.shape[0]) - 1, int(n_features))
        #: Whether a reader already checked these rows (canonical dtypes, ``indptr``
        #: non-decreasing within the arrays, column indices in range): kernels' entry
        #: checks (:func:`~natgrad_stream.models.base.check_sparse_rows`) then skip them.
        self.checked = checked

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_scipy(cls, matrix) -> SparseRows:
        """Canonical CSR rows of any SciPy sparse matrix or array (CSR, CSC, COO, …).

        Values are converted to the compute dtype (float32 for 16-bit and narrower types,
        else float64); CSR input of canonical dtypes is not copied.
        """
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise TypeError(f"expected a scipy.sparse matrix, got {type(matrix).__name__}")
        if matrix.ndim != 2:
            raise ValueError(f"X must be 2-D (rows × features), got shape {matrix.shape}")
        csr = matrix.tocsr() if matrix.format != "csr" else matrix
        return cls.from_arrays(csr.data, csr.indices, csr.indptr, csr.shape[1])

    @classmethod
    def from_arrays(cls, data, indices, indptr, n_features: int) -> SparseRows:
        """Canonical rows from CSR arrays of any real dtypes (converted where needed)."""
        data = np.asarray(data)
        dtype = compute_dtype(data.dtype)
        if dtype is None:
            raise TypeError(f"sparse values have dtype {data.dtype}; expected a real "
                            "numeric dtype (bool, integer or float)")
        if int(n_features) > MAX_SPARSE_FEATURES:
            raise ValueError(f"{n_features:,} features exceed the {MAX_SPARSE_FEATURES:,} "
                             "a CSR batch addresses")
        return cls(np.ascontiguousarray(data, dtype=dtype),
                   np.ascontiguousarray(indices, dtype=np.int32),
                   np.ascontiguousarray(indptr, dtype=np.int64), int(n_features))

    # -- array-like surface -----------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def nnz(self) -> int:
        """Stored entries of these rows (not of the arrays they view)."""
        return int(self.indptr[-1] - self.indptr[0])

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"SparseRows(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype})")

    def rows_slice(self, a: int, b: int) -> SparseRows:
        """Rows ``a:b`` as a view (no copy)."""
        return SparseRows(self.data, self.indices, self.indptr[a:b + 1], self.shape[1],
                          checked=self.checked)

    def take(self, rows: np.ndarray) -> SparseRows:
        """Rows ``rows`` (int array) gathered into new compact arrays."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        lengths = stops - starts
        indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        if indptr[-1] == 0:
            return SparseRows(self.data[:0].copy(), self.indices[:0].copy(), indptr,
                              self.shape[1])
        # positions of every gathered entry: each row's start, then consecutive
        pos = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return SparseRows(self.data[pos], self.indices[pos], indptr, self.shape[1])

    def compact(self) -> SparseRows:
        """These rows with their own arrays starting at 0 (copies only when a view)."""
        a, b = int(self.indptr[0]), int(self.indptr[-1])
        if a == 0 and b == self.data.shape[0]:
            return self
        return SparseRows(self.data[a:b].copy(), self.indices[a:b].copy(),
                          self.indptr - a, self.shape[1])

    def to_scipy(self):
        """A ``scipy.sparse.csr_matrix`` of these rows (shares arrays where possible)."""
        import scipy.sparse as sp

        c = self.compact()
        return sp.csr_matrix((c.data, c.indices, c.indptr), shape=self.shape)

    def toarray(self) -> np.ndarray:
        """Dense rows, shape (n, d), in ``dtype``."""
        out = np.zeros(self.shape, dtype=self.dtype)
        c = self.compact()
        rows = np.repeat(np.arange(self.shape[0]), np.diff(c.indptr))
        np.add.at(out, (rows, c.indices), c.data)
        return out


def is_sparse(X) -> bool:
    """Whether ``X`` is sparse rows: a :class:`SparseRows` or any SciPy sparse matrix."""
    if isinstance(X, SparseRows):
        return True
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a core dependency
        return False
    return sp.issparse(X)


def as_sparse_rows(X) -> SparseRows:
    """``X`` as canonical :class:`SparseRows` (SciPy sparse input converted)."""
    return X if isinstance(X, SparseRows) else SparseRows.from_scipy(X)
