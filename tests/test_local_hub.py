"""End-to-end tests of the local Hub test double (tests/local_hub.py).

Everything goes through the real, unpatched huggingface_hub client (and timm for the model
round trip). The client reads HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET... once, at import
time, so each client runs in a fresh interpreter whose environment points at the server.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_hub import (
    DEFAULT_GITATTRIBUTES,
    LFS_SIZE_THRESHOLD,
    LocalHub,
    choose_upload_mode,
    lfs_patterns,
)

# Helpers every client script gets: its arguments, and `emit` to report results as JSON.
PRELUDE = """\
import json, sys
from pathlib import Path
ARGS = json.loads(sys.argv[1])

def emit(**result):
    print("RESULT " + json.dumps(result), flush=True)

"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    with LocalHub(tmp_path_factory.mktemp("hub-root")) as server:
        yield server


def run_client(
    hub: LocalHub, home: Path, code: str, timeout: float = 120, **args: Any
) -> dict[str, Any]:
    """Run `code` in a fresh interpreter wired to `hub` and return what it `emit`-ted."""
    env = {**os.environ, **hub.client_env(home=home)}
    script = home.parent / f"client_{uuid.uuid4().hex[:8]}.py"
    script.write_text(PRELUDE + textwrap.dedent(code))
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home.parent,
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, f"client emitted nothing:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(results[-1][len("RESULT ") :])


def test_create_repo_twice_with_exist_ok(hub: LocalHub, tmp_path: Path) -> None:
    out = run_client(
        hub,
        tmp_path / "hf",
        """
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        api = HfApi()
        first = api.create_repo("tester/created")
        again = api.create_repo("tester/created", exist_ok=True)
        try:
            api.create_repo("tester/created")
            conflict = None
        except HfHubHTTPError as err:
            conflict = err.response.status_code
        implicit = api.create_repo("no-namespace")  # namespace comes from the token's user
        dataset = api.create_repo("tester/data", repo_type="dataset", private=True)
        info = api.dataset_info("tester/data")
        emit(
            first=[first.repo_id, first.repo_type], again=again.repo_id, conflict=conflict,
            implicit=implicit.repo_id, whoami=api.whoami()["name"],
            dataset=[dataset.repo_type, info.id, info.private],
            files=api.list_repo_files("tester/created"),
            exists=[api.repo_exists("tester/created"), api.repo_exists("tester/nope")],
        )
        """,
    )
    assert out["first"] == ["tester/created", "model"]
    assert out["again"] == "tester/created"
    assert out["conflict"] == 409
    assert out["implicit"] == "tester/no-namespace"
    assert out["whoami"] == "tester"
    assert out["dataset"] == ["dataset", "tester/data", True]
    assert out["files"] == [".gitattributes"]  # a new repo starts like on the Hub
    assert out["exists"] == [True, False]


def test_upload_folder_and_download_roundtrip(hub: LocalHub, tmp_path: Path) -> None:
    folder = tmp_path / "upload"
    (folder / "nested").mkdir(parents=True)
    (folder / "notes.txt").write_text("a small text file\n")
    (folder / "nested" / "deep.txt").write_text("in a subfolder\n")
    # Above the 10 MB threshold: only the LFS batch + PUT path can carry it.
    (folder / "blob.dat").write_bytes(random.Random(0).randbytes(LFS_SIZE_THRESHOLD + 2**20))
    out = run_client(
        hub,
        tmp_path / "hf",
        """
        import io
        from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
        from huggingface_hub.file_download import http_get

        api, repo, folder = HfApi(), "tester/roundtrip", Path(ARGS["folder"])
        names = ["notes.txt", "nested/deep.txt", "blob.dat"]
        api.create_repo(repo)
        commit = api.upload_folder(repo_id=repo, folder_path=folder, commit_message="Upload")
        info = api.model_info(repo, files_metadata=True)
        same = {
            name: Path(hf_hub_download(repo, name)).read_bytes() == (folder / name).read_bytes()
            for name in names
        }
        # A resumed download: the client's own http_get sends "Range: bytes=N-".
        local = (folder / "blob.dat").read_bytes()
        buffer = io.BytesIO(local[:12345])
        buffer.seek(0, io.SEEK_END)
        http_get(hf_hub_url(repo, "blob.dat"), buffer, resume_size=12345, expected_size=len(local))
        emit(
            commit=[commit.oid, commit.repo_url.repo_id], sha=info.sha,
            files=api.list_repo_files(repo),
            lfs={s.rfilename: s.lfs is not None for s in info.siblings},
            sizes={s.rfilename: s.size for s in info.siblings},
            top_level=sorted(f.path for f in api.list_repo_tree(repo)),
            same=same, resumed=buffer.getvalue() == local,
        )
        """,
        folder=str(folder),
    )
    assert out["commit"] == [out["sha"], "tester/roundtrip"]
    assert len(out["sha"]) == 40
    assert out["files"] == [".gitattributes", "blob.dat", "nested/deep.txt", "notes.txt"]
    assert out["top_level"] == [".gitattributes", "blob.dat", "nested", "notes.txt"]
    assert out["lfs"] == {
        ".gitattributes": False,
        "blob.dat": True,
        "nested/deep.txt": False,
        "notes.txt": False,
    }
    assert out["sizes"]["blob.dat"] == LFS_SIZE_THRESHOLD + 2**20
    assert out["same"] == {"notes.txt": True, "nested/deep.txt": True, "blob.dat": True}
    assert out["resumed"] is True


