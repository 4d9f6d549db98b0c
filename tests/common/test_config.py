import dataclasses

import pytest

from nebula.common.config import SECTIONS, ConfigError, NebulaConfig, command_line_options
from nebula.common.presets import PRESETS, preset_config


def test_flat_round_trip():
    config = NebulaConfig().validate()
    assert NebulaConfig.from_flat(config.to_flat()) == config


def test_from_flat_coerces_strings_from_the_command_line():
    config = NebulaConfig.from_flat({"federation.rounds": "7", "train.lr": "0.01", "data.dataset": "bbc"})
    assert config.federation.rounds == 7 and config.train.lr == 0.01 and config.data.dataset == "bbc"


@pytest.mark.parametrize(
    "flat, message",
    [
        ({"federation.rounds": 0}, "federation.rounds must be > 0"),
        ({"federation.roundz": 3}, "unknown configuration key 'federation.roundz'"),
        ({"data.num_clients": "many"}, "data.num_clients must be int"),
        ({"data.dirichlet_alpha": -1.0}, "data.dirichlet_alpha must be > 0"),
        ({"train.micro_batch_size": 64}, "micro_batch_size (64) must be <="),
        ({"federation.wire_dtype": "bfloat16"}, "federation.wire_dtype"),
        ({"model.student_overrides": "x:minilm-l6"}, "not 'client-index:model'"),
        ({"federation.inference_clients": "2"}, "entry '2' is not 'client-index:export-folder'"),
        ({"federation.inference_clients": "two:exports/a"}, "entry 'two:exports/a' is not"),
        ({"federation.inference_clients": "1:a,1:b"}, "entry '1:b' repeats client 1"),
        ({"federation.min_replies": 9, "data.num_clients": 3}, "exceeds data.num_clients"),
    ],
)
def test_bad_values_name_the_field(flat, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NebulaConfig.from_flat(flat)


def test_student_overrides_per_client():
    config = NebulaConfig.from_flat({"model.student_overrides": "1:minilm-l6, 3:/models/x"})
    assert [config.model.student_for_client(i) for i in range(4)] == [
        "minilm-l3",
        "minilm-l6",
        "minilm-l3",
        "/models/x",
    ]


def test_inference_clients_parse_to_export_folders():
    config = NebulaConfig.from_flat({"federation.inference_clients": "2:exports/student, 0:C:/exports/x"})
    assert config.federation.inference_exports() == {2: "exports/student", 0: "C:/exports/x"}
    assert NebulaConfig().federation.inference_exports() == {}


def test_every_field_is_a_command_line_option_named_after_it():
    options = {o.key: o for o in command_line_options()}
    keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    assert list(options) == keys
    assert options["data.num_clients"].flag == "--num-clients" and options["data.num_clients"].kind is int
    assert options["federation.wire_dtype"].choices == ("float16", "float32", "int8")
    assert options["federation.faults"].hidden and not options["federation.rounds"].hidden
    assert len({o.flag for o in options.values()}) == len(options)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name):
    preset_config(name)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset_config("huge")


def test_isolation_levels_and_excluded_clients():
    config = NebulaConfig.from_flat({"federation.isolation": "isolated", "federation.exclude_clients": "client-3, x"})
    assert config.federation.isolation == "isolated" and config.federation.excluded() == {"client-3", "x"}
    with pytest.raises(ConfigError, match="federation.isolation must be one of collaborative, isolated"):
        NebulaConfig.from_flat({"federation.isolation": "shared"})
    assert NebulaConfig.from_flat({"federation.isolation": "sharded:3"}).federation.shard_count() == 3
