"""Members of AnnData stores read as features and targets.

AnnData writes each element with ``encoding-type`` / ``encoding-version`` attributes: a
sparse matrix (``X``, ``layers/<name>``) is a ``csr_matrix`` group (read by
:class:`~natgrad_stream.data.sparse_source.SparseSource`), dense matrices (``obsm/X_pca``)
and numeric ``obs`` columns are plain arrays, and a categorical ``obs`` column
(``obs/cell_type``) is a group ``categorical`` holding ``codes`` (integers, ``-1`` for a
missing value) and ``categories`` (the names). A categorical target is its codes, and its
categories are the class names (``source.class_names``).
"""

from __future__ import annotations

import numpy as np

from natgrad_stream.data.metadata import is_zarr_array
from natgrad_stream.errors import DataError


def is_categorical(member) -> bool:
    """Whether a Zarr member is an AnnData categorical group."""
    return (member is not None and not is_zarr_array(member) and hasattr(member, "attrs")
            and member.attrs.get("encoding-type") == "categorical")


def categorical_target(group, name: str):
    """``(codes, class_names, checks)`` of the categorical group ``group`` (named ``name``).

    Raises
    ------
    DataError
        When ``codes`` or ``categories`` is missing or not 1-D integer codes and names.
    """
    from natgrad_stream.data.stream import read_rows, zarr_member

    codes, categories = zarr_member(group, "codes"), zarr_member(group, "categories")
    for arr, part in ((codes, "codes"), (categories, "categories")):
        if arr is None or not is_zarr_array(arr) or arr.ndim != 1:
            raise DataError(f"is a categorical column without a 1-D array {part!r}",
                            array=name)
    if np.dtype(codes.dtype).kind not in "iu":
        raise DataError(f"has codes of dtype {codes.dtype}; expected integers",
                        array=f"{name}/codes")
    names = [str(v) for v in read_rows(categories, label=f"{name}/categories").tolist()]
    return codes, names, (code_check(len(names)),)


def code_check(n_categories: int):
    """A target check: every code names one of ``n_categories`` categories (a missing
    value, code ``-1``, is refused: it has no class).
    """
    def check(label, block):
        bad = np.flatnonzero((block < 0) | (block >= n_categories))
        if not bad.size:
            return None
        v = int(block[bad[0]])
        why = ("a missing value (code -1): drop or label those rows" if v < 0 else
               f"code {v} names no category (there are {n_categories})")
        return int(bad[0]), why

    return check
