"""Publish a bundle folder as a Hugging Face model repo (or list what would be uploaded with --dry-run).

    python -m training.publish --bundle BUNDLE --repo-id ORG/NAME [--revision R] [--dry-run]

Refuses folders that are not bundles or that hold pickle-format weights. The token comes from
`HF_TOKEN` or `huggingface-cli login`, as huggingface_hub reads it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.cli import run
from xai.bundle import BundleError, load

PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy"}
SKIPPED = {"__pycache__", ".git", ".cache"}


def bundle_files(folder: Path) -> list[Path]:
    """Files to upload (relative paths); BundleError for a non-bundle or a folder with pickled weights."""
    bundle = load(folder)  # validates bundle.json
    files = sorted(p.relative_to(folder) for p in folder.rglob("*")
                   if p.is_file() and not (set(p.relative_to(folder).parts) & SKIPPED))
    pickles = [str(p) for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise BundleError(
            f"{folder} holds pickle-format files ({', '.join(pickles)}); bundles publish safetensors only.")
    for component in bundle.metadata.components.values():
        if not (folder / str(component.weights)).is_file():
            raise BundleError(f"{folder} is missing {component.weights} listed in bundle.json.")
    if "README.md" not in {str(p) for p in files}:
        raise BundleError(f"{folder} has no model card (README.md); re-run a training script to write it.")
    return files


def publish(folder: Path, repo_id: str, revision: str | None = None, private: bool = False,
            token: str | None = None) -> str:
    """Create the repo (and branch) if needed and upload the bundle; returns the commit URL. `token`: a user's
    own (the app's Sign in with Hugging Face), used for this upload only; else huggingface_hub's stored one."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    bundle_files(folder)
    api = HfApi(token=token)
    category = load(folder).metadata.category
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                                 commit_message=f"defect-xai bundle: {category or folder.name}",
                                 ignore_patterns=[f"{d}/**" for d in SKIPPED])
    except OfflineModeIsEnabled:
        raise BundleError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it (or use --dry-run).") from None
    except (HfHubHTTPError, OSError) as exc:
        raise BundleError(f"Upload to {repo_id} failed: {str(exc).splitlines()[0]}") from None
    return str(getattr(info, "commit_url", info))


def dry_run(folder: Path, repo_id: str, revision: str | None = None) -> str:
    """What `publish` would upload, one line a file and a total; nothing leaves the machine."""
    files = bundle_files(Path(folder))
    sizes = [(Path(folder) / rel).stat().st_size for rel in files]
    lines = [f"{size / 1e6:9.2f} MB  {rel}" for rel, size in zip(files, sizes)]
    target = repo_id + (f"@{revision}" if revision else "")
    return "\n".join([*lines, f"dry run: would upload {len(files)} files ({sum(sizes) / 1e6:.1f} MB) to {target}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.publish", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, help="bundle folder")
    parser.add_argument("--repo-id", required=True, help="Hub model repo, ORG/NAME")
    parser.add_argument("--revision", help="branch to upload to (created if missing); default main")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network")
    args = parser.parse_args(argv)
    folder = Path(args.bundle)
    if "/" not in args.repo_id or args.repo_id.count("/") != 1:
        raise BundleError(f"--repo-id must look like ORG/NAME, got {args.repo_id!r}.")
    if args.dry_run:
        print(dry_run(folder, args.repo_id, args.revision))
        return 0
    print(publish(folder, args.repo_id, args.revision, args.private))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
