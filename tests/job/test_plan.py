"""Plans for cluster shapes (pure: no Ray, no files), and what --dry-run prints."""

from __future__ import annotations

import json

import pytest

from ned_ray.ids import ROIS, ModelId
from ned_ray.job.cluster import ClusterShape, ClusterSpecError
from ned_ray.job.options import EncodeConfig
from ned_ray.job.plan import DECODE_CPUS, WRITE_CPUS, PlanError, make_plan

MB = 1 << 20
FMRI_ALL = [ModelId("fmri", "nsd", "fwrf", s, r) for s in range(1, 9) for r in ROIS]  # 184 models
EEG_ALL = [ModelId("eeg", "things_eeg_2", "vit_b_32", s) for s in range(1, 11)]
# NED's real sizes, roughly: an fwrf ROI of ~2,000 voxels is ~20 MB; an EEG regression 70 MB; the ViT,
# scaler and 250 PCA components 1.3 GB (see ModelGroup's weights_bytes)
SIZES = {**{m: 20 * MB for m in FMRI_ALL}, **{m: 70 * MB for m in EEG_ALL}}
SHARED = 1300 * MB


def plan(spec: str, models=FMRI_ALL + EEG_ALL, shards: int | None = None, **options):
    config = EncodeConfig("ned", "images", "all", "out", **options)
    return make_plan(config, models, ClusterShape.parse(spec), SIZES, SHARED, shards)


def check_invariants(p, cluster: ClusterShape) -> None:
    """What every plan must satisfy: each model once, enough CPUs for the feeders, GPUs not oversubscribed."""
    models = [m for pool in p.pools for m in pool.models]
    assert len(models) == len(set(models))
    assert all(1 <= pool.min_actors <= pool.initial_actors <= pool.max_actors for pool in p.pools)
    peak_cpus = sum(pool.max_actors * pool.cpus_per_actor for pool in p.pools)
    assert peak_cpus + DECODE_CPUS + WRITE_CPUS <= cluster.cpus_max + 1e-9  # decode and write always fit
    if p.device == "cuda":
        assert sum(pool.max_actors * pool.gpus_per_actor for pool in p.pools) <= max(cluster.gpus_max, 1) + 1e-9
        assert all(pool.gpus_per_actor > 0 and pool.batch_rows >= 1 for pool in p.pools)
    else:
        assert all(pool.gpus_per_actor == 0 for pool in p.pools)
    # decoded blocks queued in the object store: at least what every actor holds in flight, plus one
    # per actor and what decode tasks produce; never unbounded
    block = p.shard_size * sum(3 * 227 * 227 if k == "fwrf" else 3 * 224 * 224 for k in {k for q in p.pools for k in q.inputs})
    in_flight = sum(q.max_actors * q.max_tasks_in_flight for q in p.pools)
    assert (in_flight + 1) * block <= p.queued_bytes <= (in_flight + sum(q.max_actors for q in p.pools)
                                                        + 2 * p.decode_concurrency) * block
    # only the columns a pool reads travel to it: each input is dropped by its last reader
    for i, pool in enumerate(p.pools):
        later = {k for q in p.pools[i + 1:] for k in q.inputs}
        assert pool.drop == [k for k in pool.inputs if k not in later]


def test_no_gpu_laptop():
    p = plan("2cpu")
    check_invariants(p, ClusterShape.parse("2cpu"))
    assert p.device == "cpu" and "no GPU" in p.device_reason and not p.wait_for_gpus
    assert [(q.name, len(q.models), q.actors) for q in p.pools] == [("fmri", 184, "1"), ("eeg", 10, "1")]
    assert p.pools[0].cpus_per_actor == pytest.approx((2 - DECODE_CPUS - WRITE_CPUS) / 2)
    assert p.pools[0].drop == ["fwrf"] and p.pools[1].drop == ["vit"]


def test_one_gpu_groups_share_it():
    p = plan("8cpu+1gpu:24GB")
    check_invariants(p, ClusterShape.parse("8cpu+1gpu:24GB"))
    assert p.device == "cuda" and [q.gpus_per_actor for q in p.pools] == [0.5, 0.5]
    assert [q.max_actors for q in p.pools] == [1, 1] and all(q.memory_share == 0.5 for q in p.pools)
    assert all(q.concurrent_calls == 2 for q in p.pools)  # one block computes while another is written


def test_eight_gpus_on_two_nodes():
    cluster = ClusterShape.parse("2x16cpu+4gpu:24GB")
    p = plan("2x16cpu+4gpu:24GB")
    check_invariants(p, cluster)
    fmri, eeg = p.pools
    assert (fmri.gpus_per_actor, eeg.gpus_per_actor) == (1.0, 1.0)
    assert fmri.max_actors + eeg.max_actors == 8 and fmri.max_actors == 7  # spare GPUs go to the heavy group
    assert fmri.cpus_per_actor <= 1.0 and fmri.cpu_threads == 4


