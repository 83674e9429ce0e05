"""Packaging: `passes/` and `csrc/` are installed as flashrnn_compile.passes and
flashrnn_compile.csrc (the CUDA sources travel with the package for the JIT build).

On a machine with CUDA and FLASHRNN_BUILD_AOT=1 the kernels are also built ahead of time
(see flashrnn_compile/build.py); otherwise they are built on first use and cached.
"""

import os

from setuptools import find_packages, setup

packages = find_packages(include=["flashrnn_compile", "flashrnn_compile.*"])
packages += ["flashrnn_compile.passes", "flashrnn_compile.csrc"]

setup(
    packages=packages,
    package_dir={"flashrnn_compile.passes": "passes", "flashrnn_compile.csrc": "csrc"},
    package_data={"flashrnn_compile.csrc": ["**/*.cu", "**/*.cuh", "**/*.h", "**/*.cpp", "**/*.cint"]},
    include_package_data=True,
    zip_safe=False,
)
