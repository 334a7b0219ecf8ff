"""The output transaction: one object the orchestrator calls to own, fill and finish an output.

    tx = OutputTransaction(config, ned, models, stream)   the store; a missing bucket refused (or created)
    tx.completed(source)                                   this exact job's manifest, complete and undamaged
    with tx.owned(record):                                 the lease: taken (or a dead holder's taken over),
                                                           renewed, released on the way out
        source, work = tx.begin(source, metadata, selections)   the listing, what is left to do; _job.json, metadata
        ... an executor writes parts and their markers ...
        manifest = tx.commit(plan, executor)               verified, images.parquet, _manifest.json last
        (interrupted: tx.check_lease(), stop the writers, raise tx.interrupted(exc): one line, 130/143)

Writers. Every model group's encoders write their models' response parts themselves (responses never
travel through Ray's object store); the image sink writes each image's status. Each is a *writer*
with a key: ``models-<hash of its model ids>`` or ``images``. A writer cuts the rows it receives at
shard boundaries (``shard = image_index // shard_size``) into pieces of consecutive rows, named by
indexes only (:mod:`ned_ray.output.layout`).

Invariants
1. A writer writes a piece's data files first, its marker ``_commits/<writer key>/<piece>.json``
   last; a marker exists only for data that is whole (local files are renamed into place, object
   store uploads are all-or-nothing).
2. A writer never commits a row twice: it is told which rows are committed for its models (or for
   images) and skips them, so across runs, crashes and retries each (model, image) and (images,
   image) pair is committed at most once.
3. An output is complete when every image is committed exactly once for images and for every
   model; only then is ``_manifest.json`` written, last. Markers hold all the piece's rows (bad
   images too); response parts hold the ``ok`` ones.
4. Files that no marker references are leftovers of unfinished writes: ``finalize`` deletes them.
5. A marker lists its files with their sizes and its rows; a marker whose files are missing, of
   another size, or hold another number of rows is damaged: a run drops it (and re-encodes those
   rows) before it starts, and ``finalize`` refuses to declare an output with one complete.
6. One job writes an output at a time: it holds ``_lease.json`` (created exclusively, renewed while
   it runs); every write, clean-up and ``--overwrite`` happens under the lease (:mod:`.lease`).
7. The images an output holds are its recorded listing, ``_listing.parquet`` (image_index order;
   fingerprint in ``_job.json``); markers carry the image ids they hold. A rerun whose input lost or
   changed images is refused; images added to the input are appended (new indexes, old ones kept).
8. Listings that decide completeness bypass fsspec's caches (object stores cache them).
9. Model weights bind an output once something of that model is committed: a rerun with other
   weights is refused; a file repaired after a failed load replaces the recorded one.
10. A rerun whose options differ only in ``--models``, naming every model the output holds and more,
   adds the new models: the run computes only them (their own backbone pass), the others' parts
   and markers stay as they are, and the manifest (removed while the run lasts) lists them all.
11. Only ned-ray's own files are ever removed, and only inside the output (:mod:`.owned`); paths
   read from markers are checked first (:meth:`.Ledger.read`): one that would lead elsewhere makes its
   marker invalid, removed itself and never followed.
"""

from __future__ import annotations

import json
import logging
import posixpath
import signal
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

import numpy as np

from ... import __version__
from ...errors import JobInterrupted, LeaseLostError, ListingChangedError, MissingBucketError, NedRayError, OutputExistsError, storage_error
from ...ids import ModelId
from ...output import layout
from ...selection import Resolved
from ...storage import bucket_of, filesystem, fresh_exists, write_bytes
from ...text import printable
from ..inputs import ImageSource
from ..interrupts import shielded
from ..metadata import model_files, recorded_files, write_model_metadata
from ..options import EncodeConfig
from ..plan import Plan
from . import owned
from .finish import device_summary, finalize
from .lease import Lease
from .ledger import Ledger, Work
from .listing import listing_fingerprint, read_listing, reconcile, write_listing

__all__ = ["OutputTransaction", "storage_errors"]

log = logging.getLogger("ned_ray")


@contextmanager
def storage_errors(what: str, uri: str) -> Iterator[None]:
    """Turn a filesystem/network failure on ``uri`` into one StorageError line."""
    try:
        yield
    except NedRayError:
        raise
    except Exception as exc:  # botocore, gcsfs, aiohttp and OS errors alike
        raise storage_error(what, uri, exc) from exc


