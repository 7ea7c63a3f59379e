"""Structured channel pruning (torch-pruning) and the fine-tuning that lets accuracy recover.

:func:`prune` removes whole channels (so the smaller model is faster on any runtime, not
only on sparse kernels); :func:`finetune` trains the pruned model through the training
loop of :mod:`lineguard.train`, the same code path as every other training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lineguard.compress.select import CompressError

if TYPE_CHECKING:
    import torch

    from lineguard.config import LineguardConfig
    from lineguard.manifest import Dataset


def _in_channels(model: torch.nn.Module) -> int:
    from lineguard import models

    return models.input_channels(model)


def count_macs(model: torch.nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """(multiply-accumulates, parameters) of one batch-1 forward pass at ``input_size`` (h, w)."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, _in_channels(model), *input_size))
    model.train(was_training)
    return int(macs), int(params)


def _classifier_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Layers whose output channels are the classes (or the exported embedding): never pruned."""
    import torch

    linears: list[torch.nn.Module] = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    convs: list[torch.nn.Module] = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # The last Linear (or last conv for all-conv heads) produces the logits.
    return linears[-1:] if linears else convs[-1:]


def prune(
    model: torch.nn.Module, ratio: float, input_size: tuple[int, int], round_to: int = 8
) -> torch.nn.Module:
    """A structurally pruned copy of ``model``: ``ratio`` of the channels of every prunable layer
    removed (L2-magnitude importance, grouped over coupled layers by torch-pruning's dependency
    graph, rounded to multiples of ``round_to`` for fast kernels). The classifier's outputs are kept.
    The copy needs fine-tuning to recover accuracy; the input model is not touched.
    """
    import copy

    import torch
    import torch_pruning as tp

    if not 0.0 < ratio < 1.0:
        raise CompressError(f"compress.prune_ratios values must be between 0 and 1 (exclusive), got {ratio}")
    pruned = copy.deepcopy(model).cpu().eval()
    example = torch.zeros(1, _in_channels(model), *input_size)
    pruner = tp.pruner.BasePruner(
        pruned,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=_classifier_layers(pruned),
        round_to=round_to,
    )
    pruner.step()
    return pruned


def finetune(
    config: LineguardConfig, dataset: Dataset, data: Any, model: torch.nn.Module, epochs: int, progress: bool
) -> torch.nn.Module:
    """Fine-tune an already built model (a pruned one) for ``epochs`` through the training loop of train.py.

    ``data`` is :func:`lineguard.train.prepare_data` of ``dataset`` (decoded once, shared by
    every candidate); the learning rate is ``train.lr * compress.finetune_lr_scale``, with no
    warm-up and no frozen epochs.

    train() builds its model from the config, which cannot describe a pruned architecture, so the
    loop itself (augmentation, class balance, schedule, early stopping, best-weights restore) is
    called with the model: same code path, no second training loop.
    """
    from rich.console import Console

    from lineguard import train as train_mod

    tc = config.train.model_copy(
        update={
            "epochs": epochs,
            "warmup_epochs": 0.0,
            "freeze_epochs": 0,
            "lr": config.train.lr * config.compress.finetune_lr_scale,
        }
    )
    cfg = config.model_copy(update={"train": tc})
    train_mod.seed_everything(tc.seed, tc.threads, tc.deterministic)
    device = train_mod.resolve_device(tc.device)
    model.to(device)
    result = train_mod.fit(config=cfg, model=model, data=data, device=device,
                           console=Console(quiet=not progress), progress=progress)
    return result.model.cpu().eval()  # type: ignore[no-any-return]
