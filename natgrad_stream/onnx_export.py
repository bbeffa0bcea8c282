"""ONNX export through the equivalent scikit-learn estimator and skl2onnx.

:func:`to_onnx` converts a fitted model (a run directory, a learner, one of our
scikit-learn estimators or a ``(model, theta)`` pair) into an ONNX graph by converting its
:func:`~natgrad_stream.sklearn_equivalent.to_sklearn` estimator with skl2onnx. Our
estimators also convert directly, ``skl2onnx.to_onnx(NaturalGradientClassifier().fit(X,
y), X)``: skl2onnx asks them for their shape calculator and converter
(``onnx_shape_calculator``/``onnx_converter``), which are those of their scikit-learn
equivalent (:func:`delegate`), so no registration is needed, and the first conversion
registers them (:func:`register_converters`) so that skl2onnx accepts their equivalents'
options. Their classifier's outputs are arrays: ``label`` and ``probabilities`` (no
ZipMap).

Precision: with ``dtype="float64"`` (the default) the graph computes in double precision
(``MatMul``, ``Add``, then ``Sigmoid``/``Softmax``/``Exp``) and its predictions equal ours
to round-off (≈1e-15); ``"float32"`` builds the single-precision graph skl2onnx makes by
default (``LinearClassifier``), whose predictions differ from ours by the float32 rounding
of the coefficients and of the products (≈1e-7 relative to ``Σ_j |x_j coef_j|``).

Needs the ``onnx`` extra: ``pip install "natgrad-stream[onnx]"`` (skl2onnx, onnxruntime).
"""

from __future__ import annotations

import numpy as np

from natgrad_stream.errors import OptionError

#: ONNX opset of the graphs written (supported by onnxruntime ≥ 1.16).
ONNX_OPSET = 18
DTYPES = ("float64", "float32")


def _skl2onnx():
    try:
        import skl2onnx
    except ImportError as exc:
        raise OptionError(f"ONNX export needs skl2onnx ({exc}); install it with "
                          "pip install 'natgrad-stream[onnx]'") from None
    return skl2onnx


def delegate(estimator, kind: str):
    """skl2onnx's ``shape_calculator`` or ``converter`` for our ``estimator``: the one
    registered for its :meth:`to_sklearn` equivalent, called with that equivalent as the
    operator's model.
    """
    from skl2onnx._supported_operators import get_model_alias
    from skl2onnx.common import _registration

    register_converters()  # before skl2onnx validates the options given for the estimator
    equivalent = estimator.to_sklearn()
    alias = get_model_alias(type(equivalent))
    inner = (_registration.get_shape_calculator(alias) if kind == "shape_calculator"
             else _registration.get_converter(alias))

    def call(*args):
        operator = args[0] if kind == "shape_calculator" else args[1]
        raw = operator.raw_operator
        options = getattr(args[-1], "options", None) if kind == "converter" else None
        if options and id(raw) in options:  # the user's options, for the equivalent
            options[id(equivalent)] = options[id(raw)]
        operator.raw_operator = equivalent
        try:
            return inner(*args)
        finally:
            operator.raw_operator = raw

    return call


def register_converters() -> None:
    """Register our scikit-learn estimators with skl2onnx, with the options their
    equivalents' converters take (classifiers: ``nocl``, ``raw_scores``; ``zipmap`` is
    accepted and has no effect: the outputs are always arrays), so that
    ``skl2onnx.to_onnx(estimator, X, options=...)`` validates them. Idempotent; called
    by the estimators' ``onnx_converter`` hooks.
    """
    from skl2onnx import update_registered_converter
    from skl2onnx.common import _registration

    from natgrad_stream import sklearn as ours

    def shape(operator):
        return delegate(operator.raw_operator, "shape_calculator")(operator)

    def convert(scope, operator, container):
        return delegate(operator.raw_operator, "converter")(scope, operator, container)

    for cls, like in ((ours.NaturalGradientClassifier, "SklearnLinearClassifier"),
                      (ours.NaturalGradientRegressor, "SklearnLinearRegressor"),
                      (ours.NaturalGradientPoissonRegressor, "SklearnPoissonRegressor")):
        alias = f"NaturalGradientStream{cls.__name__}"
        if _REGISTERED.get(alias):
            continue
        allowed = _registration._converter_pool[like].get_allowed_options()
        parser = _parse_classifier if "Classifier" in like else None
        update_registered_converter(cls, alias, shape, convert, options=allowed,
                                    parser=parser)
        _REGISTERED[alias] = True


