import pytest
import torch

from models import load_model


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="python train.py"):
        load_model(tmp_path / "nope.ckpt")


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated, corrupt"):
        load_model(path)


def test_foreign_checkpoint(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a cfzoo model checkpoint"):
        load_model(path)


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"cfzoo_model": "ConditionalVAE", "payload": object()}, path)
    with pytest.raises(ValueError, match="can't load safely"):
        load_model(path)
