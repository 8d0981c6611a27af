"""The small foundation modules: affines, morphology, the command-line wrapper, the progress contract."""

from __future__ import annotations

import numpy as np
import pytest

from VentricleSynthLib.affines import spacing_of
from VentricleSynthLib.command_line import EXIT_INTERRUPTED, Parser, run_command
from VentricleSynthLib.errors import RequestError
from VentricleSynthLib.morphology import connected_components, largest_piece, piece_sizes


def test_spacing_of_an_oblique_flipped_affine(make_affine):
    affine = make_affine((0.9, 1.2, 3.0), rotation_deg=20, axis="y", lps=True)
    assert np.allclose(spacing_of(affine), (0.9, 1.2, 3.0))


def test_face_versus_full_connectivity_and_the_largest_piece():
    mask = np.zeros((6, 6, 6), bool)
    mask[0:2, 0:2, 0:2] = True  # 8 voxels
    mask[2, 2, 2] = True  # touches the cube by a corner only
    mask[4:6, 4:6, 3:6] = True  # 12 voxels, separate
    pieces, n = connected_components(mask)
    assert n == 3 and sorted(piece_sizes(pieces, n)) == [1, 8, 12]
    assert connected_components(mask, full_connectivity=True)[1] == 2
    assert largest_piece(pieces, n).sum() == 12 and largest_piece(pieces, n)[5, 5, 5]
    assert not largest_piece(*connected_components(np.zeros((3, 3, 3), bool))).any()


def test_user_errors_and_interrupts_become_one_error_line(capsys):
    def fails():
        raise RequestError("ventricle volume must be\n   a positive number")

    def interrupted():
        raise KeyboardInterrupt

    assert run_command(fails) == RequestError.exit_code
    assert capsys.readouterr().err == "error: ventricle volume must be a positive number\n"
    assert run_command(interrupted) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "error: interrupted\n"
    assert run_command(lambda x: x, 3) == 3


def test_usage_errors_exit_2_with_one_line(capsys):
    parser = Parser(prog="x")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--n", "many"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --n: invalid int value") and err.count("\n") == 1
