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


if __name__ == "__main__":
    main()
