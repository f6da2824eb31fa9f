"""Train an encrypted-domain ConvMixer with accelerate (paper Sec. III-B, Eq. (1)).

    python recipes/train.py --config recipes/configs/fashion_mnist_28.yaml [section.field=value ...]
    accelerate launch [--config_file recipes/accelerate/cpu2.yaml] recipes/train.py --config ...

Loss: L = CE + lambda * L_U, with L_U from ``model.permutation_penalty()`` added here once (the
model's implicit gradient-side penalty is switched off). Optimiser and schedule come from timm
(``create_optimizer_v2``, ``create_scheduler_v2``); ``Accelerator`` handles devices, mixed
precision, gradient accumulation, clipping and checkpoints (``save_state`` / ``load_state``).

Resuming: checkpoints are complete ``save_state`` folders renamed into place; the batch order
is a function of (seed, epoch) and each sample's augmentation of (seed, epoch, index), so a run
killed at any point and started again with the same command ends exactly where an
uninterrupted run would. Outputs (``output``): ``metrics.jsonl``, ``final_metrics.json``,
``model/`` (safetensors + config.json; share it through ``hub.export``, which runs the leak
guard), ``checkpoints/`` (for resuming), and
``owner/`` (evaluation artefacts that show the key's block order: do not share).

The parts live in ``ppcm_recipe/``: ``config`` (YAML and overrides), ``data`` (sources,
transforms, deterministic batches), ``build`` (model, key, optimiser, mixup), ``loop`` (the
training loop), ``checkpoints`` (resumable state), ``metrics`` (logs), ``evaluate`` (owner-side
evaluation). This file wires them together.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from ppcm_recipe.build import (
    build_mixup,
    build_model,
    build_optimizer,
    load_key,
    norm_stats,
    use_channels_last,
)
from ppcm_recipe.checkpoints import (
    TrainState,
    check_resumable,
    latest_checkpoint,
    write_config,
)
from ppcm_recipe.config import ConfigError, load_config
from ppcm_recipe.data import (
    DeviceEncrypt,
    PredecodedImages,
    SeededTransformDataset,
    data_fingerprint,
    load_split,
    steps_per_epoch,
    train_transform,
)
from ppcm_recipe.evaluate import evaluate_all, permutation_recovery, plot_permutation
from ppcm_recipe.loop import TrainingRun, train
from ppcm_recipe.metrics import MetricsLog, write_sync_record
from timm.data.model_config import resolve_input_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

import timm_ppconvmixer  # noqa: F401  (registers the models)
from timm_ppconvmixer.atomic import atomic_write_bytes

try:  # optional: image folders train without `datasets` (benchmarks/gpu_check.py)
    import datasets

    datasets.utils.logging.disable_progress_bar()  # the training bar is the one to watch
except ImportError:
    pass


def make_accelerator(tr: dict) -> Accelerator:
    # Several processes without CUDA (torchrun on CPUs): accelerate needs cpu=True to pick gloo.
    cpu = tr["cpu"] or (
        int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    )
    return Accelerator(
        mixed_precision=tr["mixed_precision"], gradient_accumulation_steps=tr["grad_accum"], cpu=cpu
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file (see recipes/configs/)")
    parser.add_argument("overrides", nargs="*", help="section.field=value (YAML values)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    tr = cfg["train"]
    accelerator = make_accelerator(tr)
    out = Path(cfg["output"])
    check_resumable(out, cfg)
    accelerator.wait_for_everyone()  # every process has read the old config before it changes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg)
    set_seed(cfg["seed"])
    model = build_model(cfg)
    input_size = resolve_input_data_config(model)["input_size"]
    mean, std = norm_stats(cfg, model, input_size[0])
    key = load_key(cfg, model, input_size)
    if key is not None and hasattr(model, "key_fingerprint"):
        model.key_fingerprint = key.fingerprint
    fingerprint = data_fingerprint(cfg, key)  # a hub: dataset's card's, without a key
    lam = tr["penalty_weight"]
    lam = lam if lam is not None else getattr(model, "penalty_weight", 0.0)

    train_images = load_split(cfg, cfg["data"]["train_split"], cfg["data"]["train_limit"])
    val_images = load_split(cfg, cfg["data"]["val_split"], cfg["data"]["val_limit"])
    if cfg["data"]["predecode"] and cfg["data"]["encrypted"]:
        train_set = PredecodedImages(train_images, input_size, mean, std)
    else:
        train_set = SeededTransformDataset(
            train_images, train_transform(cfg, key, input_size, mean, std), cfg["seed"]
        )
    on_device = key is not None and not cfg["data"]["encrypted"]
    on_device = on_device and cfg["data"]["encrypt_on"] == "device"
    device_transform = DeviceEncrypt(key, mean, std) if on_device else None
    if tr["channels_last"]:
        use_channels_last(model)
    world = accelerator.num_processes
    per_epoch = steps_per_epoch(len(train_set), tr["batch_size"], world, tr["grad_accum"])
    if per_epoch == 0:
        raise ConfigError(f"{len(train_set)} training images are fewer than one batch per process")
    updates_per_epoch = per_epoch // tr["grad_accum"]

    optimizer, scheduler = build_optimizer(cfg, model, updates_per_epoch)
    mixup = build_mixup(cfg, model, encrypted_domain=key is not None or cfg["data"]["encrypted"])
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=tr["ema_decay"]) if tr["ema"] else None
    state = TrainState(fingerprint)
    accelerator.register_for_checkpointing(scheduler, state)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    ckpt_dir = out / "checkpoints"
    log = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process)
    resume = latest_checkpoint(ckpt_dir)
    if resume is not None:
        expected = state.key_fingerprint
        accelerator.load_state(str(resume))
        if state.key_fingerprint != expected:
            raise ConfigError(
                f"{resume} was trained for key {state.key_fingerprint}, but the data is for "
                f"{expected}; use another output folder for another key"
            )
        log.truncate_after(state.global_step)
        accelerator.print(f"resumed from {resume} (epoch {state.epoch}, step {state.global_step})")
    elif accelerator.is_main_process:
        log.path.unlink(missing_ok=True)

    smoothing = cfg["augment"]["smoothing"]
    criterion = SoftTargetCrossEntropy() if mixup else LabelSmoothingCrossEntropy(smoothing)

    def evaluate(m) -> dict:
        return evaluate_all(
            cfg, m, val_images, key, input_size, mean, std, accelerator.device, accelerator.autocast
        )

    run = TrainingRun(
        cfg=cfg,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        mixup=mixup,
        criterion=criterion,
        penalty_weight=lam,
        train_set=train_set,
        state=state,
        log=log,
        checkpoints=ckpt_dir,
        steps_per_epoch=per_epoch,
        updates_per_epoch=updates_per_epoch,
        evaluate=evaluate,
        device_transform=device_transform,
    )
    started = train(run)
    return finish(
        cfg, accelerator, model, ema, evaluate, key, fingerprint, mean, std, out, lam, started
    )


def finish(
    cfg, accelerator, model, ema, evaluate, key, fingerprint, mean, std, out, lam, started
) -> dict:
    """Final owner-side evaluation, the shareable model folder, and the summary."""
    from timm_ppconvmixer.hub import save_model_folder

    accelerator.wait_for_everyone()
    result: dict = {}
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if ema is not None:
            final = ema.module
        final.eval()
        result = {
            "model": cfg["model"]["name"],
            "params": sum(p.numel() for p in final.parameters()),
            "penalty_weight": lam,
            "train_time_s": round(time.time() - started, 1),
            "eval": evaluate(final),
            "key_fingerprint": fingerprint,  # data.key's, or the hub: dataset card's
        }
        if key is not None:
            result["permutation_recovery"] = permutation_recovery(final, key)
            figure = plot_permutation(
                final, key, out / "owner" / "p_vs_inverse_block_permutation.png"
            )
            result["owner_figure"] = str(figure) if figure else None
        final.pretrained_cfg = {**final.pretrained_cfg, "mean": mean, "std": std}
        save_model_folder(final, out / "model", overwrite=True)
        result["model_folder"] = str(out / "model")
        atomic_write_bytes(out / "final_metrics.json", json.dumps(result, indent=2).encode())
        accelerator.print(json.dumps(result, indent=2))
    write_sync_record(accelerator, model, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
