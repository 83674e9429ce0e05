"""Packaging: `passes/` and `csrc/` are installed as flashrnn_compile.passes and
flashrnn_compile.csrc (the CUDA sources travel with the package for the JIT build).

On a CUDA machine, `FLASHRNN_BUILD_AOT=1 pip install --no-build-isolation .` also builds the
kernels ahead of time (flashrnn_compile/build.py: aot_extension); they are used only when the
running torch is the one they were built against, otherwise the cached JIT build is.
"""

import os
import sys

from setuptools import find_packages, setup

packages = find_packages(include=["flashrnn_compile", "flashrnn_compile.*"])
packages += ["flashrnn_compile.passes", "flashrnn_compile.csrc"]

ext_modules, cmdclass = [], {}
if os.environ.get("FLASHRNN_BUILD_AOT") == "1":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch.utils.cpp_extension import BuildExtension

    from flashrnn_compile.build import aot_extension

    ext_modules, cmdclass = [aot_extension()], {"build_ext": BuildExtension}

setup(
    packages=packages,
    package_dir={"flashrnn_compile.passes": "passes", "flashrnn_compile.csrc": "csrc"},
    package_data={
        "flashrnn_compile": ["*.torch_version"],
        "flashrnn_compile.csrc": ["**/*.cu", "**/*.cuh", "**/*.h", "**/*.cpp", "**/*.cint"],
    },
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
