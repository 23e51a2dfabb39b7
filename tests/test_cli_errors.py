"""Bad input ends with one clear line naming the file and the problem, exit status 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mvf.cli import COMMANDS, build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mvf", *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_ict_folder(tmp_path):
    assert_one_line_error(run_cli("build-model", "--ict", str(tmp_path / "nope")), str(tmp_path / "nope"))


def test_wrong_coefficient_count(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"id": [0.0] * 101, "exp": [0.0]}))
    assert_one_line_error(run_cli("export", "--params", str(p), "--out", str(tmp_path / "x.obj")),
                          str(p), "101")


@pytest.mark.parametrize("content,needle", [("{not json", "not valid JSON"), ('{"exp": []}', "missing 'id'"),
                                            ('{"id": [], "exp": [], "pose": {"front": [1, 2]}}', "pose 'front'"),
                                            ('{"id": [], "exp": [], "pose": {"top": [1,2,3,4,5,6]}}', "'top'")])
def test_bad_params_files(tmp_path, content, needle, capsys):
    p = tmp_path / "p.json"
    p.write_text(content)
    assert main(["export", "--params", str(p), "--out", str(tmp_path / "x.ply")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(p) in err and needle in err and "\n" not in err


def test_unknown_suffix(tmp_path, capsys):
    assert main(["export", "--random", "--out", str(tmp_path / "x.xyz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "x.xyz" in err and "unsupported mesh type" in err


def test_missing_params_file(tmp_path, capsys):
    assert main(["export", "--params", str(tmp_path / "absent.json"), "--out", str(tmp_path / "x.obj")]) == 2
    assert "absent.json: params file not found" in capsys.readouterr().err


def test_help_for_every_subcommand():
    parser = build_parser()
    names = [a for a in parser._subparsers._group_actions[0].choices]  # noqa: SLF001
    assert "build-model" in names and "export" in names
    for name in names:
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"])
        assert e.value.code == 0
    res = run_cli("--help")
    assert res.returncode == 0 and "export" in res.stdout


def test_output_under_a_file_is_one_line_exit_2(tmp_path, capsys):
    """An --out that lies under an existing file: one line naming the path, exit 2 (OSError)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export", "--random", "--seed", "0", "--out", str(blocker / "face.obj")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err and "Traceback" not in err


def test_a_run_imports_only_its_own_command(tmp_path):
    """`mvf export ...` builds the parser of export alone (no training or calibration modules
    imported); `mvf --help` still lists every subcommand."""
    import subprocess
    import sys

    code = ("import sys; from mvf.cli import main; "
            f"rc = main(['export', '--random', '--seed', '1', '--out', {str(tmp_path / 'r.ply')!r}]); "
            "print(rc, 'mvf.train.loop' in sys.modules, 'mvf.recon.calibrate' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-3:] == ["0", "False", "False"], out
    assert (tmp_path / "r.ply").is_file()
    helps = subprocess.run([sys.executable, "-m", "mvf", "--help"], capture_output=True, text=True).stdout
    for name in ("build-model", "export", "visualize", "synth", "train", "reconstruct", "fit", "evaluate"):
        assert name in helps
