"""Check the types of command-line overrides before any work, naming the key.

Hydra takes ``seed=abc`` or ``trainer.max_epochs=abc`` as strings and lets them fail late, in
the middle of a run or after a judge has trained, with messages that do not name the key. Here
each ``key=value`` override is compared with the value the same config has without the user's
values (only the config groups they chose, such as ``model=hvae``): where that default is a
number, a switch or a list, the override must be one too.
"""

from __future__ import annotations

from typing import Any

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["check_override_types"]

_MISSING = object()
#: Settings whose default can't tell their type: it is null, or a number where a mapping is
#: allowed too.
_DECLARED = {
    "model.cf_finetune.anchor": (
        "a number or a mapping of attribute names to numbers, e.g. {thickness: 0.3}",
        (int, float, DictConfig),
    ),
    "data.limit": ("a whole number", (int,)),
    "test_images": ("a whole number", (int,)),
    "trainer.limit_train_batches": ("a number", (int, float)),
    "trainer.limit_val_batches": ("a number", (int, float)),
    "trainer.limit_test_batches": ("a number", (int, float)),
    "trainer.val_check_interval": ("a number", (int, float)),
    "trainer.min_epochs": ("a whole number", (int,)),
    "trainer.min_steps": ("a whole number", (int,)),
    "trainer.num_sanity_val_steps": ("a whole number", (int,)),
}


def _kind(default: Any) -> tuple[str, tuple[type, ...]] | None:
    if isinstance(default, bool):
        return "true or false", (bool,)
    if isinstance(default, int):
        return "a whole number", (int,)
    if isinstance(default, float):
        return "a number", (int, float)
    if isinstance(default, (list, ListConfig)):
        return "a list, e.g. [0, 1]", (list, ListConfig)
    return None


def _select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=False)


def check_override_types(cfg: DictConfig, config_name: str) -> None:
    """Raise ``ValueError`` naming the first override whose value has the wrong type.

    Call it first thing in a ``@hydra.main`` function; outside one it does nothing.
    """
    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    overrides = list(hydra.overrides.task)
    chosen = set(hydra.runtime.choices)
    groups = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in chosen]
    reference = compose(config_name, overrides=groups)
    for override in overrides:
        if "=" not in override or override in groups:
            continue
        key = override.split("=", 1)[0].lstrip("+~")
        default, value = _select(reference, key), _select(cfg, key)
        kind = _DECLARED.get(key) or (_kind(default) if default is not _MISSING else None)
        if kind is None or value is _MISSING or value is None:
            continue
        name, types = kind
        if isinstance(value, bool) and bool not in types:
            wrong = True
        else:
            wrong = not isinstance(value, types)
        if wrong:
            shown = OmegaConf.to_container(default) if isinstance(default, ListConfig) else default
            raise ValueError(
                f"{key} must be {name} (its default is {shown}), got {value!r} from `{override}`"
            )
