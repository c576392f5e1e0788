"""Data: records, manifests, the embedded synthetic corpus, the task mixture, curation, SFT simulation."""

from bagpiper_lib.data import synthetic
from bagpiper_lib.data.manifest import (
    AudioLoader,
    ManifestError,
    iter_manifest,
    read_manifest,
    write_manifest,
)
from bagpiper_lib.data.prepare import load_codes, prepare_codes
from bagpiper_lib.data.records import CATEGORIES, Record
from bagpiper_lib.data.shards import ShardedStream, write_shards

__all__ = [
    "CATEGORIES",
    "AudioLoader",
    "ManifestError",
    "Record",
    "ShardedStream",
    "iter_manifest",
    "load_codes",
    "prepare_codes",
    "read_manifest",
    "synthetic",
    "write_manifest",
    "write_shards",
]
