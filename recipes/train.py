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
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import timm
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from ppcm_recipe.config import ConfigError, load_config
from ppcm_recipe.data import (
    DecryptedView,
    EpochBatchSampler,
    EvalDataset,
    SeededTransformDataset,
    _sample_seed,
    eval_transform,
    load_split,
    steps_per_epoch,
    train_transform,
)
from ppcm_recipe.evaluate import permutation_recovery, plot_permutation, top1
from timm.data import Mixup
from timm.data.model_config import resolve_input_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, distribute_bn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import timm_ppconvmixer  # noqa: F401  (registers the models)
from timm_ppconvmixer import BlockKey

datasets.utils.logging.disable_progress_bar()  # the training bar is the one to watch


class TrainState:
    """Where training stands; saved and restored with the checkpoints."""

    def __init__(self, key_fingerprint: str | None = None) -> None:
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.key_fingerprint = key_fingerprint  # the encrypted domain the weights belong to

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def build_model(cfg: dict):
    spec = cfg["model"]["pretrained"] or cfg["model"]["name"]
    model = timm.create_model(
        spec, pretrained=bool(cfg["model"]["pretrained"]), **cfg["model"]["kwargs"]
    )
    if hasattr(model, "set_implicit_penalty"):
        model.set_implicit_penalty(False)  # the loss below adds lambda * L_U explicitly
    return model


def norm_stats(cfg: dict, model, channels: int):
    mean = cfg["data"]["mean"] or model.pretrained_cfg.get("mean")
    std = cfg["data"]["std"] or model.pretrained_cfg.get("std")
    if len(mean) != channels:  # e.g. ImageNet statistics for a 1-channel model
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    return tuple(mean), tuple(std)


def load_key(cfg: dict, model, input_size) -> BlockKey | None:
    if not cfg["data"]["key"]:
        return None
    key = BlockKey.load(cfg["data"]["key"])
    patch = model.stem[0].kernel_size[0]
    if (key.channels, *key.image_size) != tuple(input_size) or key.block_size != patch:
        raise ConfigError(
            f"key {key.fingerprint} is for {key.channels}x{key.image_size[0]}x{key.image_size[1]} "
            f"images with block {key.block_size}; the model takes {tuple(input_size)} with patch "
            f"{patch}: they must match"
        )
    return key


# Fields that may change between a run and its resumption without changing the result.
RESUME_MAY_DIFFER = {("data", "num_workers"), ("train", "max_steps"), ("eval", "batch_size")}


def check_resumable(out: Path, cfg: dict) -> None:
    """Refuse to resume checkpoints written under a different configuration."""
    saved_path = out / "config.yaml"
    if latest_checkpoint(out / "checkpoints") is None or not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    diffs = [
        f"{section}.{field}" if isinstance(cfg[section], dict) else section
        for section in cfg
        for field in (cfg[section] if isinstance(cfg[section], dict) else [None])
        if (section, field) not in RESUME_MAY_DIFFER
        and (saved.get(section, {}).get(field) if field else saved.get(section))
        != (cfg[section][field] if field else cfg[section])
    ]
    if diffs:
        raise ConfigError(
            f"{out} holds checkpoints of a run with a different config ({', '.join(diffs)}); "
            "use another output folder, or delete its checkpoints/ to start over"
        )


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob("step_*") if p.is_dir())
    return done[-1] if done else None


