"""runlog.run_provenance: what log.json's meta records of where a run ran (helper-304's probe)."""

import os
import subprocess

import torch

from masksub_kernels.training import runlog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_provenance_of_a_checkout_on_the_cpu():
    p = runlog.run_provenance("cpu")
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    assert p["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert p["torch_threads"] == torch.get_num_threads() and p["gpu"] is None and p["cpu"]
    assert p["started_utc"].endswith("+00:00") and p["started_utc"][:4].isdigit()
    assert set(p) == {"git_commit", "git_dirty", "started_utc", "cpu", "torch_threads", "gpu"}


def test_no_git_or_no_checkout_records_none_and_never_fails(monkeypatch, tmp_path):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(runlog.subprocess, "run", no_git)
    p = runlog.run_provenance(torch.device("cpu"))
    assert p["git_commit"] is None and p["git_dirty"] is None and p["torch_threads"] >= 1
    monkeypatch.undo()
    # a repository whose top is not the package's parent (a wheel under some other checkout): not its commit
    monkeypatch.setattr(runlog, "_git", lambda root, *a: subprocess.CompletedProcess(a, 0, f"{tmp_path}\n{'0' * 40}\n"))
    assert runlog._git_commit() == (None, None)
    monkeypatch.setattr(runlog, "_git", lambda root, *a: subprocess.CompletedProcess(a, 128, "", "not a repository"))
    assert runlog._git_commit() == (None, None)


def test_cpu_model_falls_back_to_platform(monkeypatch):
    real_open = open

    def no_cpuinfo(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            raise OSError("no /proc")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_cpuinfo)
    monkeypatch.setattr(runlog.platform, "processor", lambda: "some cpu")
    assert runlog._cpu_model() == "some cpu"
    monkeypatch.setattr(runlog.platform, "processor", lambda: "")
    assert runlog._cpu_model() is None


# helper-308: the top folder was split on whitespace (a path with a space recorded no commit) and git's output
# decoded strictly (a path with a byte that is not UTF-8 raised UnicodeDecodeError and stopped the run)
def test_a_checkout_path_with_a_space_or_other_bytes_records_its_commit(monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    for top in (b"/tmp/sp ace/p", b"/tmp/\xff/p"):
        answers = {"rev-parse": subprocess.CompletedProcess([], 0, top + b"\n" + commit.encode() + b"\n", b"\xff"),
                   "diff": subprocess.CompletedProcess([], 1, b"", b""),
                   "ls-files": subprocess.CompletedProcess([], 0, b"masksub_kernels/__init__.py\n", b"")}  # fmt: skip
        monkeypatch.setattr(runlog, "__file__", os.fsdecode(top) + "/masksub_kernels/training/runlog.py")
        monkeypatch.setattr(runlog, "_git", lambda root, *args, answers=answers: answers[args[0]])
        assert runlog._git_commit() == (commit, True)
    # helper-310: a repository the package was installed into (pip install --target a folder that is one) does not
    # track it: not the package's commit
    answers["ls-files"] = subprocess.CompletedProcess([], 1, b"", b"error: pathspec did not match")
    assert runlog._git_commit() == (None, None)
