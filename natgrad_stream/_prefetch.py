"""A software prefetch for compiled kernels: ``prefetch(a, i)`` asks the CPU to bring the
cache line of ``a[i]`` closer (LLVM's ``llvm.prefetch``: a read, kept in every cache
level); it changes no value and never faults, so ``i`` may lie past the array's end.

Kernels that read scattered rows of arrays much larger than the caches (a shuffled read's
permutation) issue it for a row some rows ahead, so its lines arrive while earlier rows
are copied instead of each row's first lines stalling the loop. Under
``NUMBA_DISABLE_JIT=1`` (coverage runs) it is a Python no-op.
"""

from __future__ import annotations

import numba

if numba.config.DISABLE_JIT:
    def prefetch(a, i):
        """No-op without compilation."""
        return None
else:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, a, i):
        """Prefetch the cache line of ``a[i]`` (1-D array, integer index) for reading."""
        if not isinstance(a, types.Array) or not isinstance(i, types.Integer):
            return None
        sig = types.void(a, i)

        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            index = context.cast(builder, args[1], signature.args[1], types.intp)
            ptr = builder.gep(array.data, [index])
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0")
            # read (0), highest locality (3), data cache (1)
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return sig, codegen