def _parse_classifier(scope, model, inputs, custom_parsers=None):
    """skl2onnx's parse of our classifier: outputs ``label`` and ``probabilities`` as
    arrays, as skl2onnx's default parse of an unregistered classifier gives (so the first
    conversion, before :func:`register_converters`, and the later ones agree).
    """
    from skl2onnx._supported_operators import get_model_alias
    from skl2onnx.common.data_types import Int64TensorType, guess_tensor_type

    operator = scope.declare_local_operator(get_model_alias(type(model)), model)
    operator.inputs = inputs
    operator.outputs.append(scope.declare_local_variable("label", Int64TensorType()))
    operator.outputs.append(scope.declare_local_variable(
        "probabilities", guess_tensor_type(inputs[0].type)))
    return operator.outputs


#: Aliases registered with skl2onnx in this process.
_REGISTERED: dict[str, bool] = {}


def to_onnx(fitted, *, dtype: str = "float64", theta=None, classes=None,
            name: str = "natgrad_stream"):
    """An ONNX ``ModelProto`` predicting as ``fitted``.

    Parameters
    ----------
    fitted : run directory, NaturalGradientLearner, our scikit-learn estimator, or Model
        With a :class:`~natgrad_stream.models.Model`, pass ``theta`` (and ``classes``).
    dtype : {"float64", "float32"}
        The graph's input (and computation) type: the input ``X`` is ``(None, d)`` of it.
    name : str
        The graph's name.

    Returns
    -------
    onnx.ModelProto
        Input ``X``; outputs ``label`` and ``probabilities`` (classifiers: an array
        ``(n, K)``, columns in class order, no ZipMap) or ``variable`` (regressors,
        ``(n, 1)``).
    """
    if dtype not in DTYPES:
        raise OptionError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    skl2onnx = _skl2onnx()
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    equivalent = as_sklearn(fitted, theta=theta, classes=classes)
    d = int(equivalent.n_features_in_)
    tensor = DoubleTensorType if dtype == "float64" else FloatTensorType
    options = {id(equivalent): {"zipmap": False}} if hasattr(equivalent, "classes_") else None
    return skl2onnx.to_onnx(equivalent, initial_types=[("X", tensor([None, d]))],
                            options=options, target_opset=ONNX_OPSET, naming=name)


def as_sklearn(fitted, *, theta=None, classes=None):
    """The scikit-learn equivalent of whatever :func:`to_onnx` accepts."""
    import os

    from natgrad_stream.models import Model
    from natgrad_stream.sklearn_equivalent import run_to_sklearn, to_sklearn

    if isinstance(fitted, str | os.PathLike):
        return run_to_sklearn(fitted)
    if isinstance(fitted, Model):
        if theta is None:
            raise TypeError("to_onnx(model) needs theta=")
        return to_sklearn(fitted, np.asarray(theta), classes=classes)
    if hasattr(fitted, "to_sklearn"):
        return fitted.to_sklearn()
    raise TypeError(f"cannot export {type(fitted).__name__}: expected a run directory, a "
                    "NaturalGradientLearner, a natgrad_stream scikit-learn estimator or a "
                    "Model with theta")


def write_onnx(fitted, path, *, dtype: str = "float64", overwrite: bool = False) -> dict:
    """Write :func:`to_onnx` of ``fitted`` to ``path`` (atomically: a temporary file
    renamed into place); refuses an existing ``path`` unless ``overwrite``. Returns what
    was written: path, dtype, inputs and outputs.
    """
    from pathlib import Path

    from natgrad_stream.app.table_writers import atomic_output

    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:  # refuses an existing path first
        proto = to_onnx(fitted, dtype=dtype)
        tmp.write_bytes(proto.SerializeToString())
    return {"path": str(path), "dtype": dtype,
            "inputs": [i.name for i in proto.graph.input],
            "outputs": [o.name for o in proto.graph.output], "opset": ONNX_OPSET}
