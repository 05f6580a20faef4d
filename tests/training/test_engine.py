"""training/engine.py: evaluate and train_one_epoch on their edges (helper-171's mutation audit): a model in
eval mode left so, fewer than five classes, empty loaders, the progress bar's interval."""

import pytest
import torch

from masksub_kernels.training.engine import PlainStep, evaluate, train_one_epoch
from masksub_kernels.training.wrapper import supervised_loss


class Fixed(torch.nn.Module):  # its images are its logits
    def forward(self, images):
        return images


def test_evaluate_leaves_an_eval_mode_model_in_eval_mode():  # engine.py:185 model.train(was_training)
    fixed = Fixed().eval()
    evaluate(fixed, [(torch.randn(2, 7), torch.tensor([0, 1]))], device=torch.device("cpu"))
    assert not fixed.training


def test_evaluate_with_fewer_than_five_classes():  # engine.py:178 k = min(5, C)
    logits = torch.tensor([[3.0, 2, 1], [3.0, 2, 1]])
    metrics = evaluate(Fixed(), [(logits, torch.tensor([0, 2]))], device=torch.device("cpu"))
    assert metrics["top1"] == pytest.approx(50.0) and metrics["top5"] == pytest.approx(100.0)


def test_empty_loaders_give_zeros_not_a_division_by_zero():  # engine.py:150 and :187 max(count, 1)
    metrics = evaluate(Fixed(), [], device=torch.device("cpu"))
    assert metrics == {"val_loss": 0.0, "top1": 0.0, "top5": 0.0}
    model = torch.nn.Linear(3, 2)
    stats = train_one_epoch(PlainStep(model, supervised_loss), [], torch.optim.SGD(model.parameters(), lr=0.1),
                            device=torch.device("cpu"))  # fmt: skip
    assert stats.loss == 0.0 and stats.num_updates == 0


def test_progress_bar_shows_the_loss_every_log_interval_steps(monkeypatch):  # engine.py:140 (index + 1) % n
    postfixes = []

    class Bar:
        def __init__(self, **kwargs):
            pass

        def update(self, n):
            pass

        def set_postfix(self, **kwargs):
            postfixes.append(kwargs)

        def close(self):
            pass

    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", Bar)  # what train_one_epoch imports
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    loader = [(torch.randn(2, 3), torch.tensor([0, 1])) for _ in range(4)]
    train_one_epoch(PlainStep(model, supervised_loss), loader, torch.optim.SGD(model.parameters(), lr=0.1),
                    device=torch.device("cpu"), progress=True, log_interval=3)  # fmt: skip
    assert len(postfixes) == 1  # after the 3rd step only