def test_autoscaling_from_zero_gpu_nodes():
    cluster = ClusterShape.parse("16cpu,0-8x8cpu+1gpu:24GB")
    assert (cluster.gpus_now, cluster.gpus_max) == (0, 8) and cluster.autoscaling
    p = plan("16cpu,0-8x8cpu+1gpu:24GB", shards=100)
    check_invariants(p, cluster)
    assert p.device == "cuda" and p.wait_for_gpus and "autoscaler can launch 8" in p.device_reason
    assert [q.initial_actors for q in p.pools] == [q.max_actors for q in p.pools]  # ask for every GPU at once
    assert plan("16cpu,0-8x8cpu+1gpu:24GB", shards=2).pools[0].initial_actors == 2  # a small job does not
    assert plan("16cpu,0-8x8cpu+1gpu:24GB", device="cpu").device == "cpu"


def test_fractional_gpus():
    p = plan("2x8cpu+1gpu:24GB", gpus_per_actor=0.25)
    check_invariants(p, ClusterShape.parse("2x8cpu+1gpu:24GB"))
    assert all(q.gpus_per_actor == 0.25 and q.memory_share == 0.25 for q in p.pools)
    assert sum(q.max_actors for q in p.pools) == 8  # 2 GPUs / 0.25
    with pytest.raises(PlanError, match="smaller --gpus-per-actor"):
        plan("8cpu+1gpu", gpus_per_actor=1.0)  # two groups cannot each have a whole single GPU


def test_eeg_only():
    p = plan("2x16cpu+4gpu", models=EEG_ALL)
    check_invariants(p, ClusterShape.parse("2x16cpu+4gpu"))
    assert [(q.name, q.inputs, q.max_actors, q.gpus_per_actor) for q in p.pools] == [("eeg", ["vit"], 8, 1.0)]
    assert any("share one vit_b_32 pass" in n for n in p.notes)


def test_all_fmri_and_eeg_models_and_memory_splits():
    p = plan("16cpu,0-8x8cpu+1gpu:24GB")
    assert sorted(m for q in p.pools for m in q.models) == sorted(map(str, FMRI_ALL + EEG_ALL))
    # on small GPUs the fMRI models no longer fit one actor: split by subject
    p = plan("4x8cpu+2gpu:6GB")
    check_invariants(p, ClusterShape.parse("4x8cpu+2gpu:6GB"))
    fmri = [q for q in p.pools if q.name.startswith("fmri")]
    assert len(fmri) > 1 and all(q.weights_bytes <= 0.5 * q.memory_share * 6 * 1024 * MB for q in p.pools)
    assert all(len({ModelId.parse(m).subject for m in q.models}) * 23 == len(q.models) for q in fmri)  # whole subjects
    assert any("split" in n and "by subject" in n for n in p.notes)
    with pytest.raises(PlanError, match=r"more than 1 GPU\(s\) of 4.0 GB hold"):
        plan("8cpu+1gpu:4GB")  # 4 GB of weights on one 4 GB GPU


def test_real_size_berg_eeg_subjects_fit_a_24gb_gpu_and_split_over_two_smaller_ones():
    """10 BERG EEG subjects (1.93 GB files) and one of each other BERG family, with the ViT."""
    berg = [*EEG_ALL, ModelId("fmri", "nsd_fsaverage", "vit_b_32", 1, "lh"), ModelId("fmri", "nsd_fsaverage", "vit_b_32", 1, "rh"),
            ModelId("meg", "things_meg_1", "vit_b_32", 1, "full"), ModelId("utah_array", "tvsd", "vit_b_32", "F")]
    sizes = {**{m: 1930 * MB for m in EEG_ALL}, **{m: 40 * MB for m in berg[10:]}}
    config = EncodeConfig("berg", "images", "all", "out")
    one = make_plan(config, berg, ClusterShape.parse("8cpu+1gpu:24GB"), sizes, 350 * MB)
    assert [p.name for p in one.pools] == ["vit"] and len(one.pools[0].models) == 14  # one ViT pass for all
    two = make_plan(config, berg, ClusterShape.parse("8cpu+2gpu:16GB"), sizes, 350 * MB)
    check_invariants(two, ClusterShape.parse("8cpu+2gpu:16GB"))
    assert len(two.pools) == 2 and sorted(m for p in two.pools for m in p.models) == sorted(map(str, berg))
    lh_rh = [p for p in two.pools if "fmri/nsd_fsaverage/vit_b_32/sub-01/lh" in p.models][0].models
    assert "fmri/nsd_fsaverage/vit_b_32/sub-01/rh" in lh_rh  # one file's models stay together
    assert any("split in 2 groups by weight file" in n for n in two.notes)
    with pytest.raises(PlanError, match="more than 1 GPU"):
        make_plan(config, berg, ClusterShape.parse("8cpu+1gpu:16GB"), sizes, 350 * MB)


