"""Curate a JSONL manifest: ``python -m recipes.curate --manifest in.jsonl --out out_dir [options]``.

Each manifest line holds ``id``, ``caption``, ``category`` (``null``: classified from the caption) and
optionally ``quality`` (e.g. ``{"audio": 3.1, "text": 0.7, "alignment": 0.4}``), ``audio``, ``incomplete``.
Writes ``out_dir/manifest.jsonl`` (kept lines, with ``category`` and ``quality.fused`` filled in),
``report.json``, ``fused_scores.png`` and ``caption_lengths.png``, and prints a per-stage summary.
The pipeline lives in :mod:`bagpiper_lib.data.curation`; this file only wires options to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

from bagpiper_lib.data import curation
from bagpiper_lib.data.llm import LocalHFClient, OpenAICompatibleClient


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recipes.curate", description=__doc__.split("\n")[0])
    p.add_argument("--manifest", required=True, type=Path, help="input JSONL manifest")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--config", type=Path, help="YAML curation config (see CurationConfig.from_dict)")
    p.add_argument("--no-length-filter", action="store_true", help="disable the token-count rule")
    p.add_argument("--min-tokens", type=int, help="token-count rule lower bound (paper: 200)")
    p.add_argument("--max-tokens", type=int, help="token-count rule upper bound (paper: 800)")
    p.add_argument("--disable-rule", action="append", default=[], choices=curation.RULES, help="repeatable")
    p.add_argument("--preset", choices=sorted(curation.TRUNCATION_PRESETS), help="Gumbel top-k preset")
    p.add_argument("--no-truncation", action="store_true", help="skip Gumbel top-k truncation")
    p.add_argument("--no-dedup", action="store_true", help="skip MinHash deduplication")
    p.add_argument("--dedup-threshold", type=float, help="MinHash Jaccard threshold (default 0.8)")
    p.add_argument("--reclassify", action="store_true", help="classify every caption, not only null ones")
    p.add_argument("--seed", type=int, help="Gumbel noise seed")
    p.add_argument("--classifier", choices=("keyword", "openai", "local"), default="keyword")
    p.add_argument("--llm-base-url", help="OpenAI-compatible server root (--classifier openai)")
    p.add_argument("--llm-model", help="model name on that server (--classifier openai)")
    p.add_argument("--llm-dir", help="local transformers model directory (--classifier local)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> curation.CurationConfig:
    data = yaml.safe_load(args.config.read_text()) if args.config else {}
    if not isinstance(data or {}, dict):
        raise ValueError(f"{args.config}: a curation config must be a YAML mapping")
    config = curation.CurationConfig.from_dict(data or {})
    filters, dedup = config.filters, config.dedup
    disabled = [
        *filters.disabled_rules,
        *args.disable_rule,
        *(["token_count"] if args.no_length_filter else []),
    ]
    bounds = {"min_tokens": args.min_tokens, "max_tokens": args.max_tokens}
    config.filters = dataclasses.replace(
        filters,
        disabled_rules=tuple(dict.fromkeys(disabled)),
        **{k: v for k, v in bounds.items() if v is not None},
    )
    if args.preset:
        config.truncation = curation.TruncationConfig.preset(args.preset)
    config.truncation.enabled = config.truncation.enabled and not args.no_truncation
    config.dedup = dataclasses.replace(
        dedup,
        enabled=dedup.enabled and not args.no_dedup,
        threshold=dedup.threshold if args.dedup_threshold is None else args.dedup_threshold,
    )
    config.reclassify = config.reclassify or args.reclassify
    config.seed = config.seed if args.seed is None else args.seed
    if args.classifier == "openai":
        if not (args.llm_base_url and args.llm_model):
            raise SystemExit("--classifier openai needs --llm-base-url and --llm-model")
        client = OpenAICompatibleClient(args.llm_base_url, args.llm_model)
        config.classifier = curation.LLMCategoryClassifier(client)
    elif args.classifier == "local":
        if not args.llm_dir:
            raise SystemExit("--classifier local needs --llm-dir")
        config.classifier = curation.LLMCategoryClassifier(LocalHFClient(args.llm_dir))
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        items = curation.read_manifest(args.manifest)
        config = build_config(args)
    except (curation.ManifestError, ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kept, report = curation.curate(items, config)
    curation.write_manifest(kept, args.out / "manifest.jsonl")
    paths = curation.save_report(report, args.out)
    print(report.summary())
    print(f"kept {len(kept)} of {len(items)} -> {args.out / 'manifest.jsonl'}; report {paths['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
