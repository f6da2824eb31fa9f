"""A key check for timm's own, unmodified ``train.py``: list this module after the plugin,

    python train.py --dataset hfds/OWNER/NAME \\
        --device-modules timm_ppconvmixer timm_ppconvmixer.hub.train_guard \\
        --model ppconvmixer_256_8 --model-kwargs key_fingerprint=ppcm1-... ...

and the run stops before it builds anything (exit status 2, one ``error:`` line) unless the
data's key fingerprint (its Hub card, or ``ENCRYPTION.json`` of a ``--data-dir`` folder) is the
fingerprint the model records (``--model-kwargs key_fingerprint=...``, the ``config.json`` of an
``hf-hub:`` / ``local-dir:`` model, or the one next to ``--pretrained-path``). It also stops a run
whose ``--model-kwargs`` hold or locate key material (the leak guard's
:func:`~.leak_guard.key_material_in_model_args`): ``key=KEY_FILE`` (the key on the training
machine, its path in ``args.yaml`` and every checkpoint) or a block order as
``permutation_init``; a run on encrypted data needs only the key's fingerprint.

Why a module of its own: ``train.py`` has no hook where the model and the data meet before
training (the model only ever sees tensors), so the check reads ``train.py``'s own arguments,
through ``train.py``'s own parser (``__main__._parse_args``), when ``--device-modules`` imports
it, which ``train.py`` does before it creates the model or the data. It is opt-in: a run that
does not list it is not checked (``ppconvmixer check-data`` is the same check by hand).
Importing it anywhere but from ``train.py`` stops the process the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import HubError
from .fingerprints import check_key_fingerprints, dataset_key_fingerprint, model_key_fingerprints
from .leak_guard import key_material_in_model_args

__all__ = ["check_train_args"]

HOW_TO_SET = "--model-kwargs key_fingerprint"


def check_train_args(args: Any) -> str:
    """Check ``train.py``'s parsed arguments (``--dataset``, ``--data-dir``, ``--model``,
    ``--model-kwargs``, ``--pretrained-path``); returns the shared key fingerprint. Refuses
    ``--model-kwargs`` that hold or locate key material (:func:`_check_model_kwargs`) before it
    reads any data.

    Example:
        >>> check_train_args(argparse.Namespace(dataset="hfds/me/d", ...))  # doctest: +SKIP
        'ppcm1-5b0c...'
    """
    _check_model_kwargs(getattr(args, "model_kwargs", None) or {})
    dataset = str(getattr(args, "dataset", "") or "")
    if dataset.lower().startswith(("hfds/", "hfids/")):
        source = name = dataset
    elif dataset:
        raise HubError(
            f"--dataset {dataset}: the key check reads hfds/ and hfids/ datasets and image "
            "folders (--data-dir with ENCRYPTION.json) only"
        )
    else:
        folder = getattr(args, "data_dir", None) or getattr(args, "data", None)
        if not folder or not Path(folder).is_dir():
            raise HubError(f"--data-dir {folder}: no such folder to check")
        source, name = folder, f"--data-dir {folder}"
    data_fp = dataset_key_fingerprint(source)
    model_fps = model_key_fingerprints(
        getattr(args, "model", None),
        model_kwargs=getattr(args, "model_kwargs", None) or {},
        pretrained_path=getattr(args, "pretrained_path", None),
    )
    return check_key_fingerprints(data_fp, model_fps, name, HOW_TO_SET)


def _check_model_kwargs(kwargs: dict) -> None:
    """Refuse key material in ``--model-kwargs`` (their values are never shown: a key file's
    path, an order). The key-bound tags take ``key=`` on the owner's machine only."""
    found = key_material_in_model_args(kwargs)
    if not found:
        return
    names = ", ".join(sorted({arg.split(".")[0].split("[")[0] for arg, _ in found}))
    raise HubError(
        f"--model-kwargs {names}: {'; '.join(what for _, what in found)}. train.py records "
        "its arguments in args.yaml and in every checkpoint, and a run on encrypted data needs "
        f"only the key's fingerprint: pass {HOW_TO_SET}=FP instead (the data's card or "
        "ENCRYPTION.json gives it). The key-bound tags (key=) are for the owner's machine, and "
        "a model fine-tuned from one gives the key back to whoever holds the public checkpoint "
        "(docs/hub.md, 'Weights converted from a public checkpoint')"
    )


def _train_py_args() -> Any:
    main = sys.modules.get("__main__")
    parse = getattr(main, "_parse_args", None)
    if not callable(parse):
        script = getattr(main, "__file__", "?")
        raise HubError(
            f"{__name__} checks the arguments of timm's train.py, but {script} has no "
            "_parse_args; list it only in train.py's --device-modules, or run "
            "`ppconvmixer check-data` before training"
        )
    args, _ = parse()
    return args


def _guard() -> None:
    try:
        fingerprint = check_train_args(_train_py_args())
    except HubError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    print(f"timm_ppconvmixer: data and model are for key {fingerprint}", file=sys.stderr)


_guard()
