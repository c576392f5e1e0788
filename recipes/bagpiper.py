"""The main job: ``python -m recipes.bagpiper {fit,validate,test,predict} --config recipes/configs/demo.yaml``.

LightningCLI with the omegaconf parser mode; every init argument of ``recipes.module.BagpiperLitModule``
(``--model.*``) and ``recipes.data.BagpiperDataModule`` (``--data.*``) and of the Trainer (``--trainer.*``)
is a config key or a dotted override, e.g. ``--model.codec.name=dac --trainer.max_steps=100``; dotted
overrides reach any depth of the component dicts and merge into them
(``--model.backbone.config.num_hidden_layers=2`` keeps the other backbone keys; ``recipes.cli``).
This file only wires; it defines no classes.
"""

from __future__ import annotations

from recipes.cli import BagpiperCLI
from recipes.data import BagpiperDataModule
from recipes.module import BagpiperLitModule


def main(args: list[str] | None = None, run: bool = True) -> BagpiperCLI:
    return BagpiperCLI(
        BagpiperLitModule,
        BagpiperDataModule,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def close_process_group() -> None:
    """Destroy the default process group if a strategy left one (Lightning's DDP teardown does not).

    A process that exits with a live gloo group can be aborted while its threads are torn down
    ("terminate called without an active exception", exit status -6) after a run that finished.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    finally:
        close_process_group()
