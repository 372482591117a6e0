"""Build of mhc_ops._C, the native library, against the torch of this environment.

    pip install --no-build-isolation .                      into the environment that has torch
    pip wheel --no-build-isolation --no-deps . -w dist      a wheel for that torch
    python -m build --sdist                                 the source archive (needs no torch)

The library is compiled against one torch's C++ API, which changes between releases, so only
that torch may load it. torch is therefore not a build requirement: in an isolated build (plain
`pip install .`) it would install a second torch, the newest with its own CUDA, just to compile
against, and the result would be loaded by another one. A build stops at once with a message
when torch is not importable or comes from a frontend's temporary build environment. Packaging
the sources (sdist, egg_info) needs no torch. A wheel requires torch==<the version it was built
against>, and mhc_ops/_build_info.py, written beside the library, records that version, which
mhc_ops/_lib.py checks before it loads the library.

Read at build time (mhc_ops.envs knows the MHC_ ones as build variables):
  MHC_BUILD_CUDA=auto|1|0  auto (default): compile the CUDA sources when torch has CUDA and
                           CUDA_HOME exists, whether or not a GPU is visible; 1 requires them;
                           0 builds the CPU library only.
  TORCH_CUDA_ARCH_LIST     default: the visible GPUs' architectures; with none visible
                           "9.0;10.0+PTX": Hopper (sm_90) and Blackwell (sm_100) code, plus
                           compute_100 PTX that the driver compiles for newer GPUs.
  MHC_STUDY=0|1            1 defines the macro MHC_STUDY for the C++ and the nvcc compiles:
                           study-only code (planner overrides for crossover measurements) is
                           compiled into a study build only, never into a library a user
                           installs. Default 0.
  CC, CXX                  the compilers, as for any torch extension. The library must use the
                           shared libstdc++, as torch does; the build stops when it does not.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

import setuptools
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
NO_ISOLATION = ("Install with --no-build-isolation into the environment that has torch (and "
                "setuptools>=77, ninja): pip install --no-build-isolation <source: ., the sdist "
                "or a git URL>")

# Commands that only package the sources: `python -m build --sdist` runs them in an isolated
# environment without torch. PEP 517 frontends also run egg_info to ask for build requirements
# before a wheel; the wheel's metadata step (dist_info) and every build need torch.
_SOURCE_ONLY = {"sdist", "egg_info", "clean", "check"}
_BUILDS = {"build", "build_ext", "bdist", "bdist_wheel", "dist_info", "editable_wheel",
           "develop", "install"}


def needs_torch(argv: list[str]) -> bool:
    words = set(argv[1:])
    return bool(words & _BUILDS) or not (words & _SOURCE_ONLY)


def parse_switch(name: str, default: str, choices: tuple[str, ...]) -> str:
    """MHC_BUILD_CUDA / MHC_STUDY: auto, or the spellings of mhc_ops.envs' booleans."""
    v = os.environ.get(name, default).strip().lower()
    v = {"1": "1", "true": "1", "yes": "1", "on": "1",
         "0": "0", "false": "0", "no": "0", "off": "0"}.get(v, v)
    if v not in choices:
        raise SystemExit(f"mhc_ops setup: {name} must be one of {', '.join(choices)}; got "
                         f"{os.environ[name]!r}")
    return v


def isolated_build_env(path: str) -> bool:
    """Whether path lies in a frontend's temporary build environment: pip and build make theirs
    in the temporary directory (pip-build-env-*, build-env-*), uv in its cache (builds-v0)."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    in_tmp = path.startswith(os.path.realpath(tempfile.gettempdir()) + os.sep)
    return "builds-v0" in parts or in_tmp and any(
        p.startswith(("pip-build-env-", "build-env-")) for p in parts)


def import_torch():
    """The torch this build compiles against: the target environment's, never a temporary one.

    With torch out of the build requirements, an isolated build has no torch and stops here. A
    frontend told to add build dependencies (uv's extra-build-dependencies, an edited
    pyproject) could still put one into its temporary environment; its path tells.
    """
    try:
        import torch
    except ImportError:
        raise SystemExit(
            "mhc_ops setup: torch is not importable in this build environment. mhc_ops is "
            "compiled against the torch of the environment it is installed into and never "
            "installs one; pip's build isolation hides that torch. " + NO_ISOLATION) from None
    where = os.path.dirname(torch.__file__)
    if isolated_build_env(where):
        raise SystemExit(
            f"mhc_ops setup: torch {torch.__version__} was imported from a temporary isolated "
            f"build environment ({where}), not from the environment that will import mhc_ops. "
            + NO_ISOLATION)
    return torch


def want_cuda(torch, CUDA_HOME) -> bool:
    mode = parse_switch("MHC_BUILD_CUDA", "auto", ("auto", "1", "0"))
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if mode == "1" and not available:
        raise SystemExit(f"mhc_ops setup: MHC_BUILD_CUDA=1 but torch {torch.__version__} has CUDA "
                         f"{torch.version.cuda} and CUDA_HOME is {CUDA_HOME}")
    return available if mode == "auto" else mode == "1"


def arch_list(torch) -> str:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    archs = set()
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            archs.add("%d.%d" % torch.cuda.get_device_capability(i))
    # A build box without a GPU builds for the GPUs the kernels are written for: H100/H200 and
    # B200/GB200 natively, and anything newer through the compute_100 PTX.
    arch = ";".join(sorted(archs, key=lambda a: tuple(map(int, a.split("."))))) or "9.0;10.0+PTX"
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch  # read by torch's BuildExtension
    return arch


def git_sha() -> str:
    """The commit of a checkout being built; "unknown" for an sdist, even one unpacked inside
    some other repository."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return top[1] if len(top) == 2 and os.path.samefile(top[0], ROOT) else "unknown"


