"""Encrypted data for the provider: ``datasets`` datasets encrypted with batched ``map`` and the
real Fashion-MNIST (:mod:`.datasets`), and image folder trees encrypted and decrypted file by
file with a manifest (:mod:`.folders`). Only the key's public facts travel with the data.
"""

from .datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    DatasetUnavailableError,
    encrypt_dataset,
    encrypt_saved_dataset,
    fashion_mnist_arrays,
    load_fashion_mnist,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "DatasetUnavailableError",
    "encrypt_dataset",
    "encrypt_saved_dataset",
    "fashion_mnist_arrays",
    "load_fashion_mnist",
]
