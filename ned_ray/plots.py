"""Figures of a finished output (``ned-ray plot OUT``), as PNG files, with matplotlib.

One figure per model family in the output:

* ``eeg_timecourses.png``: per EEG model, the mean response over repetitions and the channels of each
  channel group (occipital: names with an O, as NED's tutorial selects them; then by first letter: P
  parietal, C central, T temporal, F/A frontal), with the spread (+-1 sd) across images.
* ``meg_timecourses.png``: per MEG model, the same per sensor region (CTF names: MLO = left occipital).
* ``tvsd_timecourses.png``: per Utah-array model, the same per array area (V1, V4, IT).
* ``fmri_distributions.png`` (NSD fwrf), ``things_fmri_distributions.png``: the distribution of
  responses (all voxels x images) per model.
* ``fsaverage_surface.png`` (and one per AlexNet fsaverage family): per subject, the mean response
  over images on the inflated cortical surface, lateral and medial views of each hemisphere
  (nilearn's bundled fsaverage5 mesh, whose 10,242 vertices are the first 10,242 of fsaverage).
* ``eeg_topomaps.png``, ``meg_topomaps.png``: per model, scalp (EEG: standard 10-20 montage) or
  sensor (MEG: the CTF-275 layout) topographies of the mean response at chosen times (MNE).
* ``heatmap.png``: image x model, each model's mean response per image, z-scored across images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import MissingDependencyError, ModelNotInOutputError, OutputError
from .families import FAMILIES
from .families.eeg import channel_region
from .ids import ModelId
from .output import Output
from .output.destination import check_folder, written
from .text import printable

__all__ = ["plot_output", "channel_groups", "FIGSIZE", "DPI"]

FIGSIZE = (12.0, 8.0)  # inches; with DPI every PNG is 1200 x 800 pixels
DPI = 100


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("ned-ray plot needs matplotlib: pip install 'ned-ray[analysis]'") from None
    return plt


def _label(text: object) -> str:
    """Text from users' files (image ids, paths) as a figure label: one printable line, and no '$'
    that matplotlib would read as mathematics."""
    return printable(text).replace("$", r"\$")


def _save(plt, fig, path: Path) -> None:
    """Save a figure whole or not at all (:func:`~ned_ray.output.destination.written`)."""
    try:
        with written(path, flag="--to") as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)


def channel_groups(names: list[str] | np.ndarray) -> dict[str, np.ndarray]:
    """{group: channel indexes} of EEG channel names, by scalp region (:func:`ned_ray.families.eeg.channel_region`)."""
    return _grouped([channel_region(str(n)) for n in names])


def _grouped(labels: list[str]) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return {g: np.asarray(v) for g, v in groups.items()}


def _units(out: Output, mid: str, values: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(values as (N, units, times), {group: unit indexes}) of a time-resolved model (repetitions averaged)."""
    family = ModelId.parse(mid).family
    if family.repetitions:
        values = values.mean(axis=1)
    return values, _grouped(family.plot.unit_groups(out.coords(mid), out.metadata(mid)))


def _timecourses(out: Output, models: list[str], path: Path, what: str) -> None:
    plt = _pyplot()
    cols = min(3, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=FIGSIZE, dpi=DPI, squeeze=False, sharex=True)
    for ax, mid in zip(axes.ravel(), models):
        _, values = out.responses(mid)
        values, groups = _units(out, mid, values)
        times = out.coords(mid)["time"]
        for group, index in groups.items():
            if len(index) == 0:
                continue
            per_image = values[:, index].mean(axis=1)  # (N, times)
            mean, sd = per_image.mean(0), per_image.std(0)
            line, = ax.plot(times, mean, label=f"{group} ({len(index)})")
            ax.fill_between(times, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(f"{ModelId.parse(mid).label} ({len(values)} images)", fontsize=9)
        ax.set_xlabel("time (s)")
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(models):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("response (group mean)")
    fig.suptitle(f"{what}: mean time course per group, +-1 sd across images\n{_label(out.uri)}", fontsize=10)
    fig.tight_layout()
    _save(plt, fig, path)


def _distributions(out: Output, models: list[str], path: Path, what: str, rng: np.random.Generator,
                   cap: int = 20000) -> None:
    plt = _pyplot()
    ids = sorted((ModelId.parse(m) for m in models), key=lambda m: (str(m.variant), str(m.subject)))
    data, labels = [], []
    for mid in ids:
        values = out.responses(str(mid))[1].ravel()
        data.append(values if len(values) <= cap else rng.choice(values, cap, replace=False))
        labels.append(f"{mid.variant}\n{mid.subject_tag}" if mid.variant else mid.subject_tag)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    parts = ax.violinplot(data, showmedians=True, widths=0.8)
    for body, mid in zip(parts["bodies"], ids):
        body.set_facecolor(f"C{(ord(mid.subject) if isinstance(mid.subject, str) else mid.subject) % 10}")
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7 if len(labels) > 12 else 9, rotation=0)
    ax.set_ylabel("predicted response (all units x images)")
    ax.set_title(f"{what}: response distribution per model (colour = subject)\n{_label(out.uri)}", fontsize=10)
    fig.tight_layout()
    _save(plt, fig, path)


