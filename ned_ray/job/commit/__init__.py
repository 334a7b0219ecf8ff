"""The output transaction (:mod:`.transaction`, its invariants at the top) and its parts: the
ledger of commit markers (:mod:`.ledger`), the recorded listing (:mod:`.listing`), finishing
(:mod:`.finish`) and the lease (:mod:`.lease`). Names of files are :mod:`ned_ray.output.layout`'s."""

from .finish import device_summary, finalize
from .ledger import Ledger, Ranges, Work, split_pieces, write_marker
from .listing import listing_fingerprint, read_listing, reconcile, write_listing
from .transaction import OutputTransaction

__all__ = ["OutputTransaction", "Ledger", "Ranges", "Work", "split_pieces", "write_marker", "finalize", "device_summary",
           "listing_fingerprint", "read_listing", "write_listing", "reconcile"]
