"""The fitting rule of simulation/preflight.py: test 20%, public 30%, private the rest, a few per client."""

import pytest

from nebula.simulation.preflight import MIN_PER_CLIENT, MIN_STEPS, fit_epochs, fit_sizes, sizes_problem


def test_rule_on_a_file_of_979_rows():
    assert fit_sizes(979, 5, {}) == {"test_size": 195, "public_size": 293, "private_size": 0}


def test_sizes_set_by_the_user_are_kept_and_the_others_fitted():
    assert fit_sizes(979, 5, {"test_size": 100}) == {"test_size": 100, "public_size": 293, "private_size": 0}
    assert fit_sizes(979, 5, {"private_size": 800}) == {"test_size": 71, "public_size": 107, "private_size": 800}


def test_a_small_file_keeps_a_few_examples_per_client():
    sizes = fit_sizes(60, 10, {})
    rest = 60 - sizes["test_size"] - sizes["public_size"]
    assert rest >= 10 * MIN_PER_CLIENT and sizes["test_size"] >= 1 and sizes["public_size"] >= 1
    assert sizes_problem(60, *sizes.values(), 10) is None


@pytest.mark.parametrize(
    "n, clients, fixed",
    [(20, 5, {}), (300, 5, {"test_size": 200, "public_size": 150}), (300, 5, {"private_size": 299})],
)
def test_no_fit(n, clients, fixed):
    assert fit_sizes(n, clients, fixed) is None


def test_problems():
    assert sizes_problem(3200, 500, 1200, 1500, 5) is None
    assert "leaves no private examples" in sizes_problem(979, 500, 1200, 1500, 5)
    assert "exceeds 300" in sizes_problem(300, 60, 90, 200, 5)
    assert f"fewer than {MIN_PER_CLIENT} each" in sizes_problem(100, 40, 40, 0, 5)


def test_epochs_give_each_stage_its_minimum_steps_a_round():
    # the stand-in of 979 rows: ~78 training rows a client (5 steps of 16), 293 public inputs (19 steps)
    got = fit_epochs({"local_epochs": 78, "teacher_epochs": 293}, 16, {"local_epochs": 1, "teacher_epochs": 1})
    assert got == {"local_epochs": 6, "teacher_epochs": 2}
    assert 6 * 5 >= MIN_STEPS > 5 * 5 and 2 * 19 >= MIN_STEPS > 19


def test_epochs_never_drop_below_what_is_set():
    assert fit_epochs({"local_epochs": 10_000}, 16, {"local_epochs": 3}) == {"local_epochs": 3}
    assert fit_epochs({"student_epochs": 0}, 16, {"student_epochs": 1}) == {"student_epochs": MIN_STEPS}
