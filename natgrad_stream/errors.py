"""Exceptions that say what was wrong and where."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data, located by array name, chunk and row.

    Attributes
    ----------
    array : str or None
        Name of the offending array (e.g. ``"X"``), or the source name.
    chunk : int or None
        Index of the chunk (along rows) holding the first bad value.
    row : int or None
        Global row index of the first bad value.
    column : int or None
        Column index, for 2-D arrays.
    """

    def __init__(self, message: str, *, array=None, chunk=None, row=None, column=None):
        where = []
        if array is not None:
            where.append(f"array {array!r}")
        if chunk is not None:
            where.append(f"chunk {chunk}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.detail = message
        self.array, self.chunk, self.row, self.column = array, chunk, row, column

    def located(self, **where) -> DataError:
        """The same error at another location (e.g. a window's chunk in the full data);
        ``where`` replaces any of ``array``, ``chunk``, ``row``, ``column``.
        """
        loc = {"array": self.array, "chunk": self.chunk, "row": self.row,
               "column": self.column, **where}
        return DataError(self.detail, **loc)


class RunDirectoryError(RuntimeError):
    """A run directory is missing, incomplete, or would be overwritten."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not match the requested run."""


class OptionError(ValueError):
    """An option has a bad value, does not apply, or differs from the run being resumed."""


class NumericalError(FloatingPointError):
    """Learning produced a non-finite loss or gradient, or left the model's domain; the
    state before it is kept.
    """


class WhiteningError(ArithmeticError):
    """The metric could not be factored (non-finite, not positive, LAPACK failure)."""


class DistributedError(RuntimeError):
    """The Dask cluster failed: its scheduler is unreachable or gone, it has no workers, or
    a task kept killing its workers. The learner's state is the last completed step or
    pass, so a checkpoint of it resumes exactly.
    """
