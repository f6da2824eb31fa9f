"""Sharing models on the Hugging Face Hub: save and export model folders, push and pull.

A model folder holds ``model.safetensors`` (no pickle files), ``config.json`` exactly as timm's
``save_for_hf`` writes it, so ``timm.create_model("local-dir:<folder>")`` and
``timm.create_model("hf-hub:<repo>", pretrained=True)`` work once ``timm_ppconvmixer`` is
imported, and, for sharing, ``README.md``: a model card whose only fact about the key is its
public fingerprint (built by :mod:`.model_card`).

Example:
    >>> import timm, timm_ppconvmixer
    >>> from timm_ppconvmixer.hub import export, push_to_hub
    >>> model = timm.create_model("ppconvmixer_256_8", img_size=16, num_classes=3)
    >>> export(model, "out/tiny")  # doctest: +SKIP
    >>> push_to_hub(model, "me/tiny", key=key, metrics={"top1_key": 0.91})  # doctest: +SKIP

The leak guard (:func:`scan_for_key_material`, in :mod:`.leak_guard`) runs on every file
before it is renamed into place by :func:`export` and again before anything is uploaded. What it
detects and what it cannot is listed in ``docs/hub.md``.

Modules: :mod:`.model_folder` (save, export, load), :mod:`.transfer` (upload, push),
:mod:`.model_card`, :mod:`.leak_guard` (with :mod:`.key_patterns` and :mod:`.file_scan`),
:mod:`.errors`. Their public names are re-exported here.
"""

from .dataset_card import DATASET_TAGS, dataset_card, fingerprint_from_card
from .datasets import load_encrypted_source, push_encrypted_dataset
from .errors import HubError, KeyMaterialError
from .evaluate import evaluate_with_key, push_evaluation
from .fingerprints import (
    FingerprintMismatchError,
    check_key_fingerprints,
    dataset_key_fingerprint,
    model_key_fingerprints,
)
from .key_patterns import MASK_WINDOW, MIN_WINDOW_BITS, PERM_WINDOW, Finding
from .leak_guard import (
    PublicStemFinding,
    assert_no_key_material,
    key_material_in_model_args,
    scan_for_key_material,
)
from .model_card import METRIC_LABELS, TAGS, model_card, model_index, normalize_metrics
from .model_folder import export, load_model, model_args_for_export, save_model_folder
from .transfer import (
    folder_listing,
    push_to_hub,
    read_metrics_file,
    recipe_from_file,
    upload_model_folder,
)

__all__ = [
    "DATASET_TAGS",
    "Finding",
    "FingerprintMismatchError",
    "HubError",
    "KeyMaterialError",
    "MASK_WINDOW",
    "METRIC_LABELS",
    "MIN_WINDOW_BITS",
    "PERM_WINDOW",
    "PublicStemFinding",
    "TAGS",
    "assert_no_key_material",
    "check_key_fingerprints",
    "dataset_card",
    "dataset_key_fingerprint",
    "evaluate_with_key",
    "export",
    "fingerprint_from_card",
    "folder_listing",
    "key_material_in_model_args",
    "load_encrypted_source",
    "load_model",
    "model_args_for_export",
    "model_card",
    "model_index",
    "model_key_fingerprints",
    "normalize_metrics",
    "push_encrypted_dataset",
    "push_evaluation",
    "push_to_hub",
    "read_metrics_file",
    "recipe_from_file",
    "save_model_folder",
    "scan_for_key_material",
    "upload_model_folder",
]
