"""framechain installs as one package, framechain.*: a folder with its own client/, plugins/, ipc/ ...
packages (the current directory is on sys.path for ``python -m``) never shadows framechain's code."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from harness import Daemon

from framechain.ipc import free_tcp_endpoint

ROOT = Path(__file__).resolve().parent.parent
DECOYS = ("client", "plugins", "ipc", "frameprocessor", "framereceiver", "benchmarks")
PROBE = ("import framechain, framechain.plugins.sum as s, framechain.client.cli as c; "
         "from framechain.frameprocessor.loader import load_plugin_class as load; "
         "print(framechain.__file__, s.__file__, c.__file__, "
         "sys.modules[load('hdf5_writer').__module__].__file__, "
         "sys.modules[load('plugins.sum', 'SumPlugin').__module__].__file__)")


@pytest.fixture
def decoy_dir(tmp_path: Path) -> Path:
    """A working directory whose generic packages record that they were imported (and work otherwise)."""
    cwd = tmp_path / "work"
    for name in DECOYS:
        pkg = cwd / name
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(f"open({str(tmp_path / 'DECOY')!r}, 'a').write({name!r} + '\\n')\n")
        for mod in ("cli", "sum", "hdf5_writer", "dummy", "message"):
            (pkg / f"{mod}.py").write_text("")
    return cwd


def _imported_decoys(decoy_dir: Path) -> str:
    marker = decoy_dir.parent / "DECOY"
    return marker.read_text() if marker.exists() else ""


def _probe(cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run([sys.executable, "-c", "import sys; " + PROBE], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_modules_and_plugins_come_from_framechain_not_the_working_directory(decoy_dir):
    files = _probe(decoy_dir)
    assert all(not f.startswith(str(decoy_dir)) for f in files), files
    assert _imported_decoys(decoy_dir) == ""
    out = subprocess.run([sys.executable, "-m", "framechain.client.cli", "--version"], cwd=decoy_dir,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("framechain ")
    assert _imported_decoys(decoy_dir) == ""


def test_a_processor_started_in_a_decoy_folder_loads_the_built_ins(decoy_dir, tmp_path):
    log = tmp_path / "fp.log"
    d = Daemon("processor", [], free_tcp_endpoint(), log, cwd=decoy_dir)
    try:
        d.ok("configure", {"plugin": {"load": [{"index": "h", "library": "hdf5_writer"},
                                               {"index": "s", "name": "SumPlugin", "library": "plugins.sum"},
                                               {"index": "d", "name": "DummyPlugin",
                                                "library": "framechain.plugins.dummy"}]}})
        loads = {x["index"]: x["name"] for x in d.ok("request_configuration")["plugin"]["load"]}
        assert loads == {"h": "FileWriterPlugin", "s": "SumPlugin", "d": "DummyPlugin"}
    finally:
        d.stop()
    assert _imported_decoys(decoy_dir) == ""
    text = log.read_text()
    assert "'plugins.sum' is deprecated" in text and "framechain.frameprocessor.loader" in text


def test_the_wheel_holds_only_framechain_and_works_from_a_decoy_folder(decoy_dir, tmp_path):
    wheels, src = tmp_path / "wheels", tmp_path / "src"  # a copy: setuptools builds in the source tree
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", "output"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("framechain-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert {n.split("/", 1)[0] for n in names} == {"framechain", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "framechain/client/static/index.html" in names and "framechain/plugins/_hdf5/engine.py" in names
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "framechain"]
    env = {**os.environ, "PYTHONPATH": str(site)}
    files = _probe(decoy_dir, env)
    assert all(f.startswith(str(site / "framechain")) for f in files), files
    assert _imported_decoys(decoy_dir) == ""