def check_shared_libstdcxx(lib: str) -> None:
    """Stops the build when lib does not load the shared libstdc++ that torch loads.

    A compiler driver whose library path finds libstdc++.a first links a second copy of the C++
    runtime into the library; beside torch's, every op that formatted an error crashed inside
    std::ostream. readelf belongs to the binutils of the linker; without it there is no check.
    """
    readelf = shutil.which("readelf")
    if readelf is None:
        return
    r = subprocess.run([readelf, "-d", lib], capture_output=True, text=True)
    if r.returncode != 0 or "(NEEDED)" not in r.stdout or "libstdc++.so" in r.stdout:
        return
    os.remove(lib)
    raise SystemExit(
        f"mhc_ops setup: the library was linked against a static libstdc++ by "
        f"{os.environ.get('CXX', 'c++')!r}; it would carry a second C++ runtime beside torch's "
        "and crash when an op formats an error. Build with a compiler that links libstdc++ "
        "shared, e.g. CC=/usr/bin/gcc CXX=/usr/bin/g++.")


def torch_requirement(version: str) -> str:
    """What a wheel built against torch `version` requires: that release exactly, as the C++
    ABI changes between releases, but without the local label (+cpu, +cu130), which differs
    between indexes that serve the same build. mhc_ops/_lib.py also checks CUDA at import."""
    return f"torch=={version.split('+', 1)[0]}"


def native_build() -> dict:
    """setup()'s arguments for the library: the extension, the torch pin and the build step."""
    torch = import_torch()
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = want_cuda(torch, CUDA_HOME)
    study = parse_switch("MHC_STUDY", "0", ("0", "1")) == "1"
    archs = arch_list(torch) if with_cuda else ""
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/core/*.cpp")
                     + glob.glob("csrc/cpu/*.cpp"))
    # Default symbol visibility, as torch's own extensions: with -fvisibility=hidden, a build
    # that carried its own libstdc++ crashed inside std::ostream whenever an op formatted an
    # error. -fopenmp: at::parallel_for splits work over threads only where ATen's parallel
    # header sees _OPENMP (torch's CPU backend is OpenMP); without it every CPU kernel ran on one
    # thread. The GOMP symbols resolve against the libgomp that torch itself loads. -g0 overrides
    # the -g of Python's CFLAGS: a release library carries no debug information.
    cxx_flags = ["-O3", "-g0", "-fopenmp"]
    # -prec-div=false: the gate math divides eight times per Sinkhorn round, and IEEE division's
    # slow-path branch keeps those divisions from overlapping; on the decode critical path that
    # cost ~9 us per call (H100). The fast division is within 2 ulp, far inside SPEC §3's gate
    # bound. -lineinfo is the line table of profilers' source views, not debug information.
    # -compress-all: fatbinary compresses every kernel image (by default it leaves most machine
    # code images as they are): an sm_90 build of the library is 9.5 MB instead of 23.1 MB.
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-prec-div=false",
                  "-Xfatbin", "-compress-all"]
    # define_macros reach both compilers: torch's BuildExtension passes them to nvcc too.
    macros = [("MHC_STUDY", None)] if study else []
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        macros.append(("MHC_WITH_CUDA", None))

    Extension = CUDAExtension if with_cuda else CppExtension
    ext = Extension(
        name="mhc_ops._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda
        else {"cxx": cxx_flags},
        libraries=["cublas", "cublasLt"] if with_cuda else [],
    )

    class BuildWithInfo(BuildExtension):
        """Builds _C, checks it, then writes mhc_ops/_build_info.py next to it (in place, or in
        build_lib for a wheel), so that the record always describes the library beside it."""

        def run(self):
            super().run()
            lib = self.get_ext_fullpath(ext.name)
            check_shared_libstdcxx(lib)
            with open(os.path.join(os.path.dirname(lib), "_build_info.py"), "w") as f:
                f.write(
                    "# Written by setup.py with the library beside it: what it was built "
                    "against.\n"
                    f"TORCH_VERSION = {torch.__version__!r}\n"
                    f"CUDA_VERSION = {(torch.version.cuda if with_cuda else None)!r}\n"
                    f"WITH_CUDA = {with_cuda!r}\n"
                    f"CUDA_ARCH_LIST = {archs!r}\n"
                    f"STUDY = {study!r}\n"
                    f"GIT_SHA = {git_sha()!r}\n"
                )

    return dict(ext_modules=[ext],
                install_requires=[torch_requirement(torch.__version__)],
                cmdclass={"build_ext": BuildWithInfo.with_options(use_ninja=True)})


def check_setuptools() -> None:
    # pyproject's SPDX licence expression needs setuptools 77; with --no-build-isolation pip
    # does not install build requirements, so say so before setuptools fails on it.
    if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (77, 0):
        raise SystemExit(f"mhc_ops setup: setuptools {setuptools.__version__} is too old; "
                         "pip install 'setuptools>=77'")


# Guarded so that tests/test_packaging.py can import this file and check its decisions without
# building; setuptools' PEP 517 backend and `python setup.py` both run it as __main__.
if __name__ == "__main__":
    check_setuptools()
    # The sources require some torch; which one, only a build can tell (metadata marks it
    # dynamic).
    setup(**(native_build() if needs_torch(sys.argv) else dict(install_requires=["torch"])))
