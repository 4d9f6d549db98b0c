import json

from nebula.common.presets import preset_config
from nebula.simulation.baselines import BaselineResult
from nebula.simulation.baselines.common import Score
from nebula.simulation.report import baseline_row, federation_row, format_table, save_plot, save_results

HISTORY = [
    {
        "round": r,
        "mean_client_acc": 0.4 + r / 100,
        "mean_client_f1": 0.3,
        "min_client_acc": 0.3,
        "mean_client_acc_own": 0.8,
        "teacher_acc": 0.5,
        "teacher_f1": 0.45,
        "teacher_top_share": 0.5,
        "student_acc": 0.45,
        "student_f1": 0.2,
        "student_top_share": 0.97,
        "bytes_up_per_client": 4216.0,
        "bytes_down_per_client": 0.0 if r == 1 else 2811.0,
        "seconds": 10.0,
        "clients": {
            "client-0": {"acc_global": 0.42, "f1_global": 0.3, "top_share": 0.99},
            "client-1": {"acc_global": 0.42, "f1_global": 0.3, "top_share": 0.6},
        },
    }
    for r in (1, 2)
]


def test_table_formats_accuracy_and_f1_as_percent_and_bytes_as_integers():
    rows = [
        federation_row(HISTORY, aggregation="mean"),
        baseline_row(BaselineResult("local-only", mean_client_acc=0.5, min_client_acc=0.4)),
    ]
    table = format_table(rows).splitlines()
    assert table[0].startswith("| method | mean client acc | mean client F1 |")
    assert (
        table[2]
        == "| nebula FD (mean) | 42.0† | 30.0 | 30.0 | 80.0 | 50.0 | 45.0 | 45.0† | 20.0 | 4,216 | 1,406 | 20 |"
    )
    assert table[3] == "| local-only | 50.0 | - | 40.0 | - | - | - | - | - | 0 | 0 | 0 |"


def test_one_class_models_are_flagged_in_a_footnote_under_the_majority_line():
    table = format_table([federation_row(HISTORY, aggregation="mean")], majority=0.38)
    lines = table.splitlines()
    assert lines[0].startswith("Majority-class rate of the global test set: 38.0%")
    assert "† answers one class for >= 95% of the global test set" in table
    assert lines[-1] == "- nebula FD (mean): 1 of 2 clients, global student (97% in one class)"


def test_nothing_is_flagged_when_no_model_answers_one_class():
    healthy = [{**HISTORY[-1], "student_top_share": 0.4, "clients": {"c": {"top_share": 0.5}}}]
    table = format_table([federation_row(healthy, aggregation="mean")])
    assert "†" not in table and len(table.splitlines()) == 3


def test_baselines_carry_f1_and_top_share_from_their_scores():
    acc = Score(0.6, f1=0.5, top_share=0.96)
    b = BaselineResult("fedavg-lora", mean_client_acc=acc, min_client_acc=acc, student_acc=acc, curve=[acc])
    assert (b.mean_client_f1, b.student_f1, b.student_top_share, b.client_top_shares) == (0.5, 0.5, 0.96, [0.96])
    row = baseline_row(b)
    assert (
        format_table([row])
        .splitlines()[2]
        .startswith("| fedavg-lora | 60.0† | 50.0 | 60.0 | - | - | - | 60.0† | 50.0 |")
    )


def test_results_json_holds_the_majority_rate(tmp_path):
    rows = [federation_row(HISTORY, aggregation="mean")]
    path = save_results(rows, HISTORY, {"a": 1}, tmp_path / "r.json", majority=0.38)
    data = json.loads(path.read_text())
    assert data["majority_rate"] == 0.38 and data["table"][0]["client top shares"] == [0.99, 0.6]


def test_plot_is_written(tmp_path):
    config = preset_config("smoke")
    baselines = [
        BaselineResult("centralized", student_acc=0.7, curve=[0.6, 0.7]),
        BaselineResult("fedavg-lora", mean_client_acc=0.5, curve=[0.4, 0.5], bytes_up_per_client=9e5),
    ]
    path = save_plot(HISTORY, baselines, tmp_path / "p.png", config=config, majority=0.38)
    assert path.stat().st_size > 10_000
