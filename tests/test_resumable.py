"""ResumableDataLoader: a loader restored from its state yields what the original would have."""

import pytest
import torch
from torch.utils.data import TensorDataset

from kiwi_pipe_optim.integrations.resumable import ResumableDataLoader

DATA = TensorDataset(torch.arange(23.0))


def loader():
    return ResumableDataLoader(DATA, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))


def epochs(dl, n):
    return [[b[0].tolist() for b in dl] for _ in range(n)]


@pytest.mark.parametrize("epoch, consumed", [(0, 0), (0, 2), (1, 5), (2, 6)])
def test_restored_loader_continues_the_epoch_and_the_ones_after(epoch, consumed):
    expected = epochs(loader(), 4)
    original = loader()
    for _ in range(epoch):
        list(original)
    iterator = iter(original)
    seen = [next(iterator)[0].tolist() for _ in range(consumed)]
    assert seen == expected[epoch][:consumed]
    original.mark_consumed(consumed)
    state = original.state_dict()

    restored = loader()
    restored.load_state_dict(state)
    rest = epochs(restored, 4 - epoch)
    if consumed == len(original):  # a finished epoch resumes with the next one
        assert rest[:3 - epoch] == expected[epoch + 1:]
    else:
        assert [seen + rest[0]] + rest[1:] == expected[epoch:]


def test_each_epoch_is_shuffled_differently_and_state_is_plain_tensors():
    first, second = epochs(loader(), 2)
    assert first != second and sorted(sum(first, [])) == list(range(23))
    dl = loader()
    iter(dl)
    dl.mark_consumed(1)
    state = dl.state_dict()
    assert set(state) == {"generator", "skip"} and isinstance(state["generator"], torch.Tensor)
    assert state["skip"] == 1
