"""Default DataLoader workers: the machine's cores shared among torchrun's local processes."""
from __future__ import annotations

import pytest

from resnets import devices
from resnets.devices import default_num_workers, resolve_runtime
from resnets.errors import UserError


@pytest.mark.parametrize("cores,local_world_size,expected", [
    (16, None, 16),  # one process: every core, no cap of 8
    (16, "1", 16),
    (16, "8", 2),  # 8 processes × 2 workers = 16 cores, not 8 × 8
    (16, "3", 5),
    (2, "8", 1),  # at least one worker each
    (64, "4", 16),
])
def test_cores_are_divided_among_local_processes(monkeypatch, cores, local_world_size, expected):
    monkeypatch.setattr(devices, "cpu_cores", lambda: cores)
    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    assert default_num_workers() == expected
    assert resolve_runtime("cpu").num_workers == expected


def test_num_workers_flag_overrides_the_default(monkeypatch):
    monkeypatch.setattr(devices, "cpu_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resolve_runtime("cpu", num_workers=5).num_workers == 5
    assert resolve_runtime("cpu", num_workers=0).num_workers == 0


def test_cli_num_workers_flag_is_parsed_for_train_and_eval():
    from resnets.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "--num-workers", "3"]).num_workers == 3
    assert parser.parse_args(["train"]).num_workers is None  # None: default_num_workers()


def test_malformed_local_world_size_is_a_user_error(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "eight")
    with pytest.raises(UserError, match="LOCAL_WORLD_SIZE"):
        default_num_workers()
