"""The exact-resume check every objective's tests share: a run killed after epoch 1 and resumed ends with the
same weights, bit for bit, as the same run left alone."""
from __future__ import annotations

import pytest

from vitkit.train import train
from vitkit.weights import load_checkpoint


def assert_resumes_exactly(config, tmp_path, epochs: int = 2) -> None:
    """config(name, epochs) → a TrainConfig writing runs under tmp_path."""
    def stop(row):  # a kill after epoch 1
        if row["epoch"] == 1:
            raise KeyboardInterrupt
    train(config("whole", epochs), log=lambda *_: None)
    with pytest.raises(KeyboardInterrupt):
        train(config("halves", epochs), on_epoch_end=stop, log=lambda *_: None)
    train(config("halves", epochs), resume=True, log=lambda *_: None)
    a, b = (load_checkpoint(tmp_path / n / "last.safetensors") for n in ("whole", "halves"))
    assert a.state.keys() == b.state.keys()
    assert max((a.state[k] - b.state[k]).abs().max().item() for k in a.state) == 0.0
