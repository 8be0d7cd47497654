"""The console script: a missing package is one line, parsers are built for the command run only, ``COMMAND
--help`` shows the default competition's flags, ``stitch``/``pseudo-label`` take the competition word, and
``python -m nnunet_vasculature.postprocess`` is the same CLI restricted to its commands."""
import importlib.metadata
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from nnunet_vasculature.cli import build_parser, main
from nnunet_vasculature.competitions import MODULES
from nnunet_vasculature.errors import PIP_NAMES, describe_missing_dependency
from nnunet_vasculature.postprocess.__main__ import main as pp_main

HEAVY = ("torch", "scipy", "nnunetv2", "skimage", "cc3d", "matplotlib", "zarr")


def _python(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return r.returncode, r.stdout.strip().splitlines(), r.stderr.strip().splitlines()


def _help(capsys, run, argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_a_missing_package_is_one_line_and_the_other_commands_still_run():
    """cc3d absent (tune sennet needs it, imported when the command starts): one line naming it and its pip
    name, exit 1, no traceback; `env`, `predict hubmap-kidney` and `convert hubmap-kidney` still parse (the old
    CLI skipped the module, so `tune sennet` was "invalid choice")."""
    code = ("import sys; sys.modules['cc3d'] = None\n"
            "from nnunet_vasculature.cli import main\n"
            "print('rc', main(['tune', 'sennet', '-i', 'p', '--labels', 'l', '-o', 'o.json']), file=sys.stderr)\n"
            "print('rc', main(['env']), file=sys.stderr)\n"
            "for argv in (['predict', 'hubmap-kidney', '--help'], ['convert', 'hubmap-kidney', '--help']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit as e:\n"
            "        print('help', e.code, file=sys.stderr)\n")
    rc, out, err = _python(code)
    assert rc == 0, err
    assert err == ["error: this command needs the package 'cc3d' (pip install connected-components-3d)", "rc 1",
                   "rc 0", "help 0", "help 0"], err
    assert out[0].startswith("export nnUNet_extTrainer=")
    assert any(line.startswith("usage: nnunet-vasculature predict hubmap-kidney") for line in out)


def test_a_missing_module_of_this_package_is_a_bug_with_its_traceback():
    """Our own module missing is not the user's fault: re-raised (the old CLI turned it into "invalid choice")."""
    code = ("import sys; sys.modules['nnunet_vasculature.postprocess.components'] = None\n"
            "from nnunet_vasculature.cli import main\n"
            "main(['tune', 'sennet', '-i', 'p', '--labels', 'l', '-o', 'o.json'])\n")
    rc, _, err = _python(code)
    assert rc == 1 and err[0].startswith("Traceback") and "ModuleNotFoundError" in err[-1], err
    assert "nnunet_vasculature.postprocess.components" in err[-1]


def test_pip_names_are_the_declared_distributions():
    """Every declared dependency has an import name in the table, and the table's pip names are the
    distributions that install those import names here."""
    installed = importlib.metadata.packages_distributions()
    requirements = [Requirement(r) for r in importlib.metadata.requires("nnunet-vasculature")]
    declared = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    offered = {canonicalize_name(Requirement(spec).name) for spec in PIP_NAMES.values()}
    assert declared <= offered, declared - offered
    for module, spec in PIP_NAMES.items():
        requirement = Requirement(spec)
        if not requirement.extras:
            assert canonicalize_name(spec) in {canonicalize_name(d) for d in installed.get(module, [])}, module
    assert PIP_NAMES["dask"] == "dask[distributed]" and any(r.name == "dask" and r.extras == {"distributed"}
                                                            for r in requirements)
    hoa = [r for r in requirements if r.name == "hoa-tools" and r.marker.evaluate({"extra": "hoa"})]
    assert hoa and PIP_NAMES["hoa_tools"] == "nnunet-vasculature[hoa]"
    line = describe_missing_dependency(ModuleNotFoundError("No module named 'hoa_tools'", name="hoa_tools"))
    assert line == "this command needs the package 'hoa_tools' (pip install 'nnunet-vasculature[hoa]', Python >= 3.11)"
    assert describe_missing_dependency(ModuleNotFoundError("x", name="skimage.morphology")) == \
        "this command needs the package 'skimage' (pip install scikit-image)"
    assert describe_missing_dependency(ModuleNotFoundError("x", name="nnunet_vasculature.io")) is None


@pytest.mark.parametrize("argv", [["--help"], ["env"], ["predict", "--help"], ["stitch", "--help"],
                                  ["splits", "--help"], ["tune", "--help"], ["score", "--help"], ["submit", "--help"],
                                  ["tune", "hubmap-kidney", "--help"], ["score", "hubmap-vasculature", "--help"]])
def test_help_and_env_import_no_heavy_module(argv):
    """The old CLI built every parser, importing scipy and scikit-image through the post-processing modules; the
    post-processing modules imported scipy, scikit-image and cc3d at module level (so `tune --help` did)."""
    code = ("import sys\nfrom nnunet_vasculature.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    rc, out, err = _python(code)
    assert rc == 0 and out[-1] == "[]", (argv, out[-1:], err)


def test_command_help_shows_the_default_competitions_flags(capsys):
    """`predict --help` is `predict sennet --help` (as nnUNetv2_predict -h shows flags), with the other words."""
    code, out, _ = _help(capsys, main, ["predict", "--help"])
    assert code == 0 and out.startswith("usage: nnunet-vasculature predict sennet")
    assert "-step_size STEP_SIZE" in out and "--disable_tta" in out
    assert "competition words of predict: sennet (the default), hubmap-kidney" in " ".join(out.split())
    code, out, _ = _help(capsys, main, ["predict", "hubmap-kidney", "--help"])
    assert code == 0 and out.startswith("usage: nnunet-vasculature predict hubmap-kidney")
    code, _, err = _help(capsys, main, ["predict", "hubmap-vasculature", "-i", "x"])
    assert code == 2 and "invalid choice: 'hubmap-vasculature' (choose from 'sennet', 'hubmap-kidney')" in err


def test_the_lazy_parser_lists_what_the_modules_register(capsys):
    """Top-level help from the tables equals the help of the parser built from every module, and each
    (command, word) of the table builds alone with its own usage line."""
    assert build_parser([])[0].format_help() == build_parser()[0].format_help()
    for command, words in MODULES.items():
        for word in words:
            code, out, _ = _help(capsys, main, [command, word, "--help"])
            assert code == 0 and out.startswith(f"usage: nnunet-vasculature {command} {word} "), (command, word)


@pytest.mark.parametrize("command,flags,line", [
    ("stitch", ["-i", "npz", "-d", "510", "-o", "k.zarr"], "raw: no Dataset510_* folder"),
    ("pseudo-label", ["-i", "p", "--labels", "l", "--threshold", "0.8", "-o", "o"], "error: p: not found")])
def test_stitch_and_pseudo_label_take_the_competition_word(nnunet_dirs, capsys, command, flags, line):
    """`stitch [sennet]`, `pseudo-label [sennet]`: both spellings reach the command, which refuses the missing
    input in one line (the old parsers refused the word: "unrecognized arguments: sennet")."""
    for argv in ([command, "sennet", *flags], [command, *flags]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and line in err[0], (argv, err)


def test_postprocess_module_is_the_cli_restricted_to_its_commands(capsys):
    code, out, _ = _help(capsys, pp_main, ["tune", "--help"])
    assert code == 0 and out.startswith("usage: python -m nnunet_vasculature.postprocess tune sennet")
    assert "--labels LABELS" in out
    code, _, err = _help(capsys, pp_main, ["predict", "-i", "x"])
    assert code == 2 and "invalid choice: 'predict'" in err


def test_the_retired_predict_slide_name_is_gone_from_convert_help(capsys):
    code, out, _ = _help(capsys, main, ["convert", "hubmap-kidney", "--help"])
    assert code == 0 and "predict-slide" not in out and "predict hubmap-kidney" in " ".join(out.split())