def test_second_commit_keeps_first_revision(hub: LocalHub, tmp_path: Path) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "config.json").write_text('{"version": 1}')
    (folder / "model.safetensors").write_bytes(b"weights-v1")  # LFS through .gitattributes
    out = run_client(
        hub,
        tmp_path / "hf",
        """
        from huggingface_hub import HfApi, hf_hub_download

        api, repo = HfApi(), "tester/history"
        api.create_repo(repo)
        first = api.upload_folder(repo_id=repo, folder_path=ARGS["folder"]).oid
        second = api.upload_file(
            path_or_fileobj=b'{"version": 2}', path_in_repo="config.json", repo_id=repo
        ).oid
        # Identical content: the preupload oid lets the client skip the commit entirely.
        unchanged = api.upload_file(
            path_or_fileobj=b'{"version": 2}', path_in_repo="config.json", repo_id=repo
        ).oid

        def read(name, revision=None):
            return Path(hf_hub_download(repo, name, revision=revision)).read_text()

        emit(
            first=first, second=second, unchanged=unchanged,
            old=read("config.json", first), new=read("config.json"),
            weights=[read("model.safetensors", first), read("model.safetensors", second)],
            history=[c.commit_id for c in api.list_repo_commits(repo)],
            titles=[c.title for c in api.list_repo_commits(repo)],
            lfs=[s.rfilename for s in api.model_info(repo, files_metadata=True).siblings if s.lfs],
        )
        """,
        folder=str(folder),
    )
    assert out["first"] != out["second"]
    assert out["unchanged"] == out["second"]
    assert out["old"] == '{"version": 1}'
    assert out["new"] == '{"version": 2}'
    assert out["weights"] == ["weights-v1", "weights-v1"]
    assert out["history"][:2] == [out["second"], out["first"]]
    assert out["titles"][0] == "Upload config.json with huggingface_hub"
    assert out["titles"][-1] == "initial commit"
    assert out["lfs"] == ["model.safetensors"]


def test_missing_things_raise_the_client_errors(hub: LocalHub, tmp_path: Path) -> None:
    out = run_client(
        hub,
        tmp_path / "hf",
        """
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
        )

        api = HfApi()
        api.create_repo("tester/errors")
        api.upload_file(path_or_fileobj=b"x", path_in_repo="present.txt", repo_id="tester/errors")

        def error_of(call, *args, **kwargs):
            try:
                call(*args, **kwargs)
            except Exception as err:
                kinds = (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
                base = next((k.__name__ for k in kinds if isinstance(err, k)), None)
                return [type(err).__name__, base]
            return None

        emit(
            file=error_of(hf_hub_download, "tester/errors", "missing.txt"),
            repo=error_of(hf_hub_download, "tester/nowhere", "present.txt"),
            repo_info=error_of(api.model_info, "tester/nowhere"),
            revision=error_of(hf_hub_download, "tester/errors", "present.txt", revision="nope"),
            tree=error_of(api.list_repo_files, "tester/nowhere"),
            exists=[api.file_exists("tester/errors", "present.txt"),
                    api.file_exists("tester/errors", "missing.txt")],
        )
        """,
    )
    assert out["file"] == ["RemoteEntryNotFoundError", "EntryNotFoundError"]
    assert out["repo"] == ["RepositoryNotFoundError", "RepositoryNotFoundError"]
    assert out["repo_info"] == ["RepositoryNotFoundError", "RepositoryNotFoundError"]
    assert out["revision"] == ["RevisionNotFoundError", "RevisionNotFoundError"]
    assert out["tree"] == ["RepositoryNotFoundError", "RepositoryNotFoundError"]
    assert out["exists"] == [True, False]


