"""What the training commands print of a failure under torchrun (rank_zero.option_error, options_parsed,
peer_failure; determinism.run_command): an option's error once, and a rank stopped by another's failure in one line
(helper-321: each rank printed the option's error; rank 0 printed gloo's "Connection closed by peer" traceback)."""

import os
from types import SimpleNamespace

import pytest
import torch.distributed as dist
from _torchrun import HERE, torchrun

from masksub_kernels.training import rank_zero
from masksub_kernels.training.determinism import run_command

TINY_VIT = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=16", "patch_size=4", "embed_dim=16",
            "depth=1", "num_heads=2", "--img-size", "16", "--no-progress", "--device", "cpu"]  # fmt: skip


def test_an_option_error_is_printed_once_under_torchrun(tmp_path):
    result = torchrun("-m", "masksub_kernels.train", *TINY_VIT, "--lr", "-1", "--output", str(tmp_path / "o"))
    assert result.returncode != 0
    assert result.stderr.count("masksub-train: error: --lr must be in (0.0, inf), got -1.0") == 1, result.stderr
    result = torchrun("-m", "masksub_kernels.train", "--help")  # once too (it was each rank's)
    assert result.returncode == 0 and result.stdout.count("usage: masksub-train") == 1, result.stdout


def test_a_rank_stopped_by_another_ranks_failure_prints_one_line():
    result = torchrun(os.path.join(HERE, "errors_worker.py"))
    assert result.returncode != 0
    err = result.stderr
    # the failing rank's own error in full, traceback and all; the other rank's one line instead of gloo's
    assert "ValueError: rank 1's own failure: bad image broken.png" in err and "in body" in err, err
    said = "masksub-test: rank 0: stopped by a failed collective (RuntimeError: "
    assert said in err and "most likely another rank failed; see its message above" in err, err
    assert "[rank1]: Traceback" in err and "[rank0]: Traceback" not in err, err  # (then torchrun's own report)


