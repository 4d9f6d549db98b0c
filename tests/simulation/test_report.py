from nebula.simulation.baselines import BaselineResult
from nebula.simulation.report import baseline_row, federation_row, format_table, save_plot

HISTORY = [
    {
        "round": r,
        "mean_client_acc": 0.4 + r / 100,
        "min_client_acc": 0.3,
        "mean_client_acc_own": 0.8,
        "teacher_acc": 0.5,
        "student_acc": 0.45,
        "bytes_up_per_client": 4216.0,
        "bytes_down_per_client": 0.0 if r == 1 else 2811.0,
        "seconds": 10.0,
    }
    for r in (1, 2)
]


def test_table_formats_accuracy_as_percent_and_bytes_as_integers(tmp_path):
    rows = [
        federation_row(HISTORY, aggregation="mean"),
        baseline_row(BaselineResult("local-only", mean_client_acc=0.5, min_client_acc=0.4)),
    ]
    table = format_table(rows).splitlines()
    assert table[2] == "| nebula FD (mean) | 42.0 | 30.0 | 80.0 | 50.0 | 45.0 | 4,216 | 1,406 | 20 |"
    assert table[3] == "| local-only | 50.0 | 40.0 | - | - | - | 0 | 0 | 0 |"


def test_plot_is_written(tmp_path):
    path = save_plot(HISTORY, [BaselineResult("centralized", student_acc=0.7, curve=[0.6, 0.7])], tmp_path / "p.png")
    assert path.stat().st_size > 10_000