def _heatmap(out: Output, models: list[str], path: Path, max_images: int = 200) -> None:
    plt = _pyplot()
    columns = []
    ids = out.images().column("image_id").to_numpy(zero_copy_only=False)
    for mid in models:
        index, values = out.responses(mid)  # every model has the same rows (the images that decoded)
        mean = values.reshape(len(values), -1).mean(axis=1)
        columns.append((mean - mean.mean()) / (mean.std() or 1.0))
    names = ids[index]
    matrix = np.stack(columns, axis=1)[:max_images]
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3, interpolation="nearest")
    ax.set_xticks(range(len(models)), [ModelId.parse(m).label for m in models], rotation=60, ha="right", fontsize=7)
    if len(matrix) <= 40:
        ax.set_yticks(range(len(matrix)), [_label(n) for n in names[:len(matrix)]], fontsize=7)
    ax.set_ylabel(f"image ({len(matrix)} of {len(columns[0])})")
    fig.colorbar(image, ax=ax, label="mean response, z-scored across images")
    ax.set_title(f"image x model: mean response per image\n{_label(out.uri)}", fontsize=10)
    fig.tight_layout()
    _save(plt, fig, path)


FSAVERAGE5 = 10_242  # vertices per hemisphere of fsaverage5: the first 10,242 of fsaverage's
TOPO_TIMES = (0.1, 0.2, 0.3, 0.4)  # seconds after image onset: the topographies' default times


def _nilearn():
    try:
        from nilearn import datasets, plotting
    except ImportError:
        raise MissingDependencyError("surface figures need nilearn: pip install 'ned-ray[plot]'") from None
    return datasets, plotting


def _surface(out: Output, models: list[str], path: Path, what: str) -> None:
    """Per subject a row: each hemisphere's mean response, lateral and medial views, on fsaverage5."""
    from .output.exports import surface_maps

    plt = _pyplot()
    datasets, plotting = _nilearn()
    mesh = datasets.load_fsaverage("fsaverage5")["inflated"]
    ids = [ModelId.parse(m) for m in models]
    subjects = sorted({m.subject for m in ids})
    maps = {}
    for mid in ids:
        hemisphere, _, full = surface_maps(out, str(mid))
        if full.shape[1] < FSAVERAGE5:
            raise OutputError(f"{mid} has {full.shape[1]} vertices: not an fsaverage hemisphere (fsaverage5 needs "
                              f"the first {FSAVERAGE5})")
        maps[(mid.subject, hemisphere)] = np.nanmean(full[:, :FSAVERAGE5], axis=0)
    finite = np.concatenate([v[np.isfinite(v)] for v in maps.values()])
    vmax = float(np.percentile(np.abs(finite), 99)) if finite.size else 1.0
    views = [("lh", "lateral"), ("lh", "medial"), ("rh", "lateral"), ("rh", "medial")]
    fig, axes = plt.subplots(len(subjects), 4, figsize=(FIGSIZE[0], max(3.0, 2.6 * len(subjects))), dpi=DPI,
                             subplot_kw={"projection": "3d"}, squeeze=False)
    for row, subject in enumerate(subjects):
        for col, (hemisphere, view) in enumerate(views):
            ax = axes[row, col]
            if (subject, hemisphere) not in maps:
                ax.axis("off")
                continue
            plotting.plot_surf_stat_map(mesh, maps[(subject, hemisphere)], hemi={"lh": "left", "rh": "right"}[hemisphere],
                                        view=view, axes=ax, figure=fig, colorbar=False, vmax=vmax, cmap="RdBu_r")
            ax.set_title(f"sub-{subject:02d} {hemisphere} {view}" if isinstance(subject, int) else f"{subject}", fontsize=9)
    mappable = plt.cm.ScalarMappable(cmap="RdBu_r", norm=plt.Normalize(-vmax, vmax))
    fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.6, label="mean response over images")
    fig.suptitle(f"{what}: mean response over {out.manifest['images']['ok']} images on the inflated surface "
                 f"(fsaverage5: fsaverage's first {FSAVERAGE5} vertices; grey: not selected)\n{_label(out.uri)}", fontsize=10)
    _save(plt, fig, path)


