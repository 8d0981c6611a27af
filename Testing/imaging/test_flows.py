"""The flow strength root finder shared by the template cohort and exact-volume refinement (imaging/flows.py)."""

from __future__ import annotations

import numpy as np

from VentricleSynthLib.imaging.flows import solve_strength


def _volume(calls):
    def volume(strength):  # a ventricle growing about exponentially with the strength, measured in voxels of 0.1 mL
        calls.append(strength)
        return round(20.0 * np.exp(strength / 15.0), 1)
    return volume


def test_reaches_a_target_inside_the_bracket_within_tolerance():
    for target in (8.0, 20.4, 55.0, 140.0):
        calls = []
        strength, got = solve_strength(_volume(calls), target, -30.0, 30.0, 0.005 * target, 30)
        assert abs(got - target) <= 0.005 * target and got == _volume([])(strength)
        assert calls[:3] == [-30.0, 30.0, 0.0] and len(calls) < 15  # ends first, then the first guess


def test_a_target_outside_the_bracket_gets_the_nearer_end():
    assert solve_strength(_volume([]), 1000.0, -30.0, 30.0, 1.0, 30)[0] == 30.0
    assert solve_strength(_volume([]), 0.5, -30.0, 30.0, 0.1, 30)[0] == -30.0


def test_known_volumes_are_not_measured_again_and_an_unreachable_tolerance_gives_the_best_iterate():
    calls = []
    strength, got = solve_strength(_volume(calls), 33.33, 0.0, 10.0, 1e-6, 8, known={0.0: 20.0})
    assert 0.0 not in calls and 0.0 < strength < 10.0
    tried = [_volume([])(s) for s in calls]
    assert abs(got - 33.33) == min(abs(v - 33.33) for v in tried)  # the discrete volume never hits 33.33
