"""Packaging (SPEC §9): the torch guard at import, the build record, and setup.py's decisions,
checked without building anything (CI builds and installs the sdist and the wheel)."""

import importlib.util
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch

import mhc_ops
from mhc_ops import _lib, envs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_py():
    """setup.py as a module: its __main__ guard keeps it from calling setup()."""
    path = ROOT / "setup.py"
    if not path.exists():
        pytest.skip("no setup.py beside the tests")
    spec = importlib.util.spec_from_file_location("mhc_setup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the guard: which torch may load a library built against which ----

@pytest.mark.parametrize("built,built_cuda,with_cuda,now,now_cuda", [
    ("2.13.0+cpu", None, False, "2.13.0+cpu", None),
    ("2.13.0+cpu", None, False, "2.13.0", None),            # the same release from PyPI
    ("2.13.0+cpu", None, False, "2.13.0+cu130", "13.0"),   # CPU kernels only, same ABI
    ("2.14.1+cu130", "13.0", True, "2.14.1", "13.0"),
    ("2.14.1+cu130", "13.0", True, "2.14.1+cu130", "13.2"),  # CUDA minor versions are compatible
])
def test_same_release_loads(built, built_cuda, with_cuda, now, now_cuda):
    assert _lib.torch_mismatch(built, built_cuda, with_cuda, now, now_cuda) is None


@pytest.mark.parametrize("built,built_cuda,with_cuda,now,now_cuda,says", [
    # the case: a CPU build for 2.13 ran under 2.14.1 without a word
    ("2.13.0+cpu", None, False, "2.14.1+cu130", "13.0", ["2.13.0+cpu", "2.14.1+cu130"]),
    ("2.14.1+cu130", "13.0", True, "2.14.0+cu130", "13.0", ["2.14.1+cu130", "2.14.0+cu130"]),
    # nightlies of different dates have different ABIs
    ("2.15.0.dev20261101+cpu", None, False, "2.15.0.dev20261102+cpu", None,
     ["dev20261101", "dev20261102"]),
    ("2.14.1+cu130", "13.0", True, "2.14.1+cpu", None, ["CUDA 13.0 kernels", "has no CUDA"]),
    ("2.14.1+cu130", "13.0", True, "2.14.1+cu128", "12.8", ["CUDA 13.0", "CUDA 12.8"]),
])
def test_another_torch_is_refused(built, built_cuda, with_cuda, now, now_cuda, says):
    why = _lib.torch_mismatch(built, built_cuda, with_cuda, now, now_cuda)
    assert why is not None and all(s in why for s in says), why


def fake_build_info(**overrides):
    info = types.SimpleNamespace(TORCH_VERSION=torch.__version__,
                                 CUDA_VERSION=torch.version.cuda, WITH_CUDA=False,
                                 CUDA_ARCH_LIST="", STUDY=False, GIT_SHA="0" * 40)
    for k, v in overrides.items():
        setattr(info, k, v)
    return info


def test_import_under_another_torch_raises_with_the_rebuild_command(monkeypatch):
    # Two torches cannot be installed side by side, so the build record says another one.
    other = "2.11.0+cu130" if not torch.__version__.startswith("2.11.0") else "2.12.0+cu130"
    monkeypatch.setattr(mhc_ops, "_build_info", fake_build_info(TORCH_VERSION=other),
                        raising=False)
    with pytest.raises(ImportError) as e:
        _lib._load()
    msg = str(e.value)
    assert other in msg and torch.__version__ in msg
    assert "pip install --no-build-isolation --force-reinstall --no-deps" in msg
    assert " -e" not in msg  # an editable install is no rebuild for a serving environment


def test_import_without_a_build_record_raises(monkeypatch):
    monkeypatch.delattr(mhc_ops, "_build_info", raising=False)
    monkeypatch.setitem(sys.modules, "mhc_ops._build_info", None)  # makes the import fail
    with pytest.raises(ImportError, match="_build_info.py is missing.*--no-build-isolation"):
        _lib._load()


def test_the_matching_record_loads(monkeypatch):
    monkeypatch.setattr(mhc_ops, "_build_info", fake_build_info(), raising=False)
    assert _lib._load() is _lib._C


# ---- the build record written by setup.py ----

def test_build_record_describes_this_library():
    from mhc_ops import _build_info as info

    assert info.TORCH_VERSION == torch.__version__
    assert info.WITH_CUDA is bool(_lib._C.with_cuda)
    assert (info.CUDA_VERSION is None) is (not info.WITH_CUDA)
    assert (info.CUDA_ARCH_LIST == "") is (not info.WITH_CUDA)
    assert isinstance(info.STUDY, bool) and isinstance(info.GIT_SHA, str)


# ---- setup.py ----

@pytest.mark.parametrize("version,requirement", [
    ("2.13.0+cpu", "torch==2.13.0"),
    ("2.14.1+cu130", "torch==2.14.1"),
    ("2.14.1", "torch==2.14.1"),
    ("2.15.0.dev20261101+cu130", "torch==2.15.0.dev20261101"),
])
def test_wheel_requires_the_torch_it_was_built_against(setup_py, version, requirement):
    assert setup_py.torch_requirement(version) == requirement


@pytest.mark.parametrize("argv,needs", [
    (["setup.py", "sdist", "--formats", "gztar"], False),   # python -m build --sdist
    (["setup.py", "egg_info"], False),                      # PEP 517 get_requires_for_build_*
    (["setup.py", "dist_info", "--output-dir", "x"], True),  # a wheel's metadata: the pin
    (["setup.py", "bdist_wheel", "--dist-dir", "x"], True),
    (["setup.py", "build_ext", "--inplace"], True),
    (["setup.py", "editable_wheel"], True),
    (["setup.py", "egg_info", "build_ext"], True),
])
def test_only_packaging_the_sources_goes_without_torch(setup_py, argv, needs):
    assert setup_py.needs_torch(argv) is needs


def fake_torch(*capabilities):
    cuda = types.SimpleNamespace(is_available=lambda: bool(capabilities),
                                 device_count=lambda: len(capabilities),
                                 get_device_capability=lambda i: capabilities[i])
    return types.SimpleNamespace(cuda=cuda)


def test_default_architectures_without_a_gpu_are_hopper_and_blackwell(setup_py, monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert setup_py.arch_list(fake_torch()) == "9.0;10.0+PTX"
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0;10.0+PTX"  # what BuildExtension reads


def test_architectures_of_the_visible_gpus_or_the_users(setup_py, monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert setup_py.arch_list(fake_torch((10, 0), (9, 0), (10, 0))) == "9.0;10.0"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "12.0")
    assert setup_py.arch_list(fake_torch((9, 0))) == "12.0"


def extension(setup_py, monkeypatch, **env):
    for name in ("MHC_STUDY", "MHC_BUILD_CUDA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MHC_BUILD_CUDA", "0")  # the same on a CUDA machine; no compile here
    return setup_py.native_build()["ext_modules"][0]


def test_release_build_has_no_debug_information(setup_py, monkeypatch):
    ext = extension(setup_py, monkeypatch)
    cxx = ext.extra_compile_args["cxx"]
    assert "-O3" in cxx and "-g0" in cxx and "-g" not in cxx
    assert ("MHC_STUDY", None) not in ext.define_macros


@pytest.mark.parametrize("value", ["1", "true", "on"])
def test_study_build_defines_the_macro(setup_py, monkeypatch, value):
    ext = extension(setup_py, monkeypatch, MHC_STUDY=value)
    assert ("MHC_STUDY", None) in ext.define_macros  # BuildExtension passes these to nvcc too


def test_bad_study_value_stops_the_build(setup_py, monkeypatch):
    with pytest.raises(SystemExit, match="MHC_STUDY must be one of 0, 1; got 'maybe'"):
        extension(setup_py, monkeypatch, MHC_STUDY="maybe")


def run_setup_with_torch(tmp_path, torch_dir_name, init):
    """setup.py dist_info (a wheel's metadata step) with `import torch` answered by a stand-in
    in tmp_path/torch_dir_name; it must stop before writing anything."""
    shadow = tmp_path / torch_dir_name / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(init)
    env = dict(os.environ, PYTHONPATH=str(shadow.parent))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "setup.py"), "dist_info", "--output-dir",
                        str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and not out.exists()
    return r.stderr


@pytest.mark.parametrize("parts,isolated", [
    (("{tmp}", "pip-build-env-abc", "overlay", "lib", "site-packages", "torch"), True),
    (("{tmp}", "build-env-abc", "lib", "site-packages", "torch"), True),  # python -m build
    (("", "root", ".cache", "uv", "builds-v0", ".tmpAbc", "lib", "torch"), True),
    (("", "opt", "envs", "build-env-py311", "lib", "site-packages", "torch"), False),
    (("", "usr", "lib", "python3", "dist-packages", "torch"), False),
])
def test_isolated_build_environments_are_told_apart(setup_py, parts, isolated):
    path = os.sep.join(parts).replace("{tmp}", os.path.realpath(tempfile.gettempdir()))
    assert setup_py.isolated_build_env(path) is isolated


def test_build_without_torch_stops_at_once_saying_no_build_isolation(setup_py, tmp_path):
    err = run_setup_with_torch(tmp_path, "site", "raise ImportError('no torch here')\n")
    assert "torch is not importable" in err and "pip install --no-build-isolation <source" in err


def test_build_with_the_torch_of_an_isolated_build_env_stops(setup_py, tmp_path):
    err = run_setup_with_torch(tmp_path, "pip-build-env-x/overlay", "__version__ = '2.14.1'\n")
    assert "torch 2.14.1 was imported from a temporary isolated build environment" in err
    assert "--no-build-isolation" in err


# ---- the flag registry knows the build-time variables ----

@pytest.mark.parametrize("name", ["MHC_BUILD_CUDA", "MHC_STUDY"])
def test_build_variables_are_no_typos(monkeypatch, name):
    monkeypatch.setattr(envs, "_reported_unknown", set())
    for var in [v for v in os.environ if v.startswith("MHC_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv(name, "1")
    assert envs.check_unknown() == []
    assert "build time only" in envs._BUILD_VARIABLES[name]
