"""runlog.run_provenance: what log.json's meta records of where a run ran (helper-304's probe)."""

import io
import os
import subprocess

import pytest
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


# helper-309's mutation audit
def _fake_git(diff_rc, calls=None):
    """A _git whose rev-parse answers the package's own checkout (its top at the package's parent) and whose diff
    exits with diff_rc (None: git hung or missing)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(runlog.__file__))))

    def git(where, *args):
        if calls is not None:
            calls.append(args)
        if args[0] == "rev-parse":
            return subprocess.CompletedProcess(args, 0, f"{root}\n{'1' * 40}\n", "")
        if args[0] == "ls-files":  # the package is tracked
            return subprocess.CompletedProcess(args, 0, "masksub_kernels/__init__.py\n", "")
        return None if diff_rc is None else subprocess.CompletedProcess(args, diff_rc, "", "")

    return git


def test_git_dirty_is_diffs_exit_status_against_head(monkeypatch):
    # kills runlog.py `else diff.returncode == 1)` -> `== 0)` (dirty inverted), `diff.returncode not in (0, 1)` ->
    # `False` (a failed diff, 128, recorded as clean), and `"diff", "--quiet", "HEAD", "--"` -> `"diff", "--quiet"`
    # (staged changes not counted: git diff without HEAD compares the work tree with the index)
    calls = []
    for rc, dirty in ((0, False), (1, True), (128, None), (None, None)):
        monkeypatch.setattr(runlog, "_git", _fake_git(rc, calls))
        assert runlog._git_commit() == ("1" * 40, dirty), rc
    assert calls[2] == ("diff", "--quiet", "HEAD", "--")


def test_cpu_model_reads_the_model_name_line_not_the_model_number(monkeypatch):
    # kills runlog.py `line.startswith("model name")` -> `line.startswith("model")` (x86's cpuinfo has a
    # `model : 85` line before `model name`: the CPU was recorded as "85")
    real_open = open
    cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmodel name\t: Intel Xeon Gold\n"

    def fake(path, *args, **kwargs):
        return io.StringIO(cpuinfo) if path == "/proc/cpuinfo" else real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake)
    assert runlog._cpu_model() == "Intel Xeon Gold"


def test_gpu_is_named_on_cuda_and_a_failing_name_is_none(monkeypatch):
    # kills runlog.py `if device.type == "cuda":` -> `== "cpu"` (no GPU name on CUDA; the CPU test alone passes
    # because the mutant's get_device_name on a CPU device raises into the except) and the `except Exception: gpu =
    # None` -> `finally: pass` (a CUDA name that fails stops the run)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 80GB")
    assert runlog.run_provenance("cuda:0")["gpu"] == "Fake GPU 80GB"
    assert runlog.run_provenance("cpu")["gpu"] is None

    def broken(device=None):
        raise RuntimeError("no CUDA driver")

    monkeypatch.setattr(torch.cuda, "get_device_name", broken)
    assert runlog.run_provenance(torch.device("cuda"))["gpu"] is None


# helper-343's mutation audit of runlog.py
def test_a_hung_git_or_an_odd_answer_records_no_commit_and_never_stops_the_run(monkeypatch):
    # kills _git's `timeout=10` -> `timeout=None` (a git that hangs, on a stale NFS lock or a credential prompt, hung
    # the run's start), its `except (OSError, subprocess.SubprocessError, ValueError)` -> `except OSError` (git's
    # TimeoutExpired stopped the run) and _git_commit's `if len(lines) != 2` -> `if len(lines) < 1` (a rev-parse
    # answer of one line: a ValueError unpacking it)
    def hung(argv, **kwargs):
        if kwargs.get("timeout") is None:
            pytest.fail(f"git run without a timeout: {argv}")
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    monkeypatch.setattr(runlog.subprocess, "run", hung)
    assert runlog._git_commit() == (None, None)
    assert runlog.run_provenance("cpu")["git_commit"] is None
    monkeypatch.setattr(runlog, "_git", lambda root, *a: subprocess.CompletedProcess(a, 0, b"/only/one/line\n", b""))
    assert runlog._git_commit() == (None, None)
