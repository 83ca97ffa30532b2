"""Corpora, token blocks and the data view techniques use (``TextData``)."""

from infopt.data.text import TextData

__all__ = ["TextData"]