class OutputTransaction:
    """One job's ownership of its output folder, from the first check to the manifest."""

    def __init__(self, config: EncodeConfig, ned: Any, models: list[ModelId], stream: TextIO) -> None:
        self.config, self.ned, self.models, self.stream = config, ned, models, stream
        self.uri = config.output
        self.lease: Lease | None = None
        self.ledger = Ledger()  # what commit() found: every marker of the finished output
        self.job: dict[str, Any] = {}
        self.n_images = 0
        with storage_errors("write the output to", self.uri):
            self.fs, self.root = filesystem(config.output, config.storage_options)
            self._check_bucket()
            if config.overwrite:
                self._refuse_holding_input()

    def _path(self, relative: str) -> str:
        return posixpath.join(self.root, relative)

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    # -- before the lease ---------------------------------------------------------------------------
    def _check_bucket(self) -> None:
        """Object stores: the output bucket must exist (creating buckets is not the job's business unless
        ``create_output_bucket``); without this check s3fs/gcsfs would create it silently."""
        bucket = bucket_of(self.fs, self.root)
        if bucket is None or self.fs.exists(bucket):
            return
        protocol = self.uri.split("://", 1)[0]
        if not self.config.create_output_bucket:
            raise MissingBucketError(f"output bucket '{protocol}://{bucket}' does not exist (output '{self.uri}'); "
                                     "create it, or pass --create-output-bucket")
        log.warning("creating output bucket %s://%s", protocol, bucket)
        self.fs.mkdir(bucket)

    def _refuse_holding_input(self) -> None:
        """``--overwrite`` replaces an output; an --output that is the input or holds it is a mistake."""
        images_fs, images = filesystem(self.config.images, self.config.storage_options)
        if owned.holds(self.fs, self.root, images_fs, images):
            raise OutputExistsError(f"--output '{self.uri}' holds the job's input '{self.config.images}': --overwrite "
                                    "replaces an output, not a folder with its images; choose an --output outside "
                                    "the input (e.g. a new folder beside it)")

    def completed(self, source: ImageSource) -> dict[str, Any] | None:
        """The manifest of an output this exact job already completed, undamaged (its weights checked);
        else None. A rerun of a complete job writes nothing and takes no lease."""
        self.n_images = len(source)
        with storage_errors("read the output at", self.uri):
            manifest = self._complete_manifest(source)
        if manifest is not None:
            with storage_errors("read the output at", self.uri):
                self._check_weights()
        return manifest

    def _complete_manifest(self, source: ImageSource) -> dict[str, Any] | None:
        fs, config = self.fs, self.config
        if config.overwrite or not fresh_exists(fs, self._path(layout.MANIFEST)):
            return None
        job_path = self._path(layout.JOB_FILE)
        job = json.loads(fs.cat_file(job_path)) if fresh_exists(fs, job_path) else {}
        if EncodeConfig.recorded_identity(job) != config.identity():
            return None
        if job.get("listing", {}).get("fingerprint") != listing_fingerprint(source.listing):
            return None
        ledger = Ledger.read(fs, self.root)
        if ledger.invalid or ledger.damaged(fs, self.root):
            return None
        return json.loads(fs.cat_file(self._path(layout.MANIFEST)))

    # -- the lease ----------------------------------------------------------------------------------
    @contextmanager
    def owned(self, record: dict[str, Any]) -> Iterator["OutputTransaction"]:
        """Hold the output's lease (invariant 6) for the block; released on the way out, whatever happens."""
        with storage_errors("write the output to", self.uri):
            self.fs.makedirs(self.root, exist_ok=True)
        self.lease = Lease(self.fs, self.root, self.config.lease_ttl, record, label=self.uri)
        with storage_errors("take the lease of", self.uri):
            self.lease.acquire(self.config.force, notify=self._say)
        try:
            yield self
        finally:
            with shielded():
                self.lease.release()

    def check_lease(self) -> None:
        """Interrupted: an interrupt after the lease was lost is that loss, said in one line."""
        if self.lease is not None and self.lease.lost:
            raise LeaseLostError(f"this job lost the output's lease: {self.lease.lost}; what it committed is kept") from None

    # -- under the lease ----------------------------------------------------------------------------
    def begin(self, source: ImageSource, metadata: dict, selections: dict) -> tuple[ImageSource, Work]:
        """Make the output this job's: options checked (or an empty earlier attempt cleared), damaged
        pieces dropped, the listing reconciled (invariant 7) and recorded with ``_job.json``, any old
        manifest removed, model weights bound and metadata written. Returns the listing this run works
        on and what is left to do."""
        config, fs, root = self.config, self.fs, self.root
        with storage_errors("read the output at", self.uri):
            self._check_options()
            ledger = Ledger.read(fs, root)
            if ledger.invalid:
                path, why = ledger.invalid[0]
                self._say(f"warning: {len(ledger.invalid)} commit marker(s) of {self.uri} are not ned-ray's (e.g. "
                          f"{printable(posixpath.relpath(path, root.rstrip('/')))}: {printable(why)}); removing them, "
                          "never the files they name")
                ledger = ledger.drop_invalid(fs, root)
            source = self._reconcile_listing(source, ledger)
            self._check_marker_ids(ledger, source)
            damaged = ledger.damaged(fs, root)
            if damaged:
                self._say(f"warning: {len(damaged)} committed piece(s) of {self.uri} are damaged (e.g. {damaged[0][2]}); "
                          "encoding them again")
                ledger = ledger.drop(fs, root, damaged)
        self.n_images = n_images = len(source)
        work = Work.of(ledger, self.models, n_images, config.shard_size)
        self.job = {"ned_ray_version": __version__, "identity": config.identity(), "options": config.to_json(),
                    "models": [str(m) for m in self.models], "n_images": n_images,
                    "listing": {"file": layout.LISTING, "images": n_images,
                                "fingerprint": listing_fingerprint(source.listing)},
                    "duplicates": source.duplicates[:1000]}
        with storage_errors("write the output to", self.uri):  # also proves the output is writable
            write_listing(fs, root, source.listing)
            write_bytes(fs, self._path(layout.JOB_FILE), json.dumps(self.job, indent=2).encode())
            if fresh_exists(fs, self._path(layout.MANIFEST)):
                fs.rm(self._path(layout.MANIFEST))
            self._check_weights(metadata, selections, ledger)
        return source, work

    def _check_options(self) -> None:
        """An existing output: replaced (``overwrite``); refused when made with other options; cleared
        when it committed nothing (an attempt that failed early belongs to nobody)."""
        config, fs, root = self.config, self.fs, self.root
        if config.overwrite:
            self._replace()
            return
        job_path = self._path(layout.JOB_FILE)
        if not fresh_exists(fs, job_path):
            return
        previous = json.loads(fs.cat_file(job_path))
        identity, recorded = config.identity(), EncodeConfig.recorded_identity(previous)
        if recorded == identity:
            return
        if not Ledger.read(fs, root):
            log.warning("output %s: replacing an earlier attempt that committed nothing", self.uri)
            self._clear_attempt()
            return
        changed = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
        if changed == ["models"]:
            self._add_models(previous)
            return
        raise OutputExistsError(f"output '{self.uri}' holds a job with other options (differs in: {', '.join(changed)}); "
                                "use another --output, or --overwrite to replace it")

    def _add_models(self, previous: dict[str, Any]) -> None:
        """Only ``--models`` changed: models it adds join the output (invariant 10); models it leaves
        out are refused (an output never loses a model but by --overwrite)."""
        held, now = list(previous.get("models", [])), {str(m) for m in self.models}
        dropped = [m for m in held if m not in now]
        if dropped:
            raise OutputExistsError(f"output '{self.uri}' holds {len(dropped)} model(s) that --models leaves out (e.g. "
                                    f"{dropped[0]}); models can be added to an output, not removed: give --models with "
                                    "all of them, another --output, or --overwrite to replace it")
        added = sorted(now - set(held))
        self._say(f"{self.uri}: adding {len(added)} model(s) to the output ({', '.join(added[:3])}"
                  f"{', ...' if len(added) > 3 else ''}); the {len(held)} it holds keep their committed parts")

    def _replace(self) -> None:
        """``--overwrite``: remove the earlier output's own files (:mod:`.owned`), never a user's; say
        which files of the folder were kept."""
        own, foreign = owned.scan(self.fs, self.root)
        removed = owned.remove(self.fs, self.root, own, keep=self._lease_files(own))
        if removed:
            log.warning("overwriting %s: removed %d file(s) of the earlier output", self.uri, removed)
        if foreign:
            self._say(f"{self.uri}: --overwrite replaces ned-ray's files only; kept {len(foreign)} other file(s) there "
                      f"(e.g. {', '.join(printable(f) for f in foreign[:3])})")

    def _clear_attempt(self) -> None:
        """Remove what a job that committed nothing wrote: its options, listing, models' metadata and
        any uncommitted parts (ned-ray's own files only, :mod:`.owned`)."""
        own, _ = owned.scan(self.fs, self.root)
        owned.remove(self.fs, self.root, own, keep=self._lease_files(own))

    @staticmethod
    def _lease_files(rels: list[str]) -> list[str]:
        """The lease this job holds, and the temporary files of its renewals."""
        return [r for r in rels if r == layout.LEASE or r.endswith(f"-{layout.LEASE}")]

    def _reconcile_listing(self, source: ImageSource, ledger: Ledger) -> ImageSource:
        """The listing this run works on: the output's recorded one plus appended images (invariant 7)."""
        previous = read_listing(self.fs, self.root)
        if previous is None:
            if ledger:
                raise ListingChangedError(f"output '{self.uri}' has commits but no recorded listing (written by an "
                                          "older ned-ray); use --overwrite to start over, or another --output")
            return source
        if not ledger:  # nothing committed: the old listing binds nothing
            return source
        listing, added = reconcile(previous, source.listing, self.uri)
        if added:
            self._say(f"{self.uri}: {added} image(s) added to the input since the output was started: encoding them "
                      f"(indexes {previous.num_rows} to {listing.num_rows - 1}); the {previous.num_rows} before are kept")
        return source.with_listing(listing)

    def _check_marker_ids(self, ledger: Ledger, source: ImageSource) -> None:
        """Markers hold the ids of their rows: they must be the listing's ids at those indexes."""
        ids = source.listing.column("image_id")
        for key, marker in ledger.entries():
            index = np.asarray(marker["image_index"], np.int64)
            held = marker.get("image_id")
            if held is None or (len(index) and (index.max() >= len(ids) or ids.take(index).to_pylist() != list(held))):
                raise ListingChangedError(f"output '{self.uri}': commit {key}/{marker['piece']} holds other images than "
                                          "its recorded listing; the output is inconsistent: use --overwrite to start over")

    def _check_weights(self, metadata: dict | None = None, selections: dict | None = None,
                       ledger: Ledger | None = None) -> None:
        """Identify every model file once (no download; local files hashed once per version) and refuse
        weights other than those the output was made with (invariant 9); with ``metadata``, write what
        is missing."""
        files_seen: dict[str, dict[str, Any]] = {}
        for mid in self.models:
            recorded = recorded_files(self.fs, self.root, mid)
            if recorded is not None and ledger is not None and not ledger.model_markers(mid):
                recorded = None  # nothing of this model was written with the recorded weights
            files = model_files(self.ned, mid, self.config, files_seen, recorded)
            pairs = list(zip(files, (recorded or []) + [{}] * len(files)))
            if recorded is not None and not all(_same_file(f, g) for f, g in pairs):
                changed = next(f["file"] for f, g in pairs if not _same_file(f, g))
                raise OutputExistsError(f"output '{self.uri}' was made with other weights for {mid} ({changed} changed); "
                                        "use another --output, or --overwrite to replace it")
            if recorded is None and metadata is not None:
                write_model_metadata(self.fs, self.root, mid, metadata[mid], self.config, files,
                                     Resolved.from_record(selections[str(mid)]), self.ned.entry(mid).format,
                                     selections[str(mid)].get("berg"))

    # -- the end ------------------------------------------------------------------------------------
    def commit(self, plan: Plan | None, executor: Any) -> dict[str, Any]:
        """Finish the output (invariant 3): verify every image is committed exactly once for images and
        every model, write images.parquet, then ``_manifest.json``. Returns the manifest."""
        with storage_errors("finish the output", self.uri):
            self.ledger = ledger = Ledger.read(self.fs, self.root)
            self._warn_fallbacks(ledger)
            return finalize(self.fs, self.root, self.uri, self.models, self.config.formats, self.n_images,
                            {**self.job, "plan": plan.to_json() if plan else None,
                             "executor": {"name": executor.name, "reason": executor.reason}}, ledger,
                            self.config.store)

    def _warn_fallbacks(self, ledger: Ledger) -> None:
        """Once per job: pools planned on GPUs whose actors computed on CPU (recorded in the manifest)."""
        fell = [g for g in device_summary(ledger) if g["planned"] == "cuda" and "cpu" in g["ran_on"]]
        if fell:
            nodes = sorted({n for g in fell for n in g["nodes"]})
            self._say(f"warning: model group(s) {', '.join(g['pool'] or g['writer'] for g in fell)} were planned on "
                      f"GPUs but computed on CPU: torch saw no CUDA device on node(s) {', '.join(nodes)} (see "
                      "'devices' in _manifest.json)")

    def interrupted(self, exc: KeyboardInterrupt) -> JobInterrupted:
        """The line an interrupted job ends with: what is committed, and how to go on."""
        signum = exc.signum if isinstance(exc, JobInterrupted) else signal.SIGINT
        try:
            committed = f"{Ledger.read(self.fs, self.root).images_committed()} of {self.n_images} images committed"
        except Exception:  # noqa: BLE001 - the count is for the message only
            committed = "what was committed is kept"
        return JobInterrupted(signum, f"interrupted ({signal.Signals(signum).name}): {committed} in '{self.uri}'; "
                                      "rerun the same command to resume")


def _same_file(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same content: equal sha256 where both have one, else equal size and store version."""
    if "sha256" in a and "sha256" in b:
        return a["sha256"] == b["sha256"]
    keys = (set(a) & set(b)) - {"file", "mtime"}
    return bool(keys) and all(a[k] == b[k] for k in keys)
