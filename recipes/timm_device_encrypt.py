"""timm's unmodified ``train.py`` on PLAIN data with the owner's key, encrypting on the device.

timm's prefetcher loader (``PrefetchLoader``, on by default with CUDA) receives uint8 ``(C, H, W)``
batches from the workers and normalises them on the device. This launcher wraps the loader
inside it so that each batch is moved to the device and encrypted there (one gather + one XOR of
the uint8 batch) before the prefetcher normalises it: the same pixels as encrypting per image in
the workers (``create_transform(key, use_prefetcher=True)``), without the per-image work on the
loader's CPU cores. Owner only: it needs the key.

    python recipes/timm_device_encrypt.py --key owner.key path/to/timm/train.py \\
        --data-dir plain/ --model ppconvmixer_256_8 ... --reprob 0 --cutmix 0

(``--reprob`` and ``--cutmix`` must be 0: the prefetcher erases after encryption and timm's
boxes are not block-aligned; see recipes/timm_train.md.)
"""

from __future__ import annotations

import runpy
import sys

import timm.data
from timm.data.loader import PrefetchLoader

from timm_ppconvmixer import BlockKey, encrypt


class DeviceEncrypting:
    """Wraps a loader of plain uint8 batches: yields them encrypted on ``device``."""

    def __init__(self, loader, key: BlockKey, device) -> None:
        self.loader, self.key, self.device = loader, key, device

    def __iter__(self):
        for x, y in self.loader:
            yield encrypt(x.to(self.device, non_blocking=True), self.key), y

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):  # sampler, dataset, batch_size... as the wrapped loader's
        return getattr(self.loader, name)


def encrypting_create_loader(key: BlockKey, create_loader=timm.data.create_loader):
    """``timm.data.create_loader`` whose prefetcher loaders encrypt on the device."""

    def create(*args, **kwargs):
        loader = create_loader(*args, **kwargs)
        if not isinstance(loader, PrefetchLoader):
            raise SystemExit("device encryption needs timm's prefetcher (drop --no-prefetcher)")
        loader.loader = DeviceEncrypting(loader.loader, key, loader.device)
        return loader

    return create


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] != "--key":
        raise SystemExit(__doc__)
    key = BlockKey.load(argv[1])
    train_py = argv[2]
    timm.data.create_loader = encrypting_create_loader(key)  # train.py imports it from here
    sys.argv = [train_py, *argv[3:]]
    runpy.run_path(train_py, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
