"""The plugin registry: built-ins and third-party packages (entry points) plus local modules.

Every plugin, built-in or not, is a module registered with one pluggy PluginManager:
- packages declare modules under the ``flowpipe`` entry-point group (flowpipe's own built-ins
  included: see ``pyproject.toml``);
- a pipeline file may name local plugins (``plugins: [path/to/module.py, some.module]``).

The registry asks each plugin's ``flowpipe_add_*`` hooks separately, so it knows which package
provides every stage and can name both packages when two claim the same name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .suggest import did_you_mean

__all__ = ["ENTRY_POINT_GROUP", "PluginInfo", "Registry"]

ENTRY_POINT_GROUP = "flowpipe"
KINDS = ("input", "decoder", "analyzer", "processor", "output", "command")


@dataclass(frozen=True)
class Provider:
    """Where a plugin module came from."""

    plugin: str
    """The plugin's registered name (entry-point name, or the local path/module)."""
    package: str
    """The distribution providing it, or ``(local)`` for a module named in a pipeline file."""
    version: str

    def describe(self) -> str:
        if self.package == "(local)":
            return f"local plugin {self.plugin!r}"
        return f"package {self.package} {self.version} (plugin {self.plugin!r})"


@dataclass(frozen=True)
class PluginInfo:
    """One contributed class: its kind, name, and who provides it."""

    kind: str
    name: str
    cls: type
    provider: Provider


class Registry:
    """All plugins known to this process, and the classes they contribute by kind and name."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.manager.add_hookspecs(hookspecs)
        self._providers: dict[str, Provider] = {}
        self._contributions: dict[str, dict[str, PluginInfo]] | None = None

    @classmethod
    def default(cls) -> Registry:
        """A registry with every installed plugin package loaded."""
        registry = cls()
        registry.load_entry_points()
        return registry

    @property
    def hook(self) -> Any:
        return self.manager.hook

    # -- loading -------------------------------------------------------------------------------

    def register(self, module: object, name: str, provider: Provider) -> None:
        """Register a plugin module under ``name``; ``provider`` says where it came from."""
        if self.manager.is_registered(module) or self.manager.get_plugin(name) is not None:
            return
        try:
            self.manager.register(module, name=name)
        except (ValueError, pluggy.PluginValidationError) as error:
            raise PluginError(f"cannot register {provider.describe()}: {error}") from None
        unknown = _unknown_hooks(self.manager, module)
        if unknown:  # pluggy ignores them: a misspelt hook would silently contribute nothing
            self.manager.unregister(module)
            raise PluginError(f"cannot register {provider.describe()}: {'; '.join(unknown)}")
        self._providers[name] = provider
        self._contributions = None

    def load_entry_points(self) -> None:
        """Load every module declared under the ``flowpipe`` entry-point group.

        Plugins load in the order of package name, then entry-point name (not the order of
        directory listings), so the same installation always gives the same messages.
        """
        seen: set[tuple[str, str]] = set()
        for entry_point in sorted(
            importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=_entry_point_order
        ):
            dist = entry_point.dist
            package = dist.metadata["Name"] if dist is not None else "(unknown)"
            version = dist.version if dist is not None else ""
            key = (package, entry_point.name)
            if key in seen:
                continue
            seen.add(key)
            provider = Provider(entry_point.name, package, version)
            try:
                module = entry_point.load()
            except Exception as error:  # a broken third-party plugin: say which one
                raise PluginError(
                    f"cannot load {provider.describe()} ({entry_point.value}): "
                    f"{type(error).__name__}: {error}"
                ) from error
            self.register(module, f"{package}:{entry_point.name}", provider)

    def load_local(self, specs: Iterable[str], base_dir: Path) -> None:
        """Load plugins named in a pipeline file: ``path/to/module.py`` or ``dotted.module``."""
        for spec in specs:
            module = _import_local(spec, base_dir)
            self.register(module, f"local:{spec}", Provider(spec, "(local)", ""))

    # -- queries -------------------------------------------------------------------------------

    def _collect(self) -> dict[str, dict[str, PluginInfo]]:
        if self._contributions is not None:
            return self._contributions
        contributions: dict[str, dict[str, PluginInfo]] = {kind: {} for kind in KINDS}
        for kind, hook_name in hookspecs.KIND_HOOKS.items():
            caller = getattr(self.manager.hook, hook_name)
            for impl in caller.get_hookimpls():  # registration order
                provider = self._providers.get(impl.plugin_name, Provider(impl.plugin_name, "?", ""))
                try:
                    contributed = impl.function() or {}
                except Exception as error:
                    raise PluginError(
                        f"{provider.describe()} failed in {hook_name}: {type(error).__name__}: {error}"
                    ) from error
                if not isinstance(contributed, dict) or not all(
                    isinstance(name, str) and isinstance(cls, type) for name, cls in contributed.items()
                ):
                    raise PluginError(
                        f"{provider.describe()}: {hook_name} must return a dict of names to classes, "
                        f"got {contributed!r}"
                    )
                for name, cls in contributed.items():
                    known = contributions[kind].get(name)
                    if known is not None and known.cls is not cls:
                        raise PluginError(
                            f"{kind} {name!r} is claimed by two plugins: "
                            f"{known.provider.describe()} and {provider.describe()}; "
                            f"uninstall one of them"
                        )
                    contributions[kind][name] = PluginInfo(kind, name, cls, provider)
        self._contributions = contributions
        return contributions

    def names(self, kind: str) -> list[str]:
        """Every name contributed for ``kind``, sorted."""
        return sorted(self._collect()[kind])

    def get(self, kind: str, name: str) -> PluginInfo | None:
        return self._collect()[kind].get(name)

    def all(self) -> list[PluginInfo]:
        """Every contribution, ordered by kind then name."""
        contributions = self._collect()
        return [contributions[kind][name] for kind in KINDS for name in sorted(contributions[kind])]

    def find(self, name: str) -> list[PluginInfo]:
        """Every contribution called ``name``, whatever its kind."""
        return [info for info in self.all() if info.name == name]


def _entry_point_order(entry_point: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = entry_point.dist
    return ((dist.metadata["Name"] or "").lower() if dist is not None else "", entry_point.name)


def _unknown_hooks(manager: pluggy.PluginManager, module: object) -> list[str]:
    """A problem per hook implementation of ``module`` that no flowpipe hookspec declares."""
    hooks = [name for name in vars(hookspecs) if name.startswith("flowpipe_")]
    return [
        f"unknown hook {caller.name!r}{did_you_mean(caller.name, hooks)}"
        for caller in manager.get_hookcallers(module) or ()
        if not caller.has_spec()
        and any(impl.plugin is module and not impl.optionalhook for impl in caller.get_hookimpls())
    ]


def _import_local(spec: str, base_dir: Path) -> ModuleType:
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise PluginError(f"local plugin {spec!r}: no such file {path}")
        module_name = f"flowpipe_local_{path.stem}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"local plugin {spec!r}: cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise PluginError(f"local plugin {spec!r}: {type(error).__name__}: {error}") from error
        return module
    added = str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        return importlib.import_module(spec)
    except Exception as error:
        raise PluginError(f"local plugin {spec!r}: {type(error).__name__}: {error}") from error
    finally:
        if added:
            sys.path.remove(str(base_dir))
