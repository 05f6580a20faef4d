"""MaskSubTrainer under torchrun (2 processes, gloo, CPU): DDP around MaskSub, one gradient all-reduce per optimizer
step, the step of one process on the ranks' micro-batches; evaluation and saving (hf_ddp_worker.py)."""

from __future__ import annotations

import os

import pytest
import torch
from _torchrun import HERE, torchrun

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer's

from hf_ddp_worker import ACCUM, EVAL, OPTIONS, STEPS, model_and_data  # noqa: E402

from masksub_kernels.training import MaskSub  # noqa: E402

WORLD = 2
FAMILIES = ("vit", "swin", "mlm")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Both families, trained by one torchrun of 2 processes: {(family, rank): what the rank wrote}."""
    out_dir = tmp_path_factory.mktemp("hf_ddp")
    result = torchrun(os.path.join(HERE, "hf_ddp_worker.py"), str(out_dir), *FAMILIES, world=WORLD)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    got = {(f, r): torch.load(out_dir / f"{f}-{r}.pt", weights_only=False) for f in FAMILIES for r in range(WORLD)}
    got["out"] = out_dir
    return got


def _call(family: str, ms: MaskSub, call) -> dict:
    batch, seed = call
    return ms(batch, seed=seed) if family == "mlm" else ms(*batch, seed=seed)


def _one_process(family: str, calls: list[list]) -> tuple[torch.nn.Module, MaskSub]:
    """One process, SGD at lr 0.1 as the Trainer's: per optimizer step, the mean of MaskSub's loss over every rank's
    micro-batches (each with that rank's mask seed), as DDP averages the ranks' gradients of their means over
    their micro-batches; one backward."""
    model, _ = model_and_data(family, 1, seed=0)
    torch.manual_seed(0)  # (the Trainer's set_seed(args.seed) before it builds MaskSub: a Swin's mask token's draw)
    ms = MaskSub(model, **OPTIONS[family]).train()
    for step in range(STEPS):
        model.zero_grad(set_to_none=True)
        loss = sum(_call(family, ms, calls[r][step * ACCUM + k])["loss"] for r in range(WORLD) for k in range(ACCUM))
        (loss / (WORLD * ACCUM)).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
    return model, ms


def _rows(family: str, call) -> list[tuple]:
    """A micro-batch's samples, as hashable rows."""
    batch = call[0]["input_ids"] if family == "mlm" else call[0][0].flatten(1)
    return [tuple(row.tolist()) for row in batch]


# Kills hf_trainer.py the world_size refusal (the torchrun fails); _wrap_model's override dropped (the Trainer's DDP
# wraps the model, which MaskSub's branches run past: each rank steps on its own gradient, the ranks' weights part);
# compute_loss calling self.masksub instead of the DDP module (likewise); the DDP module's no_sync made a no-op (2
# all-reduces per step, weights unchanged); _mask_seed without the rank (the ranks' seeds equal)
@pytest.mark.parametrize("family", FAMILIES)
def test_ranks_train_as_one_process_on_their_micro_batches(runs, family):
    ranks = [runs[(family, r)] for r in range(WORLD)]
    assert all(run["wrapped"] == "DistributedDataParallel" for run in ranks)
    # one all-reduce per optimizer step (one bucket), none inside the accumulation window
    assert all(run["allreduces"] == [1] * STEPS for run in ranks)
    params = [run["params"] for run in ranks]
    assert all(torch.equal(params[1][n], p) for n, p in params[0].items())
    calls = [run["calls"] for run in ranks]
    assert all(len(c) == STEPS * ACCUM for c in calls)
    # each rank a shard of the data (all of it seen once), its own mask seed at every micro-step
    rows = [row for c in calls for call in c for row in _rows(family, call)]
    assert len(set(rows)) == len(rows) == len(model_and_data(family, STEPS * ACCUM * 2 * WORLD, 0)[1])
    assert all(calls[0][i][1] != calls[1][i][1] for i in range(STEPS * ACCUM))
    model, _ = _one_process(family, calls)
    for name, p in model.named_parameters():
        torch.testing.assert_close(params[0][name], p.detach(), rtol=1e-9, atol=1e-12, msg=name)
    assert any(not torch.equal(p, q) for p, q in zip(params[0].values(), model_and_data(family, 1, 0)[0].parameters()))


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluation_logs_and_saving_under_two_processes(runs, family):
    ranks = [runs[(family, r)] for r in range(WORLD)]
    model, ms = _one_process(family, [run["calls"] for run in ranks])
    ms.eval()
    _, data = model_and_data(family, EVAL, seed=1)
    with torch.no_grad():  # the Trainer's eval_loss: the mean of its batches' (2 rows each) losses, gathered
        losses = []
        for i in range(0, EVAL, 2):
            batch = {key: torch.stack([row[key] for row in data[i : i + 2]]) for key in data[0]}
            out = ms(batch) if family == "mlm" else ms(batch["pixel_values"], batch["labels"])
            losses.append(float(out["loss"]))
    for run in ranks:  # every rank evaluates, on the gathered whole
        assert run["metrics"]["eval_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    # the logged terms are the ranks' mean, the same on both; the loss their weighted sum
    logs = [[h for h in run["log"] if "loss" in h] for run in ranks]
    assert len(logs[0]) == STEPS and logs[0] == logs[1]
    for log in logs[0]:
        assert log["loss"] == pytest.approx(0.5 * log["loss_main"] + 0.5 * log["loss_sub"], rel=1e-6)
    # rank 0 saved the plain Hugging Face model, as trained
    saved = runs["out"] / family / "saved"
    loaded = type(model).from_pretrained(str(saved), dtype=torch.float64)
    for name, p in loaded.named_parameters():
        assert torch.equal(p, ranks[0]["params"][name]), name
    # a run resumed from the checkpoint of step 1 (each rank's generator state too: its mask seeds) is the whole one
    for run in ranks:
        assert all(torch.equal(run["resumed"][n], p) for n, p in ranks[0]["params"].items())
