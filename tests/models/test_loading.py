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


def test_an_empty_checkpoint_says_so(tmp_path):
    path = tmp_path / "empty.ckpt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty \(0 bytes\).*re-train"):
        load_model(path)


@pytest.fixture
def saved(morpho, tmp_path):
    from tests.families import FAMILIES
    from tests.helpers import save_checkpoint

    return save_checkpoint(FAMILIES["vae"][0](morpho), tmp_path / "vae.ckpt")


def test_changed_weights_fail_the_checksum(saved):
    checkpoint = torch.load(saved, weights_only=True)
    key = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point())
    checkpoint["state_dict"][key].view(-1)[0] += 1e-3  # what a flipped byte does, invisibly
    torch.save(checkpoint, saved)
    with pytest.raises(ValueError, match="do not match the checksum.*corrupt"):
        load_model(saved)


def test_flipped_bytes_never_load_quietly(saved):
    data = bytearray(saved.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum|truncated, corrupt"):
        load_model(saved)


def test_nan_weights_are_refused_with_the_tensor_named(saved):
    checkpoint = torch.load(saved, weights_only=True)
    key = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point())
    checkpoint["state_dict"][key].fill_(float("nan"))
    del checkpoint["cfzoo_state_sha256"]  # as a run that diverged would have written it
    torch.save(checkpoint, saved)
    with pytest.raises(ValueError, match=rf"NaN or infinite weights \({key}\).*diverged"):
        load_model(saved)


@pytest.mark.parametrize("key", ["state_dict", "hyper_parameters"])
def test_a_checkpoint_missing_its_parts_says_which(saved, key):
    checkpoint = torch.load(saved, weights_only=True)
    del checkpoint[key]
    torch.save(checkpoint, saved)
    with pytest.raises(ValueError, match=f"lacks {key}"):
        load_model(saved)


def test_another_architecture_s_weights_get_a_clear_error(saved):
    checkpoint = torch.load(saved, weights_only=True)
    checkpoint["hyper_parameters"]["latent_dim"] += 3
    torch.save(checkpoint, saved)
    with pytest.raises(ValueError, match="does not build a ConditionalVAE.*Re-train"):
        load_model(saved)


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    import errno

    from models import checkpoint_io

    io = checkpoint_io.AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    before = path.read_bytes()
    dead = 2**22 + 7  # above Linux's largest pid: a writer that is gone
    (path.parent / f"last.ckpt.{dead}.x.tmp").write_bytes(b"stale")  # left by a killed write

    def full_disk(target, data):
        target.write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "_write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left.*previous one is intact.*paths.log_dir"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary files left
    assert torch.load(path, weights_only=True)["epoch"] == 1
