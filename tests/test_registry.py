"""Tests of ``bagpiper_lib.registry``: registration, presets, dotted paths, entry-point plugins, errors."""

from __future__ import annotations

import copy
import sys
import textwrap
import types

import pytest

from bagpiper_lib.registry import Registry, RegistryError

PLUGIN_GROUP = "bagpiper_lib.test_plugins"
PLUGIN_MODULE = "bagpiper_fake_plugin"


class Widget:
    """A built-in widget for tests."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


class Gadget(Widget):
    """Another built-in widget."""


@pytest.fixture
def reg() -> Registry:
    r = Registry("widget")
    r.register("widget", Widget, presets={"tiny": {"depth": 2, "config": {"a": 1, "b": 2}}, "big": {}})
    return r


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A fake installed distribution declaring entry points in ``PLUGIN_GROUP``, on ``sys.path``."""
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(
        textwrap.dedent(
            '''
            class PluginWidget:
                """A widget provided by a third-party package."""

                def __init__(self, **kwargs):
                    self.kwargs = kwargs
            '''
        )
    )
    dist_info = tmp_path / "fakeplugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{PLUGIN_GROUP}]\n"
        f"plugin_widget = {PLUGIN_MODULE}:PluginWidget\n"
        f"widget = {PLUGIN_MODULE}:PluginWidget\n"
    )
    sys.modules.pop(PLUGIN_MODULE, None)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(PLUGIN_MODULE, None)


# ---------------------------------------------------------------------------- registration


def test_decorator_registers_and_returns_the_class_unchanged():
    r = Registry("widget")

    @r.register("deco", presets={"tiny": {"depth": 1}})
    class Deco(Widget):
        pass

    assert isinstance(Deco, type) and issubclass(Deco, Widget)
    assert r.get("deco") is Deco
    built = r.build("deco")
    assert type(built) is Deco and built.kwargs == {}
    assert r.build({"name": "deco", "preset": "tiny"}).kwargs == {"depth": 1}


def test_decorator_registers_functions():
    r = Registry("widget")

    @r.register("make")
    def make(size: int = 3):
        return ("made", size)

    assert make(4) == ("made", 4)
    assert r.build({"name": "make", "size": 7}) == ("made", 7)


def test_lazy_string_target_is_imported_on_first_use(plugin_dir):
    r = Registry("widget")
    r.register("lazy", f"{PLUGIN_MODULE}:PluginWidget", presets={"tiny": {"depth": 1}})
    assert r.available() == ["lazy"]
    assert r.presets("lazy") == ["tiny"]
    assert PLUGIN_MODULE not in sys.modules  # registering and listing import nothing
    built = r.build({"name": "lazy", "preset": "tiny", "width": 4})
    assert PLUGIN_MODULE in sys.modules
    assert type(built) is sys.modules[PLUGIN_MODULE].PluginWidget
    assert built.kwargs == {"depth": 1, "width": 4}
    assert r.get("lazy") is sys.modules[PLUGIN_MODULE].PluginWidget


def test_available_is_sorted_and_contains_works():
    r = Registry("widget")
    for name in ["zeta", "alpha", "Mid", "beta"]:
        r.register(name, Widget)
    assert r.available() == ["Mid", "alpha", "beta", "zeta"]
    assert "alpha" in r and "gamma" not in r


def test_unregister_removes_entry(reg):
    reg.unregister("widget")
    assert reg.available() == []
    reg.unregister("never_registered")  # a no-op, not an error
    with pytest.raises(RegistryError, match="unknown widget 'widget'"):
        reg.build("widget")


def test_duplicate_registration_raises_and_overwrite_replaces(reg):
    with pytest.raises(RegistryError, match=r"widget 'widget' is already registered; pass overwrite=True"):
        reg.register("widget", Gadget)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("widget")(Gadget)
    assert type(reg.build("widget")) is Widget  # the failed registrations changed nothing

    reg.register("widget", Gadget, presets={"small": {"depth": 0}}, overwrite=True)
    assert type(reg.build("widget")) is Gadget
    assert reg.presets("widget") == ["small"]  # presets replaced with the entry

    reg.register("widget", overwrite=True)(Widget)
    assert type(reg.build("widget")) is Widget


