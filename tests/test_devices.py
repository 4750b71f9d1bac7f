"""Devices under torchrun: `--device cuda` is each rank's local GPU, `cuda:N` is refused, and every rank must
see the run folder rank 0 writes to."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from housebox.train.distributed import Runtime, check_shared_folder, pick_device


def test_cuda_under_torchrun_is_each_ranks_local_gpu():
    assert pick_device("cuda", local_rank=3, world_size=8) == torch.device("cuda", 3)
    assert pick_device("cuda", local_rank=0, world_size=1) == torch.device("cuda")  # alone: as given
    assert pick_device("cuda:1", local_rank=0, world_size=1) == torch.device("cuda", 1)
    assert pick_device("cpu", local_rank=5, world_size=8) == torch.device("cpu")


def test_a_fixed_gpu_under_torchrun_is_refused():
    with pytest.raises(ValueError, match=r"cuda:0 under torchrun would put all 4 ranks on one GPU"):
        pick_device("cuda:0", local_rank=2, world_size=4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, folders: list[str], results: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        runtime = Runtime(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        try:
            check_shared_folder(Path(folders[rank]), runtime)
            outcome = "ok"
        except RuntimeError as error:
            outcome = str(error)
        Path(results, f"rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("shared", [True, False])
def test_every_rank_fails_at_once_when_one_cannot_see_the_run_folder(tmp_path, shared):
    folder_0 = tmp_path / "run"
    folder_1 = folder_0 if shared else tmp_path / "elsewhere" / "run"  # rank 1 on a node without the share
    mp.spawn(_worker, args=(_free_port(), [str(folder_0), str(folder_1)], str(tmp_path)), nprocs=2, join=True)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    if shared:
        assert outcomes == ["ok", "ok"]
    else:
        assert all("1 of 2 ranks cannot see the run folder" in o and "shared file system" in o for o in outcomes)


def test_the_demo_samples_and_evaluates_on_the_chosen_device(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import housebox.data.demo_corpus as corpus
    import housebox.data.prepare as prepare
    import housebox.generate.pipeline as pipeline
    import housebox.train.all as train_all
    from housebox.demo import run_demo

    seen = {}

    class Stop(Exception):
        pass

    def load_run(run, device):
        seen["sample"] = device
        raise Stop

    monkeypatch.setattr(corpus, "make_demo_corpus", lambda *a, **k: SimpleNamespace(tracks=[], labels_csv=None))
    monkeypatch.setattr(prepare, "prepare", lambda *a, **k: None)
    monkeypatch.setattr(train_all, "train_all",
                        lambda *a, device, **k: (seen.__setitem__("train", device), SimpleNamespace(interrupted=False))[1])
    monkeypatch.setattr(pipeline, "load_run", load_run)
    with pytest.raises(Stop):
        run_demo(tmp_path, quick=True, device="meta")
    assert seen == {"train": "meta", "sample": torch.device("meta")}
