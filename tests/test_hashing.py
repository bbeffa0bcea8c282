"""Feature hashing of tables, against scikit-learn's MurmurHash3 and FeatureHasher."""

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction import FeatureHasher
from sklearn.utils import murmurhash3_32 as sk_murmur

from natgrad_stream.data.hashing import feature_index, hash_columns, murmurhash3_32
from natgrad_stream.errors import DataError


@pytest.mark.parametrize("key", ["", "a", "ab", "abc", "abcd", "carrier=UA", "tailnum=N14228",
                                 "é=ü", "x" * 37])
def test_murmurhash_equals_scikit_learn(key):
    assert murmurhash3_32(key.encode()) == sk_murmur(key, seed=0, positive=True)


def _table():
    return pd.DataFrame({
        "carrier": ["UA", "AA", "UA", None, "B6"],
        "month": pd.Categorical([1, 1, 2, 3, 12]),
        "distance": [1400.0, 0.0, 2.5, 17.0, -3.0],
        "late": [True, False, True, False, False],
    })


def test_hash_columns_equals_feature_hasher_without_signs():
    df = _table()
    bits = 10
    got = hash_columns(df, bits).toarray()
    # the same keys through scikit-learn: string features "col=value", numeric (col, value)
    rows = []
    for _, r in df.iterrows():
        feats = {}
        for c in ("carrier", "month"):
            if r[c] is not None and not (isinstance(r[c], float) and np.isnan(r[c])):
                feats[f"{c}={r[c]}"] = 1.0
        for c in ("distance", "late"):
            feats[c] = float(r[c])
        rows.append(feats)
    ref = FeatureHasher(n_features=1 << bits, alternate_sign=False).transform(rows).toarray()
    np.testing.assert_array_equal(got, ref)
    assert got[3].sum() == pytest.approx(1 + 17.0)  # the missing carrier sets nothing


def test_hash_columns_selects_columns_and_checks_input():
    df = _table()
    one = hash_columns(df, 8, columns=["carrier"])
    assert one.shape == (5, 256) and one.nnz == 4
    assert one[0, feature_index("carrier=UA", 8)] == 1.0
    with pytest.raises(DataError, match="'nope'.*not a column"):
        hash_columns(df, 8, columns=["nope"])
    with pytest.raises(ValueError, match="1..31"):
        hash_columns(df, 0)
    bad = df.assign(distance=[1.0, np.nan, 0.0, 1.0, 2.0])
    with pytest.raises(DataError, match="'distance'.*row 1.*non-finite"):
        hash_columns(bad, 8)


def test_a_table_with_string_columns_is_refused_with_the_way_to_encode_it():
    from natgrad_stream.data import as_source

    df = _table()
    with pytest.raises(TypeError, match=r"\['carrier', 'month'\] are not numeric.*hash_columns"):
        as_source((df, np.zeros(5)))
    hashed = hash_columns(df, 12)
    source = as_source((hashed, np.zeros(5)))
    assert source.n_features == 4096 and type(source).__name__ == "SparseSource"