@pytest.fixture
def other_local_rank(monkeypatch):
    """This process as torchrun's local rank 1 of 2 (before its process group), without the wait."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # (torchrun's agent: without it every process prints)
    monkeypatch.setattr(rank_zero, "OPTION_ERROR_WAIT_S", 0.0, raising=False)  # (raising: the test ran before it)


@pytest.mark.parametrize("command", ["train", "mlm"])
def test_option_errors_are_local_rank_zeros(command, other_local_rank, capsys, monkeypatch, tmp_path):
    # argparse's error and a check of the options before the process group: rank 0's to print; the other local ranks
    # exit with the same status, silently
    if command == "train":
        from masksub_kernels.training.cli import main

        bad_check = [*TINY_VIT, "--lr", "-1", "--output", str(tmp_path / "o")]
    else:
        from masksub_kernels.training.mlm_cli import main

        bad_check = ["--steps", "0", "--output", str(tmp_path / "o"), "--device", "cpu"]
    with pytest.raises(SystemExit) as exc:
        main(["--no-such-option"])
    assert exc.value.code == 2 and capsys.readouterr().err == ""
    assert main(bad_check) == 2 and capsys.readouterr().err == ""
    monkeypatch.setenv("LOCAL_RANK", "0")  # (on every machine: its local rank 0 prints)
    with pytest.raises(SystemExit):
        main(["--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    assert main(bad_check) == 2 and "error: --" in capsys.readouterr().err


def test_a_config_files_error_is_local_rank_zeros(other_local_rank, capsys, tmp_path):
    from masksub_kernels.training.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("no_such_option: 1\n")
    assert main(["--config", str(config)]) == 2 and capsys.readouterr().err == ""


def test_peer_failure_reads_gloo_and_nccl_messages(monkeypatch):
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:26796")
    nccl = dist.DistBackendError("NCCL error: remote process exited or there was a network error")
    assert rank_zero.peer_failure(gloo) is None  # no process group: not another rank's failure
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    tail = (
        "most likely another rank failed; see its message above (none from a rank killed by a signal, such as the "
        "out-of-memory killer's: torchrun's summary names it)"
    )
    assert rank_zero.peer_failure(gloo) == (
        "rank 3: stopped by a failed collective (RuntimeError: [../gloo/transport/tcp/pair.cc:561] Connection closed "
        f"by peer [127.0.0.1]:26796): {tail}"
    )
    assert rank_zero.peer_failure(nccl) == (
        "rank 3: stopped by a failed collective (DistBackendError: NCCL error: remote process exited or there was a "
        f"network error): {tail}"  # (the first line kept: a network fault reads the same)
    )
    assert rank_zero.peer_failure(RuntimeError("CUDA out of memory")) is None  # a rank's own error: its traceback
    assert rank_zero.peer_failure(ValueError("Connection closed by peer")) is None
    # helper-323: a rank's own RuntimeError quoting a broken pipe (a compile worker's) is no collective's
    assert rank_zero.peer_failure(RuntimeError("compile worker died:\nBrokenPipeError: [Errno 32] Broken pipe")) is None
    from torch._dynamo.exc import BackendCompilerFailed

    compile_error = BackendCompilerFailed.__new__(BackendCompilerFailed)
    RuntimeError.__init__(compile_error, "gloo-named backend failed: Broken pipe")
    assert rank_zero.peer_failure(compile_error) is None


def test_a_single_process_with_rank_variables_set_by_hand_prints_its_option_error(monkeypatch, capsys):
    # helper-323: LOCAL_RANK / WORLD_SIZE set by hand (no torchrun agent) silenced the process's own error, after 10 s
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert rank_zero.option_error("prog", "bad option") == 2
    assert capsys.readouterr().err == "prog: error: bad option\n"


def test_run_command_prints_the_one_line_for_a_peers_failure(monkeypatch, capsys):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)

    def body(args):
        raise dist.DistBackendError("[pair.cc:561] Connection closed by peer [127.0.0.1]:1")

    assert run_command("prog", body, SimpleNamespace(deterministic=False)) == 1
    said = capsys.readouterr().err
    assert said.startswith("prog: rank 0: stopped by a failed collective (DistBackendError: [pair.cc:561] Connection")

    def own(args):
        raise RuntimeError("a rank's own failure")

    with pytest.raises(RuntimeError, match="own failure"):  # its traceback, as before
        run_command("prog", own, SimpleNamespace(deterministic=False))


# helper-327's mutation audit of rank_zero / run_command: each kills the survivor its comment names
@pytest.fixture
def group_of(monkeypatch):
    """A process group of ``n`` ranks as peer_failure sees it (this process rank 0)."""

    def make(n):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda: n)
        monkeypatch.setattr(dist, "get_rank", lambda: 0)

    return make


def test_silent_local_rank_needs_two_ranks_and_torchruns_numbers(monkeypatch):
    # kills R2 (WORLD_SIZE > 1 -> >= 1) and R4 (a non-numeric LOCAL_RANK silenced the process)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not rank_zero._silent_local_rank()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_zero._silent_local_rank()
    monkeypatch.setenv("LOCAL_RANK", "one")
    assert not rank_zero._silent_local_rank()


def test_ctrl_c_in_the_wait_still_exits_with_the_options_status(monkeypatch, capsys):
    # kills R5 (KeyboardInterrupt in the wait re-raised: a traceback instead of status 2)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(rank_zero.time, "sleep", interrupted)
    assert rank_zero.option_error("prog", "bad option") == 2
    assert capsys.readouterr().err == ""


def test_help_on_a_silent_rank_does_not_wait(monkeypatch, capsys):
    # kills R6 (options_parsed waited on --help's SystemExit(0) too); --help printed by local rank 0 alone
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    waits = []
    monkeypatch.setattr(rank_zero, "_wait_for_local_rank_zero", lambda: waits.append(1))
    for code in (0, None):
        with pytest.raises(SystemExit), rank_zero.options_parsed():
            print("usage: masksub-train [-h] ...")
            raise SystemExit(code)
    assert waits == [] and capsys.readouterr().out == ""
    with pytest.raises(SystemExit), rank_zero.options_parsed():
        raise SystemExit(2)
    assert waits == [1]


def test_inductor_errors_are_never_a_peers_failure(group_of):
    # kills R8 (only torch._dynamo's module excluded)
    group_of(2)
    from torch._inductor.exc import InductorError

    err = InductorError.__new__(InductorError)
    RuntimeError.__init__(err, "gloo: compile worker: Broken pipe")
    assert type(err).__module__.startswith("torch._inductor")
    assert rank_zero.peer_failure(err) is None
    assert rank_zero.peer_failure(RuntimeError("gloo: Broken pipe")) is not None  # the same text, a collective's


def test_gloo_must_be_named_on_the_first_line(group_of):
    # kills R9 ("gloo" looked for in the whole text)
    group_of(2)
    own = RuntimeError("my data loader failed\n  in /opt/gloo_utils/reader.py: Broken pipe")
    assert rank_zero.peer_failure(own) is None


def test_a_group_of_one_rank_has_no_peer(group_of):
    # kills R10 (world size < 2 -> < 1)
    group_of(1)
    assert rank_zero.peer_failure(RuntimeError("[gloo] Connection closed by peer")) is None


def test_the_line_keeps_only_the_first_line_shortened(group_of):
    # kills R11 (no cut at 200 characters) and R12 (the whole text kept, not its first line)
    group_of(2)
    said = rank_zero.peer_failure(RuntimeError("[gloo] Connection closed by peer\nException raised from pair.cc"))
    assert "Exception raised from" not in said and "\n" not in said
    long = "[gloo] Connection closed by peer " + "x" * 300
    said = rank_zero.peer_failure(RuntimeError(long))
    assert f"(RuntimeError: {long[:197]}...)" in said


@pytest.mark.parametrize("gone", ["Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                  "remote process exited"])  # fmt: skip
def test_each_way_a_peer_is_reported_gone(group_of, gone):
    # kills R13 / R14 (a message dropped from _PEER_GONE)
    group_of(2)
    assert rank_zero.peer_failure(dist.DistBackendError(f"backend error: {gone}")) is not None


def test_a_usage_error_inside_the_process_group_is_every_ranks(monkeypatch, capsys):
    # kills D1 (run_command sent a UsageError raised after init_process_group to option_error: local rank > 0 silent)
    from masksub_kernels.training.run_setup import UsageError

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(rank_zero, "OPTION_ERROR_WAIT_S", 0.0)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)

    def body(args):
        raise UsageError("rank 1's token cache is stale")

    assert run_command("prog", body, SimpleNamespace(deterministic=False)) == 2
    assert capsys.readouterr().err == "prog: error: rank 1's token cache is stale\n"
