"""The bad-input table: every command, every flag, the invalid values a user can type.

Each case must end with exit status 2, exactly one line on stderr (no traceback), and the
working directory byte-for-byte as it was (nothing created, nothing removed): every check
runs before the first forward pass and before anything is written.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from cli_runner import run_cli  # tests/cli/cli_runner.py

# (id, argv, words the one error line must contain). Paths are relative to the workspace
# built by ``workspace`` below: userdir/ holds a user's files, afile is a regular file,
# lowrank-prev/ is a previous lowrank output.
CASES: list[tuple[str, list[str], list[str]]] = [
    # lowrank compress: method options
    ("compress-keep-zero", ["compress", "--keep", "0"], ["keep", "(0, 1]"]),
    ("compress-keep-above-one", ["compress", "--keep", "1.5"], ["keep", "(0, 1]"]),
    ("compress-keep-negative", ["compress", "--keep", "-0.2"], ["keep", "(0, 1]"]),
    ("compress-keep-nan", ["compress", "--keep", "nan"], ["keep"]),
    ("compress-keep-text", ["compress", "--keep", "most"], ["--keep"]),
    ("compress-method-unknown", ["compress", "--method", "tucker-magic"], ["tucker-magic"]),
    ("compress-alloc-unknown", ["compress", "--alloc", "psychic"], ["psychic"]),
    ("compress-mode-unknown", ["compress", "--method", "svdllm", "--mode", "sideways"],
     ["sideways"]),
    ("compress-mode-foreign", ["compress", "--method", "svd", "--mode", "sequential"],
     ["mode"]),
    ("compress-min-keep", ["compress", "--method", "svd", "--min-keep", "2"], ["min_keep"]),
    ("compress-max-keep", ["compress", "--method", "svd", "--max-keep", "-1"], ["max_keep"]),
    ("compress-rank-align", ["compress", "--method", "svd", "--rank-align", "0"],
     ["rank_align"]),
    ("compress-rank-text", ["compress", "--method", "eora", "--rank", "big"], ["--rank"]),
    ("compress-rank-zero", ["compress", "--method", "eora", "--rank", "0"], ["rank"]),
    ("compress-base-unknown", ["compress", "--method", "eora", "--base", "zip"], ["zip"]),
    ("compress-set-no-equals", ["compress", "--set", "bits"], ["--set", "key=value"]),
    ("compress-set-unknown-field", ["compress", "--method", "svd", "--set", "wings=2"],
     ["wings"]),
    ("compress-set-out-of-range", ["compress", "--set", "embedding_floor=5"],
     ["embedding_floor"]),
    ("compress-adapter-not-eora", ["compress", "--method", "svd", "--adapter", "ad"],
     ["--adapter", "eora"]),
    ("compress-adapter-foreign-dir", ["compress", "--method", "eora", "--adapter", "userdir"],
     ["userdir", "--overwrite"]),
    ("compress-adapter-inside-out", ["compress", "--method", "eora", "--adapter",
                                     "newout/ad", "--out", "newout"], ["parent directory"]),
    ("compress-adapter-is-out", ["compress", "--method", "eora", "--adapter", "same",
                                 "--out", "same"], ["overlap"]),
    # data
    ("compress-data-missing", ["compress", "--data", "no-such.txt"], ["no-such.txt"]),
    ("compress-data-empty", ["compress", "--data", "empty.txt"], ["empty.txt", "empty"]),
    ("compress-data-binary", ["compress", "--data", "binary.txt"], ["binary.txt", "UTF-8"]),
    ("compress-data-control-bytes", ["compress", "--data", "nul.txt"], ["nul.txt"]),
    ("compress-data-one-word", ["compress", "--data", "one_word.txt"],
     ["one_word.txt", "at least"]),
    ("compress-data-too-few", ["compress", "--data", "few.txt"], ["few.txt", "at least"]),
    ("compress-data-directory", ["compress", "--data", "userdir"], ["userdir"]),
    ("compress-eval-data-missing", ["compress", "--eval-data", "no-such.txt"],
     ["no-such.txt"]),
    ("compress-eval-data-one-word", ["compress", "--eval-data", "one_word.txt"],
     ["one_word.txt", "at least"]),
    # output
    ("compress-out-foreign-dir", ["compress", "--out", "userdir"], ["userdir", "--overwrite"]),
    ("compress-out-cwd", ["compress", "--out", "."], ["current directory"]),
    ("compress-out-cwd-overwrite", ["compress", "--out", ".", "--overwrite"],
     ["current directory"]),
    ("compress-out-parent", ["compress", "--out", "..", "--overwrite"],
     ["holds the current directory"]),
    ("compress-out-file", ["compress", "--out", "afile"], ["afile", "is a file"]),
    ("compress-out-missing-parent", ["compress", "--out", "no/such/dir"],
     ["does not exist"]),
    ("compress-out-read-only", ["compress", "--out", "/proc/lowrank-out"],
     ["cannot write"]),
    ("compress-out-empty", ["compress", "--out", ""], ["empty"]),
    # device, counts, lengths
    ("compress-device-cuda", ["compress", "--device", "cuda"], ["cuda"]),
    ("compress-device-cuda-index", ["compress", "--device", "cuda:7"], ["cuda:7"]),
    ("compress-device-unknown", ["compress", "--device", "toaster"], ["toaster"]),
    ("compress-device-meta", ["compress", "--device", "meta"], ["meta"]),
    ("compress-samples-zero", ["compress", "--samples", "0"], ["samples", "0"]),
    ("compress-samples-negative", ["compress", "--samples", "-5"], ["samples", "-5"]),
    ("compress-samples-too-few", ["compress", "--samples", "3"], ["samples", "3"]),
    ("compress-samples-text", ["compress", "--samples", "many"], ["--samples"]),
    ("compress-finetune-negative", ["compress", "--finetune-steps", "-1"], ["finetune_steps"]),
    ("compress-seq-len-one", ["compress", "--seq-len", "1"], ["seq_len", "1"]),
    ("compress-seq-len-too-long", ["compress", "--seq-len", "1000"], ["1000", "512"]),
    ("compress-seed-negative", ["compress", "--seed", "-1"], ["seed", "-1"]),
    ("compress-targets-nothing", ["compress", "--method", "svd", "--targets", "nosuchlayer"],
     ["nosuchlayer"]),
    ("compress-ignore-everything", ["compress", "--method", "svd", "--ignore", "re:.*"],
     ["re:.*"]),
    ("compress-targets-bad-regex", ["compress", "--method", "svd", "--targets", "re:(["],
     ["re:(["]),
    ("compress-pipeline-unknown", ["compress", "--pipeline", "blocks"],
     ["--pipeline", "blocks"]),
    ("compress-dtype-unknown", ["compress", "--dtype", "fp16"], ["dtype", "fp16"]),
    ("compress-sequential-whole", ["compress", "--sequential", "--pipeline", "whole"],
     ["--sequential"]),
    ("compress-max-shard-size-text", ["compress", "--max-shard-size", "big"],
     ["--max-shard-size", "big"]),
    ("compress-max-shard-size-zero", ["compress", "--max-shard-size", "0"],
     ["--max-shard-size", "0"]),
    # model argument
    ("compress-model-missing", ["compress", "./no/such/model"], ["does not exist"]),
    ("compress-model-typo", ["compress", "minlm"], ["minlm"]),
    ("compress-model-empty-dir", ["compress", "userdir/sub/empty"], ["holds no model"]),
    ("compress-unknown-flag", ["compress", "--kep", "0.5"], ["--kep"]),
    # lowrank eval
    ("eval-model-missing", ["eval", "./no/such/model"], ["does not exist"]),
    ("eval-model-typo", ["eval", "minlm"], ["minlm"]),
    ("eval-data-missing", ["eval", "--data", "no-such.txt"], ["no-such.txt"]),
    ("eval-data-one-word", ["eval", "--data", "one_word.txt"], ["one_word.txt", "at least"]),
    ("eval-device-cuda", ["eval", "--device", "cuda"], ["cuda"]),
    ("eval-seq-len-too-long", ["eval", "--seq-len", "4096"], ["4096"]),
    ("eval-seq-len-zero", ["eval", "--seq-len", "0"], ["seq_len"]),
    ("eval-bad-manifest", ["eval", "badmanifest"], ["lowrank.json"]),
    # lowrank inspect
    ("inspect-keep-zero", ["inspect", "--keep", "0"], ["keep"]),
    ("inspect-keep-two", ["inspect", "--keep", "2"], ["keep"]),
    ("inspect-plot-suffix", ["inspect", "--plot", "spectra.txt"], ["spectra.txt", ".png"]),
    ("inspect-plot-directory", ["inspect", "--plot", "userdir.png"], ["directory"]),
    ("inspect-plot-missing-dir", ["inspect", "--plot", "no/such/spectra.png"],
     ["does not exist"]),
    ("inspect-model-typo", ["inspect", "minlm"], ["minlm"]),
    ("inspect-targets-nothing", ["inspect", "--targets", "nosuchlayer"], ["nosuchlayer"]),
    # lowrank report
    ("report-missing-argument", ["report"], ["directory"]),
    ("report-no-report", ["report", "userdir"], ["report.json"]),
    ("report-json-list", ["report", "listreport"], ["list"]),
    ("report-json-invalid", ["report", "badreport"], ["JSON"]),
    ("report-json-incomplete", ["report", "partialreport"], ["report"]),
    # lowrank train
    ("train-method-unknown", ["train", "--method", "sgd-magic"], ["sgd-magic"]),
    ("train-steps-zero", ["train", "--steps", "0"], ["steps"]),
    ("train-steps-negative", ["train", "--steps", "-3"], ["steps"]),
    ("train-rank-zero", ["train", "--rank", "0"], ["rank"]),
    ("train-rank-above-width", ["train", "--rank", "4096"], ["rank", "4096"]),
    ("train-lr-nan", ["train", "--lr", "nan"], ["lr"]),
    ("train-lr-inf", ["train", "--lr", "inf"], ["lr"]),
    ("train-lr-negative", ["train", "--lr", "-1e-3"], ["lr"]),
    ("train-batch-zero", ["train", "--batch-size", "0"], ["batch_size"]),
    ("train-seq-len-zero", ["train", "--seq-len", "0"], ["seq_len"]),
    ("train-hidden-zero", ["train", "--hidden", "0"], ["hidden"]),
    ("train-hidden-heads", ["train", "--hidden", "130"], ["hidden", "heads"]),
    ("train-layers-zero", ["train", "--layers", "0"], ["layers"]),
    ("train-gap-zero", ["train", "--update-proj-gap", "0"], ["update_proj_gap"]),
    ("train-per-layer-adamw", ["train", "--method", "adamw", "--per-layer"], ["per-layer"]),
    ("train-seed-negative", ["train", "--seed", "-1"], ["seed"]),
    ("train-out-foreign-dir", ["train", "--out", "userdir"], ["userdir", "--overwrite"]),
    ("train-out-cwd", ["train", "--out", ".", "--overwrite"], ["current directory"]),
    ("train-out-file", ["train", "--out", "afile"], ["afile"]),
    ("train-out-missing-parent", ["train", "--out", "no/such/dir"], ["does not exist"]),
    # lowrank env and the command itself
    ("env-unknown-flag", ["env", "--verbose"], ["--verbose"]),
    ("unknown-command", ["shrink"], ["shrink"]),
]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A working directory with a user's files, a previous lowrank output and bad inputs."""
    root = tmp_path / "work"
    (root / "userdir" / "sub" / "empty").mkdir(parents=True)
    (root / "userdir" / "my_notes.txt").write_text("mine\n")
    (root / "userdir" / "sub" / "data.csv").write_text("a,b\n1,2\n")
    (root / "userdir.png").mkdir()
    (root / "afile").write_text("a regular file\n")
    (root / "empty.txt").write_text("  \n\n ")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 16)
    (root / "nul.txt").write_bytes(b"\x00\x01\x02\x1b" * 64)
    (root / "one_word.txt").write_text("hello\n")
    (root / "few.txt").write_text("\n\n".join(f"passage {i} about weights" for i in range(6)))
    for name, body in (("listreport", "[1, 2]"), ("badreport", "{not json"),
                       ("partialreport", '{"model": "x"}')):
        (root / name).mkdir()
        (root / name / "report.json").write_text(body)
    (root / "badmanifest").mkdir()
    (root / "badmanifest" / "lowrank.json").write_text('{"format": "lowrank"}')
    monkeypatch.chdir(root)
    return root


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root`` (hidden ones included) with its mode and file bytes."""
    out = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(here, name)
            out[str(path.relative_to(root))] = (path.stat().st_mode,
                                                path.read_bytes() if path.is_file() else None)
    return out


@pytest.mark.skipif(sys.platform != "linux", reason="uses /proc as a read-only directory")
@pytest.mark.parametrize("argv,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(monkeypatch, capsys, workspace, argv, needles):
    before = snapshot(workspace)
    code, out, err = run_cli(monkeypatch, capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("lowrank: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert out == ""
    assert snapshot(workspace) == before


def test_the_table_covers_every_command_and_flag():
    """Each command and each of its options appears in at least one case."""
    from typer.main import get_command

    from lowrank.cli.main import app

    group = get_command(app)
    covered = " ".join(" ".join(argv) for _, argv, _ in CASES)
    exempt = {"--help", "--json", "--quiet", "--overwrite"}  # no invalid value to give
    for name, command in group.commands.items():
        assert f"{name}" in covered, name
        for param in command.params:
            for flag in param.opts:
                if flag.startswith("--") and flag not in exempt and param.name != "as_json":
                    assert flag in covered or param.param_type_name == "argument", \
                        f"{name} {flag}"


def test_foreign_directory_survives_every_attempt(monkeypatch, capsys, workspace):
    """``--out DIR`` on a user's directory, ``--out .`` and ``--out . --overwrite`` leave
    everything in place; the user's files are never removed."""
    before = snapshot(workspace)
    for argv in (["compress", "--method", "svd", "--out", "userdir"],
                 ["compress", "--method", "svd", "--out", "."],
                 ["compress", "--method", "svd", "--out", ".", "--overwrite"],
                 ["compress", "--method", "svd", "--out", "..", "--overwrite"],
                 ["train", "--out", "userdir"]):
        code, _, err = run_cli(monkeypatch, capsys, *argv)
        assert code == 2, err
    assert snapshot(workspace) == before
    assert (workspace / "userdir" / "my_notes.txt").read_text() == "mine\n"