@pytest.mark.parametrize("name", ["", "a.b", "pkg:Name", 3, None])
def test_register_rejects_bad_names(name):
    r = Registry("widget")
    with pytest.raises(RegistryError, match="widget name must be a non-empty string without"):
        r.register(name, Widget)
    assert r.available() == []


# ---------------------------------------------------------------------------- building


def test_build_by_name_and_by_dict(reg):
    by_name = reg.build("widget")
    assert type(by_name) is Widget and by_name.kwargs == {}
    by_dict = reg.build({"name": "widget", "depth": 5, "config": {"x": 1}})
    assert by_dict.kwargs == {"depth": 5, "config": {"x": 1}}


def test_preset_values_merge_and_explicit_kwargs_override(reg):
    assert reg.presets("widget") == ["big", "tiny"]
    assert reg.build({"name": "widget", "preset": "tiny"}).kwargs == {
        "depth": 2,
        "config": {"a": 1, "b": 2},
    }
    built = reg.build({"name": "widget", "preset": "tiny", "depth": 9, "extra": True})
    assert built.kwargs == {"depth": 9, "config": {"a": 1, "b": 2}, "extra": True}


def test_preset_nested_dicts_merge_key_by_key(reg):
    reg.register(
        "deep",
        Widget,
        presets={"tiny": {"config": {"a": 1, "sub": {"x": 1, "y": 2}, "keep": [1, 2]}}},
    )
    built = reg.build({"name": "deep", "preset": "tiny", "config": {"b": 3, "sub": {"y": 20}}})
    assert built.kwargs == {"config": {"a": 1, "b": 3, "sub": {"x": 1, "y": 20}, "keep": [1, 2]}}
    # a non-dict value replaces a nested dict wholesale
    replaced = reg.build({"name": "deep", "preset": "tiny", "config": None})
    assert replaced.kwargs == {"config": None}


def test_build_keyword_overrides(reg):
    built = reg.build("widget", preset="tiny", depth=7)
    assert built.kwargs == {"depth": 7, "config": {"a": 1, "b": 2}}
    built = reg.build({"name": "widget", "depth": 1}, depth=3, config={"b": 5}, preset="tiny")
    assert built.kwargs == {"depth": 3, "config": {"a": 1, "b": 5}}


def test_resolve_kwargs_expands_without_building(reg):
    factory, kwargs = reg.resolve_kwargs({"name": "widget", "preset": "tiny", "config": {"a": 0}})
    assert factory is Widget
    assert kwargs == {"depth": 2, "config": {"a": 0, "b": 2}}


@pytest.mark.parametrize("path", ["types.SimpleNamespace", "types:SimpleNamespace"])
def test_build_by_dotted_class_path(path):
    r = Registry("widget")
    built = r.build({"name": path, "depth": 3, "config": {"a": 1}})
    assert type(built) is types.SimpleNamespace
    assert vars(built) == {"depth": 3, "config": {"a": 1}}
    assert r.build(path) == types.SimpleNamespace()
    assert r.available() == []  # a path is not registered as a side effect


def test_colon_path_resolves_nested_attributes(plugin_dir):
    (plugin_dir / "bagpiper_fake_nested.py").write_text(
        "class Outer:\n    class Inner:\n        def __init__(self, **kw):\n            self.kw = kw\n"
    )
    try:
        built = Registry("widget").build({"name": "bagpiper_fake_nested:Outer.Inner", "n": 1})
        assert type(built).__qualname__ == "Outer.Inner" and built.kw == {"n": 1}
    finally:
        sys.modules.pop("bagpiper_fake_nested", None)


def test_preset_with_dotted_path_is_rejected():
    with pytest.raises(RegistryError, match="preset 'tiny' given for 'types.SimpleNamespace'"):
        Registry("widget").build({"name": "types.SimpleNamespace", "preset": "tiny"})


