"""``--shard INDEX/COUNT``: a deterministic, disjoint split of the inputs among processes."""

from __future__ import annotations

import json
import random
from pathlib import Path, PurePath

import pytest
import torch

from lrp_cli.images import InputItem
from lrp_cli.pipeline.prepare import resolve_device
from lrp_cli.pipeline.sharding import Shard, ShardError, parse_shard, records_file, resolve_shard

from .test_cli import records, run, tiny_model, tiny_weights, write_npy

__all__ = ["tiny_weights"]  # a fixture used here


def _items(n: int) -> list[InputItem]:
    return [InputItem(Path(f"/data/d{i % 7}/img{i}.jpg"), PurePath(f"d{i % 7}/img{i}.jpg"))
            for i in range(n)]  # fmt: skip


def test_shards_are_disjoint_cover_the_inputs_and_ignore_their_order():
    items = _items(300)
    parts = [Shard(i, 3).select(items) for i in range(3)]
    names = [{item.relative for item in part} for part in parts]
    assert set.union(*names) == {item.relative for item in items}
    assert sum(len(part) for part in parts) == len(items)  # disjoint
    assert all(70 <= len(part) <= 130 for part in parts), [len(p) for p in parts]
    shuffled = random.Random(0).sample(items, len(items))
    again = [{item.relative for item in Shard(i, 3).select(shuffled)} for i in range(3)]
    assert again == names
    assert Shard(0, 1).select(items) == items
    # the split is a fixed function of the path: pinned, so it never changes between versions
    assert [Shard(i, 4).holds("d0/img0.jpg") for i in range(4)].count(True) == 1
    assert parse_shard(" 2 / 4 ") == Shard(2, 4)


@pytest.mark.parametrize("text", ["3/3", "-1/3", "1/0", "a/b", "1", "1/2/3"])
def test_bad_shards_are_refused(text):
    with pytest.raises(ShardError, match="--shard"):
        parse_shard(text)


def test_launcher_variables_give_the_default_and_the_flag_wins():
    torchrun = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}
    assert resolve_shard(None, torchrun) == Shard(2, 4, "torchrun's RANK/WORLD_SIZE")
    slurm = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}
    assert resolve_shard(None, slurm).index == 2 and resolve_shard(None, slurm).count == 3
    assert resolve_shard("0/2", torchrun) == Shard(0, 2)
    assert resolve_shard(None, {}) is None
    with pytest.raises(ShardError, match="RANK/WORLD_SIZE"):
        resolve_shard(None, {"RANK": "4", "WORLD_SIZE": "4"})


def test_records_go_to_one_file_per_shard_in_a_folder(tmp_path):
    assert records_file("-", Shard(0, 2)) == "-"
    assert records_file(str(tmp_path / "r.jsonl"), Shard(0, 2)) == str(tmp_path / "r.jsonl")
    folder = f"{tmp_path}/records/"
    assert records_file(folder, Shard(1, 3)) == str(tmp_path / "records" / "records-1-of-3.jsonl")
    assert records_file(str(tmp_path), None) == str(tmp_path / "records.jsonl")


def test_under_torchrun_each_process_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda") == torch.device("cuda")


def _comparable(record: dict, out: Path) -> dict:
    """The record without its timing, output paths relative to the output folder."""
    found = {k: v for k, v in record.items() if k != "seconds"}
    outputs = record.get("outputs") or {}
    found["outputs"] = {k: v and str(Path(v).relative_to(out)) for k, v in outputs.items()}
    return found


def test_three_shards_together_are_one_run(tmp_path, tiny_weights):
    """Same outputs bit for bit and the same records (timing aside), no input done twice; the
    launcher's variables select the same part as the flag. Batches of one: float32 results of
    the same input batched with different neighbours may differ in the last bit (measured up to
    5e-10 on maps of 1e-3 with batches of 3: the convolution kernels depend on the batch)."""
    inputs = [write_npy(tmp_path / "in" / f"sub{i % 2}" / f"x{i}.npy", seed=i) for i in range(8)]
    missing = tmp_path / "in" / "missing.npy"
    options = [*tiny_model(tiny_weights), "--batch-size", "1", "--device", "cpu"]
    whole = run(["explain", tmp_path / "in", missing, "-o", tmp_path / "whole", *options,
                 "--jsonl", tmp_path / "whole.jsonl"])  # fmt: skip
    assert whole.exit_code == 1, whole.stderr  # the missing input
    sizes = []
    for index in range(3):
        shard = ["--shard", f"{index}/3"] if index != 1 else []
        env = {"RANK": "1", "WORLD_SIZE": "3"} if index == 1 else None  # torchrun's way
        part = run(["explain", tmp_path / "in", missing, "-o", tmp_path / "shards", *options,
                    *shard, "--jsonl", f"{tmp_path}/records/"], env=env)  # fmt: skip
        assert part.exit_code in (0, 1), part.stderr
        assert f"shard {index}/3" in part.stderr
        sizes.append(
            len(records((tmp_path / "records" / f"records-{index}-of-3.jsonl").read_text()))
        )
    ours = sorted(p.relative_to(tmp_path / "shards") for p in (tmp_path / "shards").rglob("*.*"))
    theirs = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*.*"))
    assert ours == theirs and len(ours) == 2 * len(inputs)
    for name in ours:
        assert (tmp_path / "shards" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    found = [
        _comparable(r, tmp_path / "shards")
        for index in range(3)
        for r in records((tmp_path / "records" / f"records-{index}-of-3.jsonl").read_text())
    ]
    expected = [
        _comparable(r, tmp_path / "whole") for r in records((tmp_path / "whole.jsonl").read_text())
    ]
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(found, key=key) == sorted(expected, key=key)
    assert sum(sizes) == len(inputs) + 1 and all(sizes)