def test_previous_output_is_replaced_and_report_is_valid_json(monkeypatch, capsys, workspace,
                                                              tiny_model_dir):
    """A previous lowrank output is replaced without --overwrite; a foreign one only with it;
    the outputs get the umask's permissions."""
    args = ["compress", str(tiny_model_dir), "--method", "svd", "--keep", "0.5",
            "--samples", "16", "--seq-len", "16", "--device", "cpu", "--json", "--quiet"]
    old = os.umask(0o022)
    try:
        code, out, err = run_cli(monkeypatch, capsys, *args, "--out", "first")
        assert code == 0, err
        summary = json.loads(out)
        assert summary["evaluation_overlap"] == 0
        assert oct((workspace / "first").stat().st_mode & 0o777) == oct(0o755)
        assert oct((workspace / "first" / "model.safetensors").stat().st_mode & 0o777) \
            == oct(0o644)
        code, _, err = run_cli(monkeypatch, capsys, *args, "--out", "first")  # ours: replaced
        assert code == 0, err
        code, _, err = run_cli(monkeypatch, capsys, *args, "--out", "userdir", "--overwrite")
        assert code == 0, err
        assert not (workspace / "userdir" / "my_notes.txt").exists()
        assert (workspace / "userdir" / "lowrank.json").is_file()
    finally:
        os.umask(old)
    assert not [p for p in workspace.iterdir() if p.name.startswith(".")]


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_bert, tokenizer):
    import copy

    path = tmp_path / "tiny-bert"
    copy.deepcopy(tiny_bert).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