def test_branches_and_pull_requests(hub: LocalHub, tmp_path: Path) -> None:
    out = run_client(
        hub,
        tmp_path / "hf",
        """
        from huggingface_hub import HfApi, hf_hub_download

        api, repo = HfApi(), "tester/branches"
        api.create_repo(repo)
        api.create_branch(repo, branch="dev")
        api.create_branch(repo, branch="dev", exist_ok=True)
        api.upload_file(path_or_fileobj=b"dev", path_in_repo="f.txt", repo_id=repo, revision="dev")
        pr = api.upload_file(
            path_or_fileobj=b"pr", path_in_repo="f.txt", repo_id=repo, create_pr=True
        )
        refs = api.list_repo_refs(repo, include_pull_requests=True)
        emit(
            branches=sorted(b.name for b in refs.branches),
            prs=[p.ref for p in refs.pull_requests], pr_revision=pr.pr_revision,
            dev=Path(hf_hub_download(repo, "f.txt", revision="dev")).read_text(),
            pr=Path(hf_hub_download(repo, "f.txt", revision=pr.pr_revision)).read_text(),
            main=api.list_repo_files(repo),
        )
        """,
    )
    assert out["branches"] == ["dev", "main"]
    assert out["prs"] == ["refs/pr/1"]
    assert out["pr_revision"] == "refs/pr/1"
    assert (out["dev"], out["pr"]) == ("dev", "pr")
    assert out["main"] == [".gitattributes"]


def test_timm_push_to_hub_and_load_back(hub: LocalHub, tmp_path: Path) -> None:
    saved = tmp_path / "reference.pt"
    pushed = run_client(
        hub,
        tmp_path / "hf-push",
        """
        import timm, torch
        from huggingface_hub import HfApi
        from timm.models import push_to_hf_hub

        torch.manual_seed(0)
        model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(123))
        with torch.no_grad():
            logits = model(x)
        push_to_hf_hub(model, "tester/tiny", commit_message="Add tiny model")
        torch.save({"x": x, "logits": logits}, ARGS["saved"])
        emit(files=HfApi().list_repo_files("tester/tiny"))
        """,
        saved=str(saved),
    )
    # A fresh process and an empty cache: the weights can only come from the server.
    loaded = run_client(
        hub,
        tmp_path / "hf-load",
        """
        import timm, torch

        reference = torch.load(ARGS["saved"])
        torch.manual_seed(1)  # a different init, so equal logits prove the weights were loaded
        model = timm.create_model("hf-hub:tester/tiny", pretrained=True).eval()
        scratch = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
        with torch.no_grad():
            logits, scratch_logits = model(reference["x"]), scratch(reference["x"])
        emit(
            shape=list(logits.shape),
            diff=float((logits - reference["logits"]).abs().max()),
            scratch_diff=float((scratch_logits - reference["logits"]).abs().max()),
        )
        """,
        saved=str(saved),
    )
    assert {"config.json", "model.safetensors", "README.md"} <= set(pushed["files"])
    assert loaded["shape"] == [2, 3]
    assert loaded["diff"] <= 1e-6
    assert loaded["scratch_diff"] > 1e-3


def test_upload_mode_rules() -> None:
    patterns = lfs_patterns(DEFAULT_GITATTRIBUTES)
    assert "*.safetensors" in patterns
    assert choose_upload_mode("notes.txt", 5, b"text\n", patterns) == "regular"
    assert choose_upload_mode("sub/model.safetensors", 2, b"{}", patterns) == "lfs"
    assert choose_upload_mode("raw.dat", 2, b"\x00\x01", patterns) == "lfs"  # binary
    assert choose_upload_mode("big.txt", LFS_SIZE_THRESHOLD + 1, b"aaa", patterns) == "lfs"


def test_script_mode_prints_endpoint_and_serves(tmp_path: Path) -> None:
    script = Path(__file__).with_name("local_hub.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--root", str(tmp_path / "root"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()
        request = urllib.request.Request(
            f"{endpoint}/api/whoami-v2", headers={"Authorization": "Bearer anything"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            whoami = json.load(response)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert endpoint.startswith("http://127.0.0.1:")
    assert whoami["name"] == "tester"
