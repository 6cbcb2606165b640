"""Run ids as people type them (issue 13): a whole id or a unique prefix names one run; a prefix
of several lists them, one that names none says so, and nothing is picked by chance."""

from __future__ import annotations

import pytest

from agentjobs.errors import UserError
from agentjobs.ids import SHOWN, resolve_run

A = "01M8SN5GXQXCBRAJMAES3H8DSF"
B = "01M8SN5GXQZZ1111111111111A"
C = "01M8TAAAAAAAAAAAAAAAAAAAAA"


def test_a_whole_id_or_a_unique_prefix_in_either_case_names_one_run() -> None:
    assert resolve_run(A, [A, B, C]) == A
    assert resolve_run("01M8T", [A, B, C]) == C
    assert resolve_run("01m8sn5gxqx", {A: "job a, running", B: "job b, queued"}) == A
    assert resolve_run(f" {C} ", (A, C)) == C  # as pasted


def test_an_ambiguous_prefix_lists_the_candidates_and_an_unknown_or_empty_one_says_so() -> None:
    with pytest.raises(UserError) as ambiguous:
        resolve_run("01M8SN", {A: "job a, running", B: "job b, succeeded at T", C: "job c"})
    message = str(ambiguous.value)
    assert message == (
        f"run 01M8SN is ambiguous: 2 runs start with it: {A} (job a, running), "
        f"{B} (job b, succeeded at T); give more of the id"
    )
    assert "\n" not in message
    with pytest.raises(UserError, match=r"^no run 01ZZ: no run id starts with it$"):
        resolve_run("01ZZ", [A, B])
    with pytest.raises(UserError, match=r"^give a run id, or the start of one$"):
        resolve_run(" ", [A])  # never "the only run there is"
    many = [f"01M8{n:022d}" for n in range(SHOWN + 3)]
    with pytest.raises(UserError, match=f"{SHOWN + 3} runs start with it: .* and 3 more; "):
        resolve_run("01M8", many)
