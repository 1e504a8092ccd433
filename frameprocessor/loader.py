"""Dynamic plugin loading: by short name, dotted module path, ``module:Class`` or ``.py`` file path.

Built-in and installed plugins are listed in the ``framechain.plugins``
entry-point group; a ``library`` of ``"hdf5_writer"`` resolves through it (the
class name may be given or omitted). ``framechain.plugins.hdf5_writer`` names a
built-in module directly. The pre-namespace form ``plugins.hdf5_writer`` still
loads the built-in (never a ``plugins`` package of the current directory) and
logs a deprecation warning.

Which plugins a processor may load is its *plugin path* (``--plugin-path``,
given when it starts): built-in plugins and installed ones (entry points) always,
``.py`` files and modules only from those directories. A library anywhere else
is refused before any of its code runs, so a client that reaches the control
port cannot make the processor execute a file of its choosing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from types import ModuleType

from framechain.ipc.errors import PluginError

from .plugin import FrameProcessorPlugin, path_within

__all__ = ["load_plugin_class"]

log = logging.getLogger(__name__)


#: odin-data C++ plugin classes and the built-in framechain plugin that does their job
_ODIN_PLUGINS = {"FileWriterPlugin": "hdf5_writer", "LiveViewPlugin": "live_view", "SumPlugin": "sum",
                 "DummyUDPProcessPlugin": "dummy", "GapFillPlugin": "", "OffsetAdjustmentPlugin": "calibration",
                 "ParameterAdjustmentPlugin": "", "BloscPlugin": "hdf5_writer"}


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


_BUILTIN_PACKAGE = "framechain.plugins"


def _builtin_modules() -> set[str]:
    """Module names of the built-in plugins (from the entry points this distribution declares)."""
    return {ep.value.partition(":")[0].rpartition(".")[2]
            for ep in entry_points().select(group="framechain.plugins")
            if ep.value.startswith(_BUILTIN_PACKAGE + ".")}


def _entry_point(library: str, name: str | None) -> type[FrameProcessorPlugin] | None:
    """The class a short name's entry point names, or None when there is no such entry point."""
    eps = {ep.name: ep for ep in entry_points().select(group="framechain.plugins")}
    ep = eps.get(library)
    if ep is None:
        return None
    if name and ep.value.rpartition(":")[2] != name:  # the short name picks a module; name picks its class
        return _class_in(_import_module(ep.value.partition(":")[0]), library, name)
    try:
        cls = ep.load()
    except Exception as err:
        raise PluginError(f"plugin {library!r} failed to load: {err}") from err
    return _check(cls, library)


def _entry_point_modules() -> set[str]:
    return {ep.value.partition(":")[0] for ep in entry_points().select(group="framechain.plugins")}


def _not_allowed(what: str, plugin_path: Sequence[str]) -> PluginError:
    where = ", ".join(plugin_path) if plugin_path else "none given"
    return PluginError(f"{what} is not on this processor's plugin path ({where}): it loads built-in plugins, "
                       "installed ones (entry points 'framechain.plugins') and .py files or modules in the "
                       "directories given with --plugin-path when it starts; start it with --plugin-path <dir>")


def _on_path(module: str, plugin_path: Sequence[str]) -> str | None:
    """The file of dotted ``module`` in a plugin-path directory (``a.b`` -> ``<dir>/a/b.py``), found without
    importing anything."""
    rel = module.replace(".", os.sep)
    for d in plugin_path:
        for candidate in (os.path.join(d, rel + ".py"), os.path.join(d, rel, "__init__.py")):
            if os.path.isfile(candidate) and path_within(candidate, [d]):
                return candidate
    return None


def load_plugin_class(library: str, name: str | None = None,
                      plugin_path: Sequence[str] | None = None) -> type[FrameProcessorPlugin]:
    """Resolve a plugin class.

    Parameters
    ----------
    library : str
        ``framechain.plugins.hdf5_writer``, ``framechain.plugins.sum:SumPlugin``, ``/path/to/my_plugin.py`` or an
        entry-point name such as ``dummy``.
    name : str, optional
        The class name; may be omitted when ``library`` carries ``:Class`` or is an entry point.
    plugin_path : sequence of str, optional
        Directories ``.py`` files and other modules may come from (the daemon's ``--plugin-path``);
        None (a test, a script) loads from anywhere.

    Raises
    ------
    PluginError
        Naming the module or class, chained to the original error.
    """
    if not isinstance(library, str) or not library:
        raise PluginError("plugin load needs 'library': a module path, a .py file or a plugin name")
    if library.endswith(".so") or ".so." in os.path.basename(library):
        odin = _ODIN_PLUGINS.get(name or "")
        hint = f" framechain's own {odin!r} plugin does this job ({{'library': {odin!r}}})." if odin else ""
        raise PluginError(f"{library!r} is a compiled (odin-data C++) plugin library; framechain loads Python "
                          f"plugins: a built-in name, a module path or a .py file.{hint} A plugin of your own is a "
                          "FrameProcessorPlugin subclass in about 20 lines (docs/writing-plugins.md)")
    if ":" in library and not library.endswith(".py"):
        library, _, cls_name = library.rpartition(":")
        name = name or cls_name
    if library.endswith(".py") or os.sep in library:
        if plugin_path is not None and not path_within(library, plugin_path):
            raise _not_allowed(f"plugin file {library!r}", plugin_path)
        module = _import_file(library)
    elif "." not in library:
        cls = _entry_point(library, name)
        if cls is not None:
            return cls
        if name is None:
            eps = sorted(ep.name for ep in entry_points().select(group="framechain.plugins"))
            raise PluginError(f"no plugin named {library!r}; installed plugins: {eps}")
        module = _module(library, plugin_path)
    else:
        head, _, tail = library.partition(".")
        if head == "plugins" and tail in _builtin_modules():
            log.warning("plugin library %r is deprecated: use %r or %r", library, tail, f"{_BUILTIN_PACKAGE}.{tail}")
            library = f"{_BUILTIN_PACKAGE}.{tail}"
        module = _module(library, plugin_path)
    if not name:
        raise PluginError(f"plugin load of {library!r} needs 'name': the plugin class")
    return _class_in(module, library, name)


def _module(library: str, plugin_path: Sequence[str] | None) -> ModuleType:
    """Import a module plugin: a built-in or installed one anywhere, another only from the plugin path."""
    if plugin_path is None or library.startswith(_BUILTIN_PACKAGE + ".") or library in _entry_point_modules():
        return _import_module(library)
    path = _on_path(library, plugin_path)
    if path is None:
        raise _not_allowed(f"plugin module {library!r}", plugin_path)
    return _import_file(path)


def _class_in(module: ModuleType, library: str, name: str) -> type[FrameProcessorPlugin]:
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
