"""o365-mailbox-exporter: a Microsoft 365 service-desk mailbox broke? Know before customers do."""

__version__ = "0.1.0"


def revision() -> str:
    """The source revision this runs from, where known: a commit recorded by pip for a VCS
    install (direct_url.json), else the commit a git checkout around the package points at
    (read from .git, no subprocess), else ""."""
    import json
    from importlib import metadata
    from pathlib import Path

    try:
        direct_url = metadata.distribution("o365-mailbox-exporter").read_text("direct_url.json")
        commit = json.loads(direct_url or "{}").get("vcs_info", {}).get("commit_id", "")
        if commit:
            return str(commit)[:12]
    except (metadata.PackageNotFoundError, ValueError, AttributeError):
        pass
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        if git.is_file():  # a worktree or submodule: `gitdir: PATH`
            git = (git.parent / git.read_text().strip().removeprefix("gitdir: ")).resolve()
        common = git
        if (git / "commondir").is_file():  # a worktree's refs live in the main repository
            common = (git / (git / "commondir").read_text().strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = common / ref
            if ref_file.is_file():
                head = ref_file.read_text().strip()
            else:
                packed = (common / "packed-refs").read_text().splitlines()
                head = next((line.split()[0] for line in packed if line.endswith(" " + ref)), "")
        return head[:12] if len(head) >= 12 and all(c in "0123456789abcdef" for c in head) else ""
    except OSError:
        return ""
