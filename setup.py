"""Only the Cython extensions; every other setting lives in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("_fastpath.frame", ["_fastpath/frame.pyx"], extra_compile_args=["-O3"]),
    Extension("_fastpath.walker", ["_fastpath/walker.pyx"], extra_compile_args=["-O3"]),
    Extension("_fastpath.mask", ["_fastpath/mask.pyx"], extra_compile_args=["-O3"]),
    Extension("_fastpath.record_batch", ["_fastpath/record_batch.pyx"], extra_compile_args=["-O3"]),
]

# Bounds are checked explicitly in each parser (against the bytes left), never by Cython's indexing.
directives = {"boundscheck": False, "wraparound": False}
setup(ext_modules=cythonize(extensions, language_level=3, compiler_directives=directives))
