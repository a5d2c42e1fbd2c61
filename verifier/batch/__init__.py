"""Batch certification of test sets: parallel, resumable, with a report (see run.py)."""

from verifier.batch.run import BatchResult, certify_dataset

__all__ = ["BatchResult", "certify_dataset"]
