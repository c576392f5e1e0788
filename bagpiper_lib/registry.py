"""Explicit component registries: name -> factory, presets, dotted paths and entry-point plugins.

A registry never fills itself by importing every module. Built-in entries are registered in the
package ``__init__`` of their component family, either with the decorator::

    @codecs.register("my_codec", presets={"tiny": {"hidden": 8}})
    class MyCodec(AudioCodec): ...

or lazily by import path, so that ``import bagpiper_lib`` stays cheap::

    codecs.register("xcodec", "bagpiper_lib.codecs.xcodec:XCodec", presets={"tiny": {...}})

``build(spec)`` accepts

* a registered name: ``"xcodec"``
* a dict: ``{"name": "xcodec", "preset": "tiny", "bandwidth": 2.0}``; keys other than ``name``
  and ``preset`` are keyword arguments of the factory and override the preset's values
* a dotted path to a class or function: ``"my_pkg.codecs.MyCodec"`` or ``"my_pkg.codecs:MyCodec"``
* the name of an entry point in the registry's group (``bagpiper_lib.codecs`` etc.), which third
  party packages declare in their own ``pyproject.toml``::

      [project.entry-points."bagpiper_lib.codecs"]
      my_codec = "my_pkg.codecs:MyCodec"

Specs are plain data, so a whole model configuration is YAML and an ablation is a one-line override.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Registry", "RegistryError", "import_object", "normalize_spec"]


class RegistryError(KeyError):
    """An unknown name, bad spec or broken plugin. Subclasses ``KeyError`` for ``except`` chains."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def import_object(path: str) -> Any:
    """Import ``"pkg.module:attr"`` or ``"pkg.module.attr"`` and return the attribute."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise RegistryError(
            f"{path!r} is not an import path; expected 'package.module:Name' or 'package.module.Name'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RegistryError(f"cannot import module {module_name!r} for {path!r}: {err}") from err
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise RegistryError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})") from err
    return obj


def normalize_spec(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """Return ``spec`` as a new dict with a ``"name"`` key (deep-copied, never aliased)."""
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise RegistryError(
                f"component spec {dict(spec)!r} has no 'name' key; expected {{'name': ..., **kwargs}}"
            )
        return copy.deepcopy(dict(spec))
    raise RegistryError(
        f"component spec must be a name or a dict with 'name', got {type(spec).__name__}: {spec!r}"
    )


@dataclass
class _Entry:
    name: str
    target: Callable[..., Any] | str
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    doc: str = ""

    def resolve(self) -> Callable[..., Any]:
        if isinstance(self.target, str):
            self.target = import_object(self.target)
        return self.target


class Registry:
    """Maps component names to factories (classes or functions returning a component).

    Args:
        kind: what the registry holds, used in messages ("codec", "encoder", ...).
        group: the ``importlib.metadata`` entry-point group scanned for third-party entries.
    """

    def __init__(self, kind: str, group: str | None = None):
        self.kind = kind
        self.group = group
        self._entries: dict[str, _Entry] = {}
        self._plugins_loaded = False

    # ------------------------------------------------------------------ registration
    def register(
        self,
        name: str,
        target: Callable[..., Any] | str | None = None,
        *,
        presets: Mapping[str, Mapping[str, Any]] | None = None,
        doc: str = "",
        overwrite: bool = False,
    ):
        """Register ``target`` under ``name``; without ``target`` this is a decorator.

        ``presets`` maps a preset name to keyword arguments of the factory, e.g.
        ``{"tiny": {"config": {...}}}``. Registering a taken name raises unless ``overwrite``.
        """
        if not isinstance(name, str) or not name or "." in name or ":" in name:
            raise RegistryError(
                f"{self.kind} name must be a non-empty string without '.' or ':', got {name!r}"
            )

        def add(obj: Callable[..., Any] | str):
            if name in self._entries and not overwrite:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it"
                )
            self._entries[name] = _Entry(
                name,
                obj,
                {k: copy.deepcopy(dict(v)) for k, v in (presets or {}).items()},
                doc or _first_line(obj),
            )
            return obj

        return add if target is None else add(target)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    # ------------------------------------------------------------------ discovery
    def _load_plugins(self) -> None:
        if self._plugins_loaded or self.group is None:
            return
        self._plugins_loaded = True
        for ep in importlib.metadata.entry_points(group=self.group):
            if ep.name not in self._entries:  # built-ins win; a plugin cannot shadow them silently
                self._entries[ep.name] = _Entry(ep.name, ep.value, {}, f"plugin from {ep.value}")

    def refresh_plugins(self) -> None:
        """Rescan the entry-point group (after installing a plugin in a running process)."""
        self._plugins_loaded = False
        self._load_plugins()

    def available(self) -> list[str]:
        """Sorted names of every registered and plugin-provided entry."""
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries

    def presets(self, name: str) -> list[str]:
        """Names of the presets of entry ``name``."""
        return sorted(self._entry(name).presets)

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name`` (imported on first use)."""
        entry = self._entry(name)
        try:
            return entry.resolve()
        except RegistryError as err:
            raise RegistryError(f"{self.kind} {name!r} could not be loaded: {err}") from err

    def _entry(self, name: str) -> _Entry:
        self._load_plugins()
        if name not in self._entries:
            raise RegistryError(self._unknown_message(name))
        return self._entries[name]

    def _unknown_message(self, name: str) -> str:
        names = sorted(self._entries)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(names) or '(none)'}."

    # ------------------------------------------------------------------ building
    def resolve_kwargs(self, spec: str | Mapping[str, Any]) -> tuple[Callable[..., Any], dict[str, Any]]:
        """Return ``(factory, kwargs)`` for ``spec`` with the preset expanded (nothing is built)."""
        spec = normalize_spec(spec)
        name = spec.pop("name")
        preset = spec.pop("preset", None)
        if not isinstance(name, str):
            raise RegistryError(f"{self.kind} name must be a string, got {name!r}")
        is_path = ("." in name or ":" in name) and name not in self
        if is_path:
            factory = import_object(name)
            if preset is not None:
                raise RegistryError(
                    f"preset {preset!r} given for {name!r}, but presets exist only for registered names"
                )
            return factory, spec
        entry = self._entry(name)
        factory = self.get(name)
        kwargs: dict[str, Any] = {}
        if preset is not None:
            if preset not in entry.presets:
                raise RegistryError(
                    f"{self.kind} {name!r} has no preset {preset!r}; available presets: {sorted(entry.presets) or '(none)'}"
                )
            kwargs = copy.deepcopy(entry.presets[preset])
        kwargs = _merge(kwargs, spec)
        return factory, kwargs

    def build(self, spec: str | Mapping[str, Any], **overrides: Any) -> Any:
        """Build a component from a name, dict spec or dotted path (see module docstring)."""
        if overrides:
            spec = {**normalize_spec(spec), **overrides}
        factory, kwargs = self.resolve_kwargs(spec)
        if not callable(factory):
            raise RegistryError(f"{self.kind} factory {factory!r} is not callable")
        return factory(**kwargs)

    def __repr__(self) -> str:
        return f"Registry(kind={self.kind!r}, entries={sorted(self._entries)})"


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge dicts; values of ``override`` win, nested dicts merge key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _first_line(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    return (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
