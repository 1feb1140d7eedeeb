"""Host reads in the training step (issue: benchmarks, "no host syncs in the step").

On a GPU every `int(t)`, `bool(t)`, `float(t)`, `t.item()`, `t.tolist()` or `t.numpy()` of a device tensor blocks
until the device has caught up. The CPU cannot see a sync, but it can count those calls: `count_host_reads` patches
them on `torch.Tensor` for the duration. The methods benchmarked against lightly read nothing in a steady-state step
(their step counters, queue pointers and flags go through `SSLPreTrainedModel.host_int`, a Python mirror of the
buffer); the shared masking path reads once per function (the number of masked patches fixes tensor sizes).
"""

import collections
import contextlib
import sys

import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.masking import mask_to_index, resolve_patch_mask
from test_battery import _batch, _model

READS = ("item", "__int__", "__float__", "__bool__", "__index__", "tolist", "numpy")


@contextlib.contextmanager
def count_host_reads():
    """Counter of host reads of tensors, keyed by (kind, file, line) of the caller."""
    calls = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            frame = sys._getframe(1)
            calls[(name, frame.f_code.co_filename.rsplit("/", 1)[-1], frame.f_lineno)] += 1
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def test_counter_sees_reads():
    t = torch.tensor(3)
    with count_host_reads() as calls:
        int(t), bool(t), t.item(), t.tolist()
    assert sum(calls.values()) == 4


@pytest.mark.parametrize("name", ["swav", "mochi", "gsimclr"])
def test_steady_state_step_reads_nothing_from_the_device(name):
    """Forward, backward and `on_step_end` after a few steps (queues and banks filled, MoCHi's mixing and G-SimCLR's
    pseudo-labels active). Step 5 is not one of G-SimCLR's periodic k-means refreshes (every 2 steps in the tiny
    config), which read the bank on the host by design."""
    model = _model(name).train()
    batch = _batch(model.config, n=4)
    for step in range(1, 5):
        model(**batch).loss.backward()
        model.on_step_end(step, 10)
    with count_host_reads() as calls:
        out = model(**batch)
        out.loss.backward()
        model.on_step_end(5, 10)
    if name == "mochi":
        assert float(out.metrics["mixing_active"]) == 1.0
    if name == "gsimclr":
        assert float(out.metrics["pseudo_labels_active"]) == 1.0
    assert not calls, dict(calls)


def test_masking_path_reads_once_per_function():
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[:, :12] = True
    with count_host_reads() as calls:
        checked = resolve_patch_mask(mask, 4, 16, generate=None)
        visible, masked = mask_to_index(checked)
    assert sum(calls.values()) == 2, dict(calls)
    assert visible.shape == (4, 4) and masked.shape == (4, 12)
    uneven = mask.clone()
    uneven[0, 12] = True
    with pytest.raises(ValueError, match="same number"):
        mask_to_index(uneven)


def test_host_mirror_follows_every_write_to_the_buffer(tmp_path):
    """`host_int` caches a buffer's value; writes through `set_host_int` / `add_host_int` update buffer and mirror
    without a read, and any other in-place write (a loaded state dict on resume, re-initialisation) is noticed (the
    tensor's version counter moves) and read once."""
    model = _model("mochi")
    with count_host_reads() as calls:
        assert model.host_int("queue_ptr") == 0
        assert model.host_int("queue_ptr") == 0
    assert sum(calls.values()) == 1  # first use reads once, the second is the mirror
    with count_host_reads() as calls:
        model.set_host_int("queue_ptr", 7)
        assert model.add_host_int("queue_ptr", 2) == 9
        assert model.host_int("queue_ptr") == 9
    assert not calls and int(model.queue_ptr) == 9
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["queue_ptr"].fill_(5)
    model.load_state_dict(state)
    assert model.host_int("queue_ptr") == 5
    with torch.no_grad():
        model.queue_ptr.zero_()
    assert model.host_int("queue_ptr") == 0
    model.save_pretrained(tmp_path)
    model.set_host_int("queue_ptr", 3)
    reloaded = type(model).from_pretrained(tmp_path)
    assert reloaded.host_int("queue_ptr") == 0 and model.host_int("queue_ptr") == 3
