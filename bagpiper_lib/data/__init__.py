"""Data: records, manifests, the embedded synthetic corpus, the task mixture, curation, SFT simulation."""

from bagpiper_lib.data import synthetic
from bagpiper_lib.data.records import CATEGORIES, Record

__all__ = ["CATEGORIES", "Record", "synthetic"]
