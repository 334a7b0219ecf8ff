"""What a job keeps of each model's responses: NED's selections (:mod:`.ned`: ``--channels``,
``--times``, ``--min-ncsnr``) and BERG's (:mod:`.berg`: ``--selection``), resolved from metadata
alone. No torch is imported here."""

from .berg import Rows, berg_selections, resolve_selection
from .ned import Resolved, Selection, parse_channels, parse_times

__all__ = ["Selection", "Resolved", "parse_channels", "parse_times", "Rows", "resolve_selection", "berg_selections"]