def test_user_choices_win():
    p = plan("2x16cpu+4gpu", actors_per_group=3, fmri_models_per_actor=46)
    check_invariants(p, ClusterShape.parse("2x16cpu+4gpu"))
    assert [q.name for q in p.pools] == ["fmri-1", "fmri-2", "fmri-3", "fmri-4", "eeg"]
    assert all((q.min_actors, q.max_actors) == (3, 3) and q.gpus_per_actor == 0.5 for q in p.pools)  # 15 on 8 GPUs
    with pytest.raises(PlanError, match="15 actors"):
        plan("2x16cpu+4gpu", actors_per_group=3, fmri_models_per_actor=46, gpus_per_actor=1)
    assert plan("2x16cpu+4gpu", cpu_threads=3).pools[0].cpu_threads == 3


def test_too_few_cpus_is_a_plan_error():
    with pytest.raises(PlanError, match="1 CPUs; the encode job needs more than 1.25"):
        plan("1cpu")


@pytest.mark.parametrize("bad", ["", "16", "2x", "4cpu+gpu", "3-1x4cpu", "16cpu,foo"])
def test_bad_cluster_descriptions(bad):
    with pytest.raises(ClusterSpecError):
        ClusterShape.parse(bad)


def test_cluster_launcher_yaml(tmp_path):
    from pathlib import Path

    shape = ClusterShape.parse(str(Path(__file__).resolve().parents[2] / "cluster.yaml"))
    assert (shape.cpus_now, shape.gpus_now, shape.gpus_max, shape.gpu_memory()) == (16, 0, 8, 24 << 30)
    (tmp_path / "c.yaml").write_text("available_node_types:\n  gpu: {resources: {}, max_workers: 2}\nhead_node_type: gpu\n")
    with pytest.raises(ClusterSpecError, match="lists no resources"):
        ClusterShape.parse(str(tmp_path / "c.yaml"))


def test_dry_run_prints_the_plan(ray_cluster, demo_dir, tmp_path, capsys):
    from ned_ray.cli import main

    (tmp_path / "images").mkdir()
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / "images" / f"{i}.png")
    args = ["encode", "--ned-dir", str(demo_dir), "--images", str(tmp_path / "images"), "--models", "all",
            "--output", str(tmp_path / "out"), "--shard-size", "2", "--dry-run"]
    assert main([*args, "--cluster", "16cpu,0-8x8cpu+1gpu:24GB"]) == 0
    text = capsys.readouterr().out
    assert "9 models x 5 images in 3 shard(s): 5 to encode" in text
    assert "device: cuda (auto: the autoscaler can launch 8 GPU(s))" in text and "fmri" in text and "eeg" in text
    assert main([*args, "--json"]) == 0  # the live (CPU) cluster
    info = json.loads(capsys.readouterr().out)
    assert info["plan"]["device"] == "cpu" and info["plan"]["cluster"]["now"]["cpus"] == 2
    assert [p["name"] for p in info["plan"]["pools"]] == ["fmri", "eeg"]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_alexnet_and_vit_models_share_a_pool_with_one_pass_and_the_weights_of_each_backbone():
    """BERG's AlexNet EEG subjects (0.9 GB files) beside ViT-B/32 models: one pool, each backbone's
    weights counted once (ViT 350 MB, AlexNet 244 MB), one pass per backbone."""
    alexnet = [ModelId("eeg", "things_eeg_2", "alexnet", s) for s in range(1, 5)]
    untrained = [ModelId("fmri", "nsd_fsaverage", "alexnet_untrained", 1, h) for h in ("lh", "rh")]
    vit = [ModelId("meg", "things_meg_1", "vit_b_32", 1, "full")]
    models = alexnet + untrained + vit
    sizes = {**{m: 902 * MB for m in alexnet}, **{m: 11 * MB for m in untrained}, vit[0]: 40 * MB}
    shared = {"vit_b_32": 350 * MB, "alexnet": 244 * MB, "alexnet_untrained": 244 * MB}
    config = EncodeConfig("berg", "images", "all", "out")
    p = make_plan(config, models, ClusterShape.parse("8cpu+1gpu:24GB"), sizes, shared)
    assert len(p.pools) == 1 and len(p.pools[0].models) == 7
    assert p.pools[0].weights_bytes == sum(sizes.values()) + sum(shared.values())  # each backbone once
    assert any("4 alexnet models share one alexnet pass" in n for n in p.notes)
    assert any("2 alexnet_untrained models share one alexnet_untrained pass" in n for n in p.notes)
    only = make_plan(config, alexnet, ClusterShape.parse("8cpu+1gpu:24GB"), sizes, shared)
    assert only.pools[0].name == "alexnet" and only.pools[0].weights_bytes == 4 * 902 * MB + 244 * MB
