"""``BagpiperCLI``: LightningCLI plus deep dotted overrides into the free-form dict arguments.

The component specs (``--model.backbone``, ``--model.encoder``, ``--data.source``, ...) are plain
dicts. The parser merges a one-level override such as ``--model.codec.name=dac`` into the configured
dict, but a deeper one such as ``--model.backbone.config.num_hidden_layers=2`` would *replace* the
whole nested ``config`` dict (dropping every other key the config file set) and keep ``"2"`` a string.
``BagpiperCLI`` takes those deeper overrides out of the argument list before parsing and applies
them afterwards, in order, as deep merges into the parsed dicts, with number / boolean / null
strings turned back into values (:func:`recipes.module.scalars`).

It also checks, before anything is built, that a GPU run asks for GPUs this machine has
(:func:`check_devices`).
"""

from __future__ import annotations

import inspect
from typing import Any

from lightning.pytorch.cli import LightningCLI

from recipes.data import BagpiperDataModule
from recipes.module import BagpiperLitModule, scalars

__all__ = ["BagpiperCLI", "check_devices", "dict_arguments", "split_deep_overrides"]


def dict_arguments() -> dict[str, set[str]]:
    """``{"model": {...}, "data": {...}}``: the init arguments of the module and data module typed as dicts."""
    out = {}
    for group, cls in (("model", BagpiperLitModule), ("data", BagpiperDataModule)):
        params = inspect.signature(cls.__init__).parameters.values()
        out[group] = {p.name for p in params if "dict" in str(p.annotation)}
    return out


def split_deep_overrides(args: list[str]) -> tuple[list[str], list[tuple[list[str], str]]]:
    """Split ``args`` into what the parser gets and the deep overrides ``(path, raw value)``.

    A deep override is ``--model.<dict arg>.<key>.<key>...=value`` (or ``... value``) with at least two
    keys below a dict-typed argument; everything else passes through untouched.
    """
    dicts = dict_arguments()
    kept: list[str] = []
    deep: list[tuple[list[str], str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg.partition("=")
        parts = key[2:].split(".") if key.startswith("--") else []
        if len(parts) >= 4 and parts[0] in dicts and parts[1] in dicts[parts[0]]:
            if not eq:
                if i + 1 >= len(args):
                    raise SystemExit(f"{key} needs a value")
                value = args[i + 1]
                i += 1
            deep.append((parts, value))
        else:
            kept.append(arg)
        i += 1
    return kept, deep


def _deep_set(target: dict, keys: list[str], value: Any, where: str) -> None:
    for key in keys[:-1]:
        node = target.get(key)
        if node is None:
            node = target[key] = {}
        elif not isinstance(node, dict):
            raise SystemExit(f"{where}: {key!r} is {node!r}, not a mapping, so it has no key {keys[-1]!r}")
        target = node
    target[keys[-1]] = value


class BagpiperCLI(LightningCLI):
    """LightningCLI (omegaconf parser mode) with deep dict overrides (see the module docstring)."""

    def __init__(self, *cli_args: Any, args: list[str] | None = None, **kwargs: Any):
        import sys

        raw = list(sys.argv[1:] if args is None else args)
        args, self._deep_overrides = split_deep_overrides(raw)
        super().__init__(*cli_args, args=args, **kwargs)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        for parts, raw in self._deep_overrides:
            group, argument, keys = parts[0], parts[1], parts[2:]
            where = "--" + ".".join(parts)
            node = config[group].get(argument) if hasattr(config[group], "get") else config[group][argument]
            if node is None:
                node = {}
            node = dict(node)
            _deep_set(node, keys, scalars(raw), where)
            config[group][argument] = node
        trainer = config.get("trainer") if hasattr(config, "get") else None
        if trainer is not None:
            check_devices(trainer.get("accelerator"), trainer.get("devices"))


def check_devices(accelerator: Any, devices: Any, available: int | None = None) -> None:
    """Refuse a GPU run that asks for more GPUs than this machine has, naming the setting to change.

    Args:
        accelerator: ``trainer.accelerator`` (only ``"gpu"`` / ``"cuda"`` are checked; ``"auto"`` takes
            what is there).
        devices: ``trainer.devices``: a count, ``-1`` / ``"auto"`` (all), a list of indices or an index
            string such as ``"0,1"``.
        available: GPUs present (default ``torch.cuda.device_count()``).
    """
    if str(accelerator).lower() not in ("gpu", "cuda"):
        return
    if available is None:
        import torch

        available = torch.cuda.device_count()
    if available == 0:
        raise ValueError(
            f"--trainer.accelerator={accelerator} but this machine has no CUDA GPU "
            "(torch.cuda.device_count() == 0); use --trainer.accelerator=cpu or auto"
        )
    if devices is None or str(devices).strip().lower() in ("auto", "-1"):
        return
    if isinstance(devices, str) and ("," in devices or devices.strip().startswith("[")):
        devices = [int(d) for d in devices.strip("[] ").split(",") if d.strip()]
    if isinstance(devices, (list, tuple)):
        missing = [int(d) for d in devices if not 0 <= int(d) < available]
        if missing:
            raise ValueError(
                f"--trainer.devices={list(devices)} names GPU(s) {missing}, but this machine has {available} "
                f"(indices 0..{available - 1})"
            )
        return
    count = int(devices)
    if count > available:
        raise ValueError(
            f"--trainer.devices={count} asks for {count} GPUs, but this machine has {available}; "
            f"use --trainer.devices={available} (or auto)"
        )