def test_spec_dict_is_not_mutated(reg):
    spec = {"name": "widget", "preset": "tiny", "config": {"a": 10, "sub": {"z": [1, 2]}}}
    before = copy.deepcopy(spec)
    built = reg.build(spec)
    assert spec == before
    assert built.kwargs == {"depth": 2, "config": {"a": 10, "b": 2, "sub": {"z": [1, 2]}}}
    # the built object's kwargs are not aliased to the spec
    built.kwargs["config"]["sub"]["z"].append(3)
    built.kwargs["config"]["a"] = -1
    assert spec == before
    reg.build(spec, depth=4)
    assert spec == before


def test_preset_dicts_are_not_aliased_between_builds(reg):
    first = reg.build({"name": "widget", "preset": "tiny"})
    first.kwargs["config"]["a"] = 100
    first.kwargs["depth"] = 100
    first.kwargs["new"] = 1
    second = reg.build({"name": "widget", "preset": "tiny"})
    assert second.kwargs == {"depth": 2, "config": {"a": 1, "b": 2}}
    assert second.kwargs["config"] is not first.kwargs["config"]


def test_preset_is_not_aliased_with_the_registration_dict():
    preset = {"config": {"a": 1}}
    r = Registry("widget")
    r.register("w", Widget, presets={"tiny": preset})
    preset["config"]["a"] = 2
    preset["depth"] = 3
    assert r.build({"name": "w", "preset": "tiny"}).kwargs == {"config": {"a": 1}}


# ---------------------------------------------------------------------------- entry-point plugins


def test_entry_point_plugin_is_built_by_name(plugin_dir):
    r = Registry("widget", group=PLUGIN_GROUP)
    assert r.available() == ["plugin_widget", "widget"]
    assert "plugin_widget" in r
    built = r.build({"name": "plugin_widget", "size": 2})
    assert type(built).__name__ == "PluginWidget" and type(built).__module__ == PLUGIN_MODULE
    assert built.kwargs == {"size": 2}


def test_refresh_plugins_rescans_entry_points(tmp_path, monkeypatch):
    r = Registry("widget", group=PLUGIN_GROUP)
    assert r.available() == []  # scanned before the plugin is on sys.path
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(
        "class PluginWidget:\n    def __init__(self, **kw):\n        self.kwargs = kw\n"
    )
    dist_info = tmp_path / "fakeplugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{PLUGIN_GROUP}]\nplugin_widget = {PLUGIN_MODULE}:PluginWidget\n"
    )
    sys.modules.pop(PLUGIN_MODULE, None)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert r.available() == []  # the scan is cached until refreshed
        with pytest.raises(RegistryError, match="unknown widget 'plugin_widget'"):
            r.build("plugin_widget")
        r.refresh_plugins()
        assert r.available() == ["plugin_widget"]
        assert r.build({"name": "plugin_widget", "n": 1}).kwargs == {"n": 1}
    finally:
        sys.modules.pop(PLUGIN_MODULE, None)


def test_builtin_wins_over_plugin_with_the_same_name(reg, plugin_dir):
    reg.group = PLUGIN_GROUP
    reg.refresh_plugins()
    assert reg.available() == ["plugin_widget", "widget"]
    built = reg.build({"name": "widget", "preset": "tiny"})
    assert type(built) is Widget  # not the plugin's PluginWidget
    assert built.kwargs == {"depth": 2, "config": {"a": 1, "b": 2}}
    reg.refresh_plugins()
    assert type(reg.build("widget")) is Widget


def test_plugin_in_another_group_is_invisible(plugin_dir):
    r = Registry("widget", group="bagpiper_lib.test_plugins_other")
    assert r.available() == []


def test_registry_without_group_loads_no_plugins(plugin_dir):
    r = Registry("widget")
    r.refresh_plugins()
    assert r.available() == []


# ---------------------------------------------------------------------------- errors


def test_unknown_name_lists_close_matches_and_available(reg):
    reg.register("gadget", Gadget)
    reg.register("encoder_x", Widget)
    with pytest.raises(RegistryError) as info:
        reg.build("widgte")
    message = str(info.value)
    assert message == (
        "unknown widget 'widgte'. Did you mean 'widget', 'gadget'? Available: encoder_x, gadget, widget."
    )
    assert isinstance(info.value, KeyError)  # usable in `except KeyError`


