"""A checkpoint that would run code is refused in our words: torch's advice to load it with
weights_only=False never reaches the user, and nothing in the file runs."""
from __future__ import annotations

import pytest
import torch

from resnets.checkpoint import digest_path, load_checkpoint
from resnets.cli import main
from resnets.errors import UserError
from resnets.runs import LAST_CHECKPOINT
from tiny_runs import tiny_run


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling would create the marker file


def test_unsafe_checkpoint_gets_our_message_and_runs_nothing(tmp_path, capsys):
    run = tiny_run(tmp_path / "run")  # one checkpoint, last.pt, so there is nothing to fall back to
    marker = tmp_path / "marker"
    path = run / LAST_CHECKPOINT
    torch.save({"format": "x", "payload": _RunsCode(marker)}, path)
    digest_path(path).unlink()  # no sidecar to catch it first: the safe loader is the only check
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "never unpickled" in message
    assert "weights_only" not in message and "trust" not in message
    assert not marker.exists()
    # From the command line, evaluating the damaged checkpoint: the same words, exit 2.
    assert main(["eval", str(run), "--weights", "last", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "weights_only" not in err and "Traceback" not in err
    assert not marker.exists()
