"""MinHash-LSH near-duplicate removal of captions (paper §2.2.1).

Decisions:

* Deduplication is greedy in input order: the first caption of a near-duplicate group is the kept
  representative; a candidate from the LSH counts only if its estimated Jaccard reaches the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bagpiper_lib.data.curation.filters import caption_words
from bagpiper_lib.data.curation.items import StageReport, _counts, _get

if TYPE_CHECKING:  # datasketch pulls in scipy: imported when deduplicating only
    from datasketch import MinHash


@dataclass
class DedupConfig:
    """MinHash-LSH over word shingles of the caption."""

    threshold: float = 0.8
    num_perm: int = 128
    shingle_size: int = 5
    seed: int = 1
    enabled: bool = True


def caption_minhash(caption: str, config: DedupConfig | None = None) -> MinHash:
    """MinHash of the set of ``shingle_size``-word shingles of the caption."""
    from datasketch import MinHash

    cfg = config or DedupConfig()
    words = caption_words(caption)
    k = cfg.shingle_size
    shingles = {" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}
    minhash = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
    minhash.update_batch([s.encode() for s in sorted(shingles)])
    return minhash


def deduplicate(items: Sequence[Any], config: DedupConfig | None = None) -> tuple[list[Any], StageReport]:
    """Drop near-duplicate captions; ``details["duplicates"]`` maps removed id -> kept representative id."""
    from datasketch import MinHashLSH

    cfg = config or DedupConfig()
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    hashes: dict[str, MinHash] = {}
    kept, duplicates = [], {}
    for pos, item in enumerate(items):
        minhash = caption_minhash(_get(item, "caption"), cfg)
        similarity = {key: minhash.jaccard(hashes[key]) for key in lsh.query(minhash)}
        best = max(similarity, key=similarity.get, default=None)
        if best is not None and similarity[best] >= cfg.threshold:
            duplicates[str(_get(item, "id"))] = str(_get(items[int(best)], "id"))
            continue
        lsh.insert(str(pos), minhash)
        hashes[str(pos)] = minhash
        kept.append(item)
    details = {"threshold": cfg.threshold, "num_perm": cfg.num_perm, "duplicates": duplicates}
    return kept, StageReport("minhash_dedup", _counts(items), _counts(kept), details)
