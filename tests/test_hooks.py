"""`converters.hooks.forward_hooks`: the hooks run inside the block and are gone after it, an
exception in the forward included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from converters.hooks import forward_hooks


def test_hooks_run_inside_and_are_removed_after_an_exception():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with forward_hooks([(model[0], lambda m, a, o: seen.append("after"))], before=[(model[0], lambda m, a: seen.append("before"))]):
            model(torch.zeros(1, 2))
            raise RuntimeError("boom")
    assert seen == ["before", "after"]
    model(torch.zeros(1, 2))
    assert seen == ["before", "after"]  # nothing left watching
    assert not model[0]._forward_hooks and not model[0]._forward_pre_hooks


def test_a_failed_registration_removes_the_hooks_already_registered():
    model = nn.Linear(2, 2)
    with pytest.raises(AttributeError):
        with forward_hooks([(model, lambda m, a, o: None), (object(), lambda m, a, o: None)]):
            pass
    assert not model._forward_hooks
