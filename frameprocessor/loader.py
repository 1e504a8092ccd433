"""Dynamic plugin loading: by dotted module path, ``module:Class``, ``.py`` file path or entry point.

Built-in and installed plugins are listed in the ``framechain.plugins``
entry-point group; a ``library`` of ``"dummy"`` resolves through it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import sys
from importlib.metadata import entry_points
from types import ModuleType

from ipc.errors import PluginError

from .plugin import FrameProcessorPlugin

__all__ = ["load_plugin_class"]

log = logging.getLogger("frameprocessor.loader")


def _import_file(path: str) -> ModuleType:
    if not os.path.isfile(path):
        raise PluginError(f"plugin file {path!r} does not exist")
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10]
    modname = f"framechain_plugin_{os.path.splitext(os.path.basename(path))[0]}_{digest}"
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {path!r}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # any error in user code, sys.exit included: report it, stay up
        sys.modules.pop(modname, None)
        log.exception("plugin file %s raised on import", path)
        raise PluginError(f"plugin file {path!r} raised {type(err).__name__} on import: {err}") from err
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):
            raise PluginError(f"no plugin module {name!r} (not importable: {err})") from err
        raise PluginError(f"plugin module {name!r} needs a missing module: {err}") from err
    except (Exception, SystemExit) as err:
        log.exception("plugin module %s raised on import", name)
        raise PluginError(f"plugin module {name!r} raised {type(err).__name__} on import: {err}") from err


def load_plugin_class(library: str, name: str | None = None) -> type[FrameProcessorPlugin]:
    """Resolve a plugin class.

    Parameters
    ----------
    library : str
        ``plugins.hdf5_writer``, ``plugins.sum:SumPlugin``, ``/path/to/my_plugin.py`` or an
        entry-point name such as ``dummy``.
    name : str, optional
        The class name; may be omitted when ``library`` carries ``:Class`` or is an entry point.

    Raises
    ------
    PluginError
        Naming the module or class, chained to the original error.
    """
    if not isinstance(library, str) or not library:
        raise PluginError("plugin load needs 'library': a module path, a .py file or a plugin name")
    if ":" in library and not library.endswith(".py"):
        library, _, cls_name = library.rpartition(":")
        name = name or cls_name
    if library.endswith(".py") or os.sep in library:
        module = _import_file(library)
    elif "." not in library and name is None:
        eps = {ep.name: ep for ep in entry_points().select(group="framechain.plugins")}
        if library not in eps:
            raise PluginError(f"no plugin named {library!r}; installed plugins: {sorted(eps)}")
        try:
            cls = eps[library].load()
        except Exception as err:
            raise PluginError(f"plugin {library!r} failed to load: {err}") from err
        return _check(cls, library)
    else:
        module = _import_module(library)
    if not name:
        raise PluginError(f"plugin load of {library!r} needs 'name': the plugin class")
    cls = getattr(module, name, None)
    if cls is None:
        found = [n for n, v in vars(module).items()
                 if isinstance(v, type) and issubclass(v, FrameProcessorPlugin) and v is not FrameProcessorPlugin]
        raise PluginError(f"module {library!r} has no class {name!r}; plugin classes there: {found}")
    return _check(cls, f"{library}.{name}")


def _check(cls: object, where: str) -> type[FrameProcessorPlugin]:
    if not (isinstance(cls, type) and issubclass(cls, FrameProcessorPlugin)):
        raise PluginError(f"{where} is not a FrameProcessorPlugin subclass")
    return cls
