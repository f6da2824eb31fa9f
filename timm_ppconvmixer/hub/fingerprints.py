"""Which key a dataset and a model are for, and the refusal to train one on the other when
they differ. A dataset's key is the fingerprint in its card (``ppconvmixer.key_fingerprint``,
written by :func:`~timm_ppconvmixer.hub.push_encrypted_dataset`) or in an encrypted folder's
``ENCRYPTION.json``; a model's is its ``key_fingerprint`` model argument (``config.json``'s
``model_args``, or the ``key_fingerprint=...`` a training run passes)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .dataset_card import fingerprint_from_card
from .errors import HubError

__all__ = [
    "FingerprintMismatchError",
    "check_key_fingerprints",
    "dataset_key_fingerprint",
    "model_key_fingerprints",
    "parse_dataset_source",
]

_PREFIXES = ("hfds/", "hfids/", "hub:")


class FingerprintMismatchError(HubError):
    """The data and the model are for different keys (or one of them records none)."""


def parse_dataset_source(source: str) -> tuple[str, bool]:
    """``(repo id or local folder, is local)`` of ``hfds/OWNER/NAME``, ``hfids/OWNER/NAME``,
    ``hub:OWNER/NAME``, ``OWNER/NAME`` or a folder.

    Example:
        >>> parse_dataset_source("hfds/me/fmnist-enc")
        ('me/fmnist-enc', False)
    """
    text = str(source)
    for prefix in _PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
            break
    if Path(text).is_dir():
        return text, True
    if text.count("/") != 1 or not all(text.split("/")):
        raise HubError(
            f"{source!r} is neither a folder nor a Hub dataset id; use hfds/OWNER/NAME, "
            "hub:OWNER/NAME or a local folder"
        )
    return text, False


def dataset_key_fingerprint(
    source: str | os.PathLike, *, token: str | None = None, revision: str | None = None
) -> str | None:
    """The key fingerprint an encrypted dataset records: its Hub card's, a local folder's
    ``ENCRYPTION.json`` or ``README.md``; None when it records none.

    Example:
        >>> dataset_key_fingerprint("hfds/me/fmnist-enc")  # doctest: +SKIP
        'ppcm1-5b0c...'
    """
    where, local = parse_dataset_source(str(source))
    if local:
        folder = Path(where)
        manifest = folder / "ENCRYPTION.json"
        if manifest.is_file():
            return json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint")
        card = folder / "README.md"
        return fingerprint_from_card(card.read_text(encoding="utf-8")) if card.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    from .model_folder import first_line, transport_errors

    try:
        path = hf_hub_download(
            where, "README.md", repo_type="dataset", revision=revision, token=token
        )
    except LocalEntryNotFoundError as e:  # offline (HF_HUB_OFFLINE) and not in the cache
        raise HubError(f"cannot read the card of dataset {where}: {first_line(e)}") from None
    except EntryNotFoundError:
        return None
    except RepositoryNotFoundError:
        raise HubError(
            f"no dataset repository {where} on the Hub, or no access to it; check the name and "
            "the token (HF_TOKEN or `hf auth login`)"
        ) from None
    except transport_errors() as e:
        raise HubError(f"cannot read the card of dataset {where}: {first_line(e)}") from e
    return fingerprint_from_card(Path(path).read_text(encoding="utf-8"))


def _config_of(spec: str, token: str | None) -> Mapping[str, Any] | None:
    """config.json of ``hf-hub:ID[@rev]``, ``local-dir:PATH`` or a model folder, if any."""
    if spec.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        from .model_folder import first_line, transport_errors

        repo, _, rev = spec[len("hf-hub:") :].partition("@")
        try:
            path = Path(hf_hub_download(repo, "config.json", revision=rev or None, token=token))
        except LocalEntryNotFoundError as e:  # offline (HF_HUB_OFFLINE) and not in the cache
            raise HubError(
                f"cannot read config.json of model {repo} to check its key fingerprint: "
                f"{first_line(e)}"
            ) from None
        except EntryNotFoundError:
            return None  # a model without config.json records no fingerprint
        except RepositoryNotFoundError:
            raise HubError(
                f"no model repository {repo} on the Hub, or no access to it; check --model and "
                "the token (HF_TOKEN or `hf auth login`)"
            ) from None
        except transport_errors() as e:  # offline, unreachable, a server error
            raise HubError(
                f"cannot read config.json of model {repo} to check its key fingerprint: "
                f"{first_line(e)}"
            ) from None
    else:
        path = Path(spec.removeprefix("local-dir:")) / "config.json"
        if not path.is_file():
            return None
    return json.loads(path.read_text(encoding="utf-8"))


def model_key_fingerprints(
    model: Any = None,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    pretrained_path: str | os.PathLike | None = None,
    token: str | None = None,
) -> list[str]:
    """Every key fingerprint a model to train records, from its sources: a module's
    ``key_fingerprint``, ``model_kwargs["key_fingerprint"]``, the ``config.json`` of an
    ``hf-hub:`` / ``local-dir:`` name or folder, and the one next to ``pretrained_path``.

    Example:
        >>> model_key_fingerprints("hf-hub:me/base", model_kwargs={})  # doctest: +SKIP
        ['ppcm1-5b0c...']
    """
    found: list[str] = []
    if model is not None and not isinstance(model, (str, os.PathLike)):
        found.append(getattr(model, "key_fingerprint", None))
    if model_kwargs:
        found.append(model_kwargs.get("key_fingerprint"))
    specs = []
    if isinstance(model, (str, os.PathLike)):
        text = str(model)
        if text.startswith(("hf-hub:", "local-dir:")) or Path(text).is_dir():
            specs.append(text)
    if pretrained_path:
        specs.append(str(Path(pretrained_path).parent))
    for spec in specs:
        config = _config_of(spec, token) or {}
        found.append((config.get("model_args") or {}).get("key_fingerprint"))
    return [str(fp) for fp in found if fp]


def check_key_fingerprints(data_fingerprint: str | None, model_fingerprints: list[str],
                           data_name: str, how_to_set: str) -> str:  # fmt: skip
    """Refuse unless the data records a key and every fingerprint the model records is it;
    returns the fingerprint. ``how_to_set`` names the option that records one on the model
    (``--model-kwargs key_fingerprint=FP`` for timm's train.py).

    Example:
        >>> check_key_fingerprints("ppcm1-ab", ["ppcm1-ab"], "hfds/me/d", "--model-kwargs")
        'ppcm1-ab'
    """
    if data_fingerprint is None:
        raise FingerprintMismatchError(
            f"refusing to train: {data_name} records no key fingerprint (no "
            "ppconvmixer.key_fingerprint in its card, no ENCRYPTION.json); ask the data owner "
            "to push it with ppconvmixer encrypt --push-to-hub"
        )
    if not model_fingerprints:
        raise FingerprintMismatchError(
            f"refusing to train: the model records no key fingerprint; {data_name} is "
            f"encrypted with key {data_fingerprint}: pass {how_to_set}={data_fingerprint} so "
            "the model records the key it is trained for"
        )
    other = sorted({fp for fp in model_fingerprints if fp != data_fingerprint})
    if other:
        raise FingerprintMismatchError(
            f"refusing to train: {data_name} is encrypted with key {data_fingerprint}, but the "
            f"model records key {', '.join(other)}; a model learns one key's encrypted domain: "
            "use data encrypted with the model's key, or a model for the data's key"
        )
    return data_fingerprint
