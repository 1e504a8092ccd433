"""odin-data's Python tools (adapters, meta_writer) in a venv of their own, built from git, never vendored.

``odin_venv(ref, control_ref)`` archives ``python/`` of odin-data at ``ref`` from the repository
ODIN_DATA_SRC names, and odin-control at ``control_ref`` from ODIN_CONTROL_SRC, installs both into
``.interop/venv-<ref>`` (kept between runs) and returns the venv. odin-control 1.x installs the
package ``odin``; framechain's own REST adapter runs in odin-control 2.x, so the two never share a venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

__all__ = ["odin_venv", "REFS"]

ROOT = Path(__file__).resolve().parent.parent / ".interop"
#: odin-data refs and the odin-control each was released against (1.12.0: a 1.x release; main pins 1cf475b)
REFS = {"1.12.0": "1.6.2", "main": "1cf475b60abf66666d31c7e74b9d19540c2ea6c3"}
_DEPS = ["posix_ipc", "numpy", "pyzmq", "deepdiff", "h5py", "pygelf"]  # odin-data's, less pysnmp (unused here)
#: what framechain's own adapter needs beside them (framechain is installed without its odin-control 2.x)
_FRAMECHAIN_DEPS = ["cbor2", "hdf5plugin", "prometheus-client"]


def _archive(repo: str, ref: str, subdir: str | None, dest: Path) -> Path:
    """``git archive`` of ``repo`` (a checkout or a bare git directory) at ``ref`` into ``dest``."""
    ref = "HEAD" if ref == "main" else ref
    args = ["git", "-C", repo, "archive", "--format=tar", ref] + ([subdir] if subdir else [])
    with tempfile.TemporaryFile() as tar:
        subprocess.run(args, stdout=tar, check=True)
        tar.seek(0)
        with tarfile.open(fileobj=tar) as t:
            t.extractall(dest, filter="data")
    return dest / subdir if subdir else dest


def _repo(var: str) -> str:
    value = os.environ.get(var)
    if not value or not Path(value).exists():
        raise RuntimeError(f"{var} must name a git repository of {var[:-4].lower().replace('_', '-')} "
                           "(a clone, or the git directory of a fetched snapshot); see docs/odin-migration.md")
    return value


def odin_venv(ref: str) -> Path:
    """A venv with odin-data ``ref`` ("1.12.0" or "main") and its odin-control; built once, then reused."""
    venv = ROOT / f"venv-odin-data-{ref}"
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    if not marker.exists():
        venv = _build(venv, python, ref)
        # framechain itself, without its odin-control 2.x: its REST adapter loads in this 1.x server too
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT.parent)],
                       check=True)
        marker.write_text("")
    if marker.read_text() != repr(_FRAMECHAIN_DEPS):  # a venv from before framechain needed one more
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *_FRAMECHAIN_DEPS], check=True)
        marker.write_text(repr(_FRAMECHAIN_DEPS))
    return venv


def _build(venv: Path, python: Path, ref: str) -> Path:
    data_repo, control_repo = _repo("ODIN_DATA_SRC"), _repo("ODIN_CONTROL_SRC")
    shutil.rmtree(venv, ignore_errors=True)
    ROOT.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        control = _archive(control_repo, REFS[ref], None, Path(tmp) / "control")
        data = _archive(data_repo, ref, "python", Path(tmp) / "data")
        # a git archive has no tags for setuptools_scm to read: name the versions
        env = {**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION": "1.6.2" if ref == "1.12.0" else "1.6.1"}
        subprocess.run(pip + [str(control)], check=True, env=env)
        env["SETUPTOOLS_SCM_PRETEND_VERSION"] = "1.12.0" if ref == "1.12.0" else "1.12.1.dev0"
        subprocess.run(pip + ["--no-deps", str(data)], check=True, env=env)
        subprocess.run(pip + _DEPS, check=True)
    return venv
