"""Probe a checkpoint: ``python -m recipes.evaluate --checkpoint <ckpt|dir> --out <dir> [options]``.

    python -m recipes.evaluate --checkpoint runs/demo/.../last.ckpt --probes understanding,generation,cycle \\
        --data synthetic --num-items 16 --out eval/demo --max-steps 256 --seed 0

``--checkpoint`` is a Lightning ``.ckpt`` (rebuilt from its ``hyper_parameters``, weights read with
``torch.load(weights_only=True)``) or a directory written by ``BagpiperModel.save_pretrained``.
``--data`` is ``synthetic`` (held-out clips of the embedded corpus) or ``manifest:<path>`` (JSONL).
Writes ``<out>/results.json``, ``<out>/results.md`` and PNG plots; the probes live in
:mod:`bagpiper_lib.evaluation.probes`, the documents in :mod:`bagpiper_lib.evaluation.report`.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import torch

from bagpiper_lib.evaluation import probes, report
from bagpiper_lib.model import BagpiperModel


def load_model(path: str | Path, device: str = "cpu") -> BagpiperModel:
    """A ``BagpiperModel`` from a ``save_pretrained`` directory or a Lightning checkpoint file."""
    path = Path(path)
    if path.is_dir():
        return BagpiperModel.from_pretrained(path).to(device)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {str(path)!r} does not exist")
    from recipes.module import BagpiperLitModule

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(
            f"--checkpoint {str(path)!r} is not a Lightning checkpoint (needs state_dict and hyper_parameters)"
        )
    known = set(inspect.signature(BagpiperLitModule.__init__).parameters) - {"self", "init_from"}
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k in known}
    lit = BagpiperLitModule(**hparams)
    lit.load_state_dict(ckpt["state_dict"], strict=True)
    return lit.model.to(device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recipes.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="Lightning .ckpt file or save_pretrained directory")
    p.add_argument(
        "--probes", default=",".join(probes.PROBES), help="comma-separated: " + ", ".join(probes.PROBES)
    )
    p.add_argument("--data", default="synthetic", help="'synthetic' or 'manifest:<path>'")
    p.add_argument("--num-items", type=int, default=16, help="records to probe")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--max-steps", type=int, help="decoding steps per segment (default: the model's)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument(
        "--cfg-scale", type=float, help="audio classifier-free guidance (default: the model's; 1 = off)"
    )
    p.add_argument("--seed", type=int, default=0, help="corpus and sampling seed")
    p.add_argument("--batch-size", type=int, default=8, help="clips per model call")
    p.add_argument("--num-spectrograms", type=int, default=3, help="generated clips plotted per probe")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        names = probes.resolve_probes(args.probes)
        settings = probes.GenerationSettings(
            args.max_steps, args.temperature, args.seed, cfg_scale=args.cfg_scale, batch_size=args.batch_size
        )
        records = probes.evaluation_records(args.data, args.num_items, args.seed)
        model = load_model(args.checkpoint, args.device)
        results = probes.ProbeRunner(model, records, settings).run(names)
    except (probes.ProbeError, ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    meta = {
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "num_items": len(records),
        "settings": settings.to_dict(),
        "capabilities": probes.capabilities(model),
    }
    paths = report.write_report(results, args.out, meta, args.num_spectrograms)
    print(report.summary(results))
    print(f"wrote {paths['json']} and {paths['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
