"""training.epoch.warm_up: runs the model once per batch shape and leaves no trace."""

from __future__ import annotations

import torch
from torchvision.models import resnet18

from pochitrain.training.epoch import warm_up


def test_warm_up_changes_nothing_the_training_uses() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # a forward in train mode first, so that BN statistics have moved from their start
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(stats["bn1.running_mean"], before["bn1.running_mean"])

    seconds = warm_up(model, [32, 32], [4, 2, 4], "cpu")

    assert seconds > 0
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(after[k], stats[k]) for k in stats)  # weights, BN stats, counters
    assert all(p.grad is None for p in model.parameters())


def test_warm_up_with_loss_and_optimizer_leaves_them_untouched() -> None:
    """With the criterion, the confusion counting and the optimizer: the real optimizer
    keeps no state, the weights and the dropout RNG are those of before."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(resnet18(num_classes=4), torch.nn.Dropout(0.5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    warm_up(model, [32, 32], [3], "cpu", criterion=torch.nn.CrossEntropyLoss(),
            optimizer=optimizer, num_classes=4)

    assert not optimizer.state  # no momentum buffers made
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_batch_shapes_include_the_last_smaller_batch_unless_dropped() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from pochitrain.training.fit import batch_shapes

    data = TensorDataset(torch.zeros(10, 1))
    assert batch_shapes(DataLoader(data, batch_size=4)) == [4, 2]
    assert batch_shapes(DataLoader(data, batch_size=4, drop_last=True)) == [4]
    assert batch_shapes(DataLoader(data, batch_size=5)) == [5]
    assert batch_shapes(DataLoader(data, batch_size=16)) == [10]