def _sensor_positions(mne, names: list[str]) -> np.ndarray:
    """2-D positions of CTF MEG sensors (BERG's names, e.g. MLC11-4408) from MNE's CTF-275 layout."""
    layout = mne.channels.read_layout("CTF-275")
    where = {name.split("-")[0]: i for i, name in enumerate(layout.names)}
    missing = [n for n in names if n.split("-")[0] not in where]
    if missing:
        raise OutputError(f"MEG sensors not in the CTF-275 layout: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    pos = layout.pos[[where[n.split("-")[0]] for n in names]]
    centre = pos[:, :2] + pos[:, 2:] / 2
    return (centre - centre.mean(0)) / np.ptp(centre, axis=0).max() * 0.19  # a head of radius ~0.1


def _topomaps(out: Output, models: list[str], path: Path, what: str, times: tuple[float, ...]) -> None:
    """Per model a row: the mean response's topography at each of ``times`` (nearest time point)."""
    plt = _pyplot()
    try:
        import mne
    except ImportError:
        raise MissingDependencyError("topography figures need mne: pip install 'ned-ray[plot]'") from None
    fig, axes = plt.subplots(len(models), len(times), figsize=(FIGSIZE[0], max(3.0, 2.8 * len(models))), dpi=DPI,
                             squeeze=False)
    for row, mid in enumerate(models):
        evoked = out.to_mne(mid, mean=True)
        data = evoked.data
        if "mag" in evoked.get_channel_types():
            pos, sphere = _sensor_positions(mne, evoked.ch_names), 0.1
        else:
            pos, sphere = evoked.info, None
        vmax = float(np.percentile(np.abs(data), 99)) or 1.0
        for col, t in enumerate(times):
            ax = axes[row, col]
            i = int(np.argmin(np.abs(evoked.times - t)))
            image, _ = mne.viz.plot_topomap(data[:, i], pos, axes=ax, show=False, sphere=sphere, cmap="RdBu_r",
                                            vlim=(-vmax, vmax), contours=4)
            ax.set_title(f"{ModelId.parse(mid).label}\n{evoked.times[i] * 1000:.0f} ms", fontsize=8)
        fig.colorbar(image, ax=axes[row].tolist(), shrink=0.7, label="mean response")
    fig.suptitle(f"{what}: topographies of the mean response over {out.manifest['images']['ok']} images\n{out.uri}",
                 fontsize=10)
    _save(plt, fig, path)


def plot_output(out: Output, folder: str | os.PathLike, models: list[str] | None = None, seed: int = 0,
                times: tuple[float, ...] = TOPO_TIMES) -> list[Path]:
    """Write the figures of ``out`` (restricted to ``models``) into ``folder``; returns the PNG paths.
    ``times``: the topographies' times in seconds."""
    chosen = models or out.models
    unknown = [m for m in chosen if m not in out.models]
    if unknown:
        raise ModelNotInOutputError(f"{out.uri} has no model {', '.join(unknown)}; it has: {', '.join(out.models)}")
    if out.manifest["images"]["ok"] == 0:
        raise OutputError(f"{out.uri} has no successfully encoded image to plot")
    folder = check_folder(folder)
    paths = []
    rng = np.random.default_rng(seed)
    for family in FAMILIES.values():  # one or two figures per family, in registry order
        members = [m for m in chosen if ModelId.parse(m).family == family]
        for plot in (p for p in (family.plot, family.maps) if p is not None and members):
            path = folder / f"{plot.file}.png"
            if plot.kind == "timecourses":
                _timecourses(out, members, path, plot.caption)
            elif plot.kind == "surface":
                _surface(out, members, path, plot.caption)
            elif plot.kind == "topomaps":
                _topomaps(out, members, path, plot.caption, times)
            else:
                _distributions(out, members, path, plot.caption, rng)
            paths.append(path)
    _heatmap(out, chosen, folder / "heatmap.png")
    paths.append(folder / "heatmap.png")
    return paths
