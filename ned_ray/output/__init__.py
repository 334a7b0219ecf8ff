"""A job's output folder: its layout (:mod:`.layout`, every name under OUT/) and its reader
(:mod:`.reader`: ``open_output(OUT)``)."""

from .reader import IncompleteOutputError, Output, open_output

__all__ = ["open_output", "Output", "IncompleteOutputError"]