def save_checkpoint(accelerator, folder: Path, step: int, keep: int) -> None:
    """``save_state`` into a temporary folder, then rename: a kill never leaves a partial
    checkpoint that a resume would pick up."""
    final = folder / f"step_{step:08d}"
    tmp = folder / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in folder.glob("step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class MetricsLog:
    """JSON lines, written by the main process; on resume, lines past the checkpoint go."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by the kill: nothing after it counts
                break
            if record["step"] <= step:
                keep.append(line + "\n")
        write_atomic(self.path, "".join(keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def make_loader(dataset, batch_sampler, workers: int) -> DataLoader:
    return DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=workers, persistent_workers=False
    )


def evaluate_all(cfg, model, images, key, input_size, mean, std, device, autocast) -> dict:
    """Top-1 on the validation split: with the correct key, on plain images, with a wrong key
    (those two need the owner's key); without a key only in the data's own domain."""
    bs, workers = cfg["eval"]["batch_size"], cfg["data"]["num_workers"]

    def run(view, transform):
        return top1(
            model,
            DataLoader(EvalDataset(view, transform), bs, num_workers=workers),
            device,
            autocast,
        )

    if key is None:
        if cfg["data"]["encrypted"]:
            from ppcm_recipe.data import encrypted_transform

            return {"top1_encrypted": run(images, encrypted_transform(input_size, mean, std))}
        return {"top1_plain": run(images, eval_transform(input_size, mean, std))}
    plain = DecryptedView(images, key) if cfg["data"]["encrypted"] else images
    wrong = BlockKey.generate(key.image_size, key.block_size, key.channels, seed=cfg["seed"] + 1)
    return {
        "top1_key": run(plain, eval_transform(input_size, mean, std, key)),
        "top1_plain": run(plain, eval_transform(input_size, mean, std)),
        "top1_wrong_key": run(plain, eval_transform(input_size, mean, std, wrong)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file (see recipes/configs/)")
    parser.add_argument("overrides", nargs="*", help="section.field=value (YAML values)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    tr = cfg["train"]
    # Several processes without CUDA (torchrun on CPUs): accelerate needs cpu=True to pick gloo.
    cpu = tr["cpu"] or (
        int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    )
    accelerator = Accelerator(
        mixed_precision=tr["mixed_precision"], gradient_accumulation_steps=tr["grad_accum"], cpu=cpu
    )
    out = Path(cfg["output"])
    main_proc = accelerator.is_main_process
    check_resumable(out, cfg)
    accelerator.wait_for_everyone()  # every process has read the old config before it changes
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    set_seed(cfg["seed"])
    model = build_model(cfg)
    input_size = resolve_input_data_config(model)["input_size"]
    mean, std = norm_stats(cfg, model, input_size[0])
    key = load_key(cfg, model, input_size)
    if key is not None and hasattr(model, "key_fingerprint"):
        model.key_fingerprint = key.fingerprint
    lam = (
        tr["penalty_weight"]
        if tr["penalty_weight"] is not None
        else getattr(model, "penalty_weight", 0.0)
    )

    train_images = load_split(cfg, cfg["data"]["train_split"], cfg["data"]["train_limit"])
    val_images = load_split(cfg, cfg["data"]["val_split"], cfg["data"]["val_limit"])
    train_set = SeededTransformDataset(
        train_images, train_transform(cfg, key, input_size, mean, std), cfg["seed"]
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = steps_per_epoch(len(train_set), tr["batch_size"], world, tr["grad_accum"])
    if per_epoch == 0:
        raise ConfigError(f"{len(train_set)} training images are fewer than one batch per process")
    updates_per_epoch = per_epoch // tr["grad_accum"]

    opt = cfg["optim"]
    optimizer = create_optimizer_v2(
        model,
        opt=opt["opt"],
        lr=opt["lr"],
        weight_decay=opt["weight_decay"],
        momentum=opt["momentum"],
        **({"eps": opt["eps"]} if opt["eps"] is not None else {}),
    )
    sch = cfg["sched"]
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=sch["sched"],
        num_epochs=tr["epochs"],
        warmup_epochs=sch["warmup_epochs"],
        min_lr=sch["min_lr"],
        warmup_lr=sch["warmup_lr"],
        updates_per_epoch=updates_per_epoch,
        step_on_epochs=False,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=tr["ema_decay"]) if tr["ema"] else None
    state = TrainState(key.fingerprint if key is not None else None)
    accelerator.register_for_checkpointing(scheduler, state)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    ckpt_dir = out / "checkpoints"
    log = MetricsLog(out / "metrics.jsonl", main_proc)
    resume = latest_checkpoint(ckpt_dir)
    if resume is not None:
        expected = state.key_fingerprint
        accelerator.load_state(str(resume))
        if state.key_fingerprint != expected:
            raise ConfigError(
                f"{resume} was trained for key {state.key_fingerprint}, but data.key is "
                f"{expected}; use another output folder for another key"
            )
        log.truncate_after(state.global_step)
        accelerator.print(f"resumed from {resume} (epoch {state.epoch}, step {state.global_step})")
    elif main_proc:
        log.path.unlink(missing_ok=True)

    aug = cfg["augment"]
    encrypted_domain = key is not None or cfg["data"]["encrypted"]
    mixup = None
    if aug["mixup"] > 0 or aug["cutmix"] > 0:
        if aug["cutmix"] > 0 and encrypted_domain:
            from timm_ppconvmixer.encrypted_augment import BlockMixup

            mixup = BlockMixup(
                mixup_alpha=aug["mixup"],
                cutmix_alpha=aug["cutmix"],
                block_size=model_patch(accelerator, model),
                label_smoothing=aug["smoothing"],
                num_classes=num_classes(accelerator, model),
            )
        else:
            mixup = Mixup(
                mixup_alpha=aug["mixup"],
                cutmix_alpha=aug["cutmix"],
                label_smoothing=aug["smoothing"],
                num_classes=num_classes(accelerator, model),
            )
    criterion = SoftTargetCrossEntropy() if mixup else LabelSmoothingCrossEntropy(aug["smoothing"])
    autocast = accelerator.autocast

    def evaluate(m) -> dict:
        return evaluate_all(
            cfg, m, val_images, key, input_size, mean, std, accelerator.device, autocast
        )

    max_steps = tr["max_steps"]
    started = time.time()
    bar = tqdm(
        total=tr["epochs"] * updates_per_epoch,
        initial=state.global_step,
        disable=not main_proc,
        desc="train",
    )
    done = max_steps is not None and state.global_step >= max_steps
    while state.epoch < tr["epochs"] and not done:
        train_set.epoch = state.epoch
        sampler = EpochBatchSampler(
            len(train_set),
            tr["batch_size"],
            cfg["seed"],
            state.epoch,
            world,
            rank,
            start=state.step_in_epoch,
            multiple_of=tr["grad_accum"],
        )
        model.train()
        for x, y in make_loader(train_set, sampler, cfg["data"]["num_workers"]):
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            # RNG state per step, not a stream: mixup and dropout draw the same numbers in a
            # resumed run as in an uninterrupted one
            step_seed = _sample_seed(cfg["seed"], state.epoch, state.step_in_epoch, rank)
            np.random.seed(step_seed % 2**32)
            torch.manual_seed(step_seed)
            if mixup is not None:
                x, y = mixup(x, y)
            with accelerator.accumulate(model):
                with autocast():
                    logits = model(x)
                    ce = criterion(logits, y)
                penalty = (
                    accelerator.unwrap_model(model).permutation_penalty()
                    if lam
                    else x.new_zeros(())
                )
                loss = ce + lam * penalty
                accelerator.backward(loss)
                if accelerator.sync_gradients and tr["clip_grad"]:
                    accelerator.clip_grad_norm_(model.parameters(), tr["clip_grad"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.step_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            scheduler.step_update(num_updates=state.global_step)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step=state.global_step)
            bar.update(1)
            done = max_steps is not None and state.global_step >= max_steps
            if state.global_step % tr["log_every"] == 0 or done:
                log.write(
                    {
                        "step": state.global_step,
                        "epoch": state.epoch,
                        "loss": float(loss.detach()),
                        "ce": float(ce.detach()),
                        "penalty": float(penalty.detach()),
                        "lr": optimizer.param_groups[0]["lr"],
                        "elapsed_s": round(time.time() - started, 1),
                    }
                )
            if done:
                break
            if state.global_step % tr["checkpoint_every"] == 0 and state.step_in_epoch < per_epoch:
                save_checkpoint(accelerator, ckpt_dir, state.global_step, tr["keep_checkpoints"])
        if done:
            break
        sync_batchnorm_stats(accelerator, model)
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        if cfg["eval"]["every_epoch"]:
            if main_proc:
                acc = evaluate(accelerator.unwrap_model(model))
                log.write({"step": state.global_step, "epoch": state.epoch, "eval": acc})
            accelerator.wait_for_everyone()
        save_checkpoint(accelerator, ckpt_dir, state.global_step, tr["keep_checkpoints"])
    bar.close()
    sync_batchnorm_stats(accelerator, model)
    return finish(cfg, accelerator, model, ema, evaluate, key, mean, std, out, lam, started)


def sync_batchnorm_stats(accelerator, model) -> None:
    """Average BatchNorm running statistics over processes (as timm's train.py does at each
    epoch's end): each process updated them from its own batches."""
    if accelerator.num_processes > 1:
        distribute_bn(model, accelerator.num_processes, reduce=True)


def model_patch(accelerator, model) -> int:
    return accelerator.unwrap_model(model).stem[0].kernel_size[0]


def num_classes(accelerator, model) -> int:
    return accelerator.unwrap_model(model).num_classes


def finish(cfg, accelerator, model, ema, evaluate, key, mean, std, out, lam, started) -> dict:
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
            "key_fingerprint": key.fingerprint if key is not None else None,
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
        (out / "final_metrics.json").write_text(json.dumps(result, indent=2))
        accelerator.print(json.dumps(result, indent=2))
    write_sync_record(accelerator, model, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def write_sync_record(accelerator, model, out: Path) -> None:
    """Each process records a digest of its weights (``sync/rank<i>.json``): data-parallel
    processes that stayed in sync hold identical weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in accelerator.unwrap_model(model).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    record = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "weights_sha256": digest.hexdigest(),
    }
    path = out / "sync" / f"rank{accelerator.process_index}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