def test_unknown_name_without_close_match_has_no_hint(reg):
    with pytest.raises(RegistryError, match=r"^unknown widget 'zzzz'\. Available: widget\.$"):
        reg.build({"name": "zzzz"})
    with pytest.raises(RegistryError, match=r"^unknown widget 'x'\. Available: \(none\)\.$"):
        Registry("widget").build("x")
    with pytest.raises(RegistryError, match="Did you mean 'widget'"):
        reg.presets("widgets")
    with pytest.raises(RegistryError, match="Did you mean 'widget'"):
        reg.get("Widget")


def test_unknown_preset_lists_available_presets(reg):
    with pytest.raises(
        RegistryError, match=r"widget 'widget' has no preset 'huge'; available presets: \['big', 'tiny'\]"
    ):
        reg.build({"name": "widget", "preset": "huge"})
    reg.register("bare", Widget)
    with pytest.raises(RegistryError, match=r"has no preset 'tiny'; available presets: \(none\)"):
        reg.build("bare", preset="tiny")


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        (5, r"component spec must be a name or a dict with 'name', got int: 5"),
        (None, r"component spec must be a name or a dict with 'name', got NoneType"),
        (["widget"], r"component spec must be a name or a dict with 'name', got list"),
        (
            {"preset": "tiny", "depth": 1},
            r"component spec \{'preset': 'tiny', 'depth': 1\} has no 'name' key",
        ),
        ({"name": 5}, r"widget name must be a string, got 5"),
    ],
)
def test_bad_spec_types_give_clear_errors(reg, spec, pattern):
    with pytest.raises(RegistryError, match=pattern):
        reg.build(spec)


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        (
            "no_such_module_xyz.Thing",
            r"cannot import module 'no_such_module_xyz' for 'no_such_module_xyz\.Thing'",
        ),
        (
            "no_such_module_xyz:Thing",
            r"cannot import module 'no_such_module_xyz' for 'no_such_module_xyz:Thing'",
        ),
        ("types.NoSuchThing", r"module 'types' has no attribute 'NoSuchThing' \(from 'types\.NoSuchThing'\)"),
        ("types:SimpleNamespace.nope", r"has no attribute 'SimpleNamespace\.nope'"),
        (":Thing", r"':Thing' is not an import path"),
        ("types:", r"'types:' is not an import path"),
    ],
)
def test_bad_import_paths_name_the_path(path, pattern):
    with pytest.raises(RegistryError, match=pattern):
        Registry("widget").build(path)


def test_lazy_entry_with_bad_path_names_entry_and_path():
    r = Registry("widget")
    r.register("broken", "no_such_module_xyz.sub:Thing")
    assert r.available() == ["broken"]  # registering does not import
    with pytest.raises(
        RegistryError,
        match=r"widget 'broken' could not be loaded: cannot import module 'no_such_module_xyz\.sub' "
        r"for 'no_such_module_xyz\.sub:Thing'",
    ):
        r.build("broken")


def test_non_callable_factory_is_rejected():
    r = Registry("widget")
    r.register("pi", "math:pi")
    with pytest.raises(RegistryError, match=r"widget factory 3\.14159\d* is not callable"):
        r.build("pi")
    with pytest.raises(RegistryError, match="is not callable"):
        r.build("math.pi")


# ---------------------------------------------------------------------------- the real family registries


def test_family_registries_have_their_entry_point_groups():
    from bagpiper_lib import backbones, codecs, encoders, sequence

    expected = [
        (codecs.registry, "codec", "bagpiper_lib.codecs"),
        (encoders.registry, "encoder", "bagpiper_lib.encoders"),
        (backbones.registry, "backbone", "bagpiper_lib.backbones"),
        (sequence.patterns, "pattern", "bagpiper_lib.patterns"),
    ]
    for registry, kind, group in expected:
        assert isinstance(registry, Registry)
        assert (registry.kind, registry.group) == (kind, group)
    assert codecs.build == codecs.registry.build and codecs.available == codecs.registry.available
    assert "xcodec" in codecs.available()
