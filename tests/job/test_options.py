"""The encode options (job/options.py): defined once, in two halves, with flags generated from them."""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, fields

import pytest

from ned_ray.errors import ConfigError, SelectionError
from ned_ray.job.options import JOB, RUN, EncodeConfig, add_encode_arguments, config_from_args

REQUIRED = ["--ned-dir", "ned", "--images", "imgs", "--models", "all", "--output", "out"]


def _parse(*argv: str) -> EncodeConfig:
    parser = argparse.ArgumentParser()
    add_encode_arguments(parser)
    return config_from_args(parser.parse_args([*REQUIRED, *argv]))


def test_the_flags_defaults_are_the_dataclass_defaults():
    assert _parse() == EncodeConfig("ned", "imgs", "all", "out")
    parser = argparse.ArgumentParser()
    add_encode_arguments(parser)
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in fields(EncodeConfig)}  # one flag per option, none hand-written
    assert all(flags[f.name].help for f in fields(EncodeConfig) if f.name != "device")
    assert [f.name for f in fields(EncodeConfig) if f.default is MISSING and f.default_factory is MISSING] == \
        ["ned_dir", "images", "models", "output"]


def test_flags_are_parsed_to_the_options_types():
    config = _parse("--format", "parquet,npy", "--shard-size", "64", "--min-ncsnr", "0.2", "--gpus-per-actor", "0.5",
                    "--overwrite", "--selection", '{"meg/*": {"region": ["Occipital"]}}',
                    "--storage-options", '{"anon": true}', "--device", "cpu")
    assert config.formats == ("parquet", "npy") and config.shard_size == 64 and config.min_ncsnr == 0.2
    assert config.gpus_per_actor == 0.5 and config.overwrite and config.device == "cpu"
    assert config.berg_selection == {"meg/*": {"region": ["Occipital"]}} and config.storage_options == {"anon": True}


def test_a_selection_file(tmp_path):
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"fmri/nsd_fsaverage/*": {"roi": "V1v"}}))
    assert _parse("--selection", str(path)).berg_selection == {"fmri/nsd_fsaverage/*": {"roi": "V1v"}}


@pytest.mark.parametrize("argv, message", [
    (["--storage-options", "{not json"], "--storage-options is not valid JSON"),
    (["--selection", "/nonexistent/sel.json"], "--selection: '/nonexistent/sel.json' is neither inline JSON nor a readable"),
    (["--format", "csv"], "--format must be a comma-separated subset of parquet,npy, got csv"),
    (["--times", "0.3"], "--times must be START:END"),
    (["--lease-ttl", "0"], "--lease-ttl must be positive"),
])
def test_bad_values_are_one_line_errors(argv, message):
    with pytest.raises((ConfigError, SelectionError), match=message):
        _parse(*argv)


def test_the_identity_is_the_job_half():
    config = EncodeConfig("ned", "imgs", "all", "out", device="cpu", overwrite=True, channels="O1,Oz")
    job = [f.name for f in fields(EncodeConfig) if f.metadata["part"] == JOB]
    run = [f.name for f in fields(EncodeConfig) if f.metadata["part"] == RUN]
    assert set(job) | set(run) == {f.name for f in fields(EncodeConfig)} and not set(job) & set(run)
    assert sorted(config.identity()) == sorted(job) == sorted(  # what outputs of earlier versions recorded
        ["ned_dir", "images", "models", "non_square", "shard_size", "formats", "max_pixels", "vit_weights",
         "precision", "channels", "times", "min_ncsnr", "berg_selection", "store", "alexnet_weights"])  # + store (issue
    # 21), alexnet_weights (issue 22)
    assert config.identity()["channels"] == "O1,Oz"
    assert EncodeConfig("ned", "imgs", "all", "elsewhere", device="cuda", executor="local").identity() == \
        EncodeConfig("ned", "imgs", "all", "out").identity()  # how a job runs is not what it computes
