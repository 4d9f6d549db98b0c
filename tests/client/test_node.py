"""Node identity: the role comes from node config (deployment) or from the run's config (simulation)."""

import pytest

from nebula.client.node import NodeIdentity, identify
from nebula.common import keys

TEACHER = 3


@pytest.mark.parametrize(
    "node_config, exports, expected",
    [
        ({"partition-id": 1}, {}, NodeIdentity(keys.ROLE_CLIENT, 1, "client-1")),
        ({"partition-id": TEACHER}, {}, NodeIdentity(keys.ROLE_TEACHER, -1, "teacher")),
        ({"partition-id": 2}, {2: "exports/a"}, NodeIdentity(keys.ROLE_INFERENCE, 2, "client-2", "exports/a")),
        (
            {"partition-id": 2, "role": "inference", "export-dir": "/opt/x", "client-id": "phone-7"},
            {},
            NodeIdentity(keys.ROLE_INFERENCE, 2, "phone-7", "/opt/x"),
        ),
        (
            {"partition-id": 2, "export-dir": "/opt/x"},
            {2: "exports/a"},
            NodeIdentity(keys.ROLE_INFERENCE, 2, "client-2", "/opt/x"),
        ),
        ({"partition-id": 2, "role": "client"}, {2: "exports/a"}, NodeIdentity(keys.ROLE_CLIENT, 2, "client-2")),
    ],
)
def test_roles_from_node_config_or_the_run_config(make_context, node_config, exports, expected):
    assert identify(make_context(node_config), teacher_index=TEACHER, inference_exports=exports) == expected


@pytest.mark.parametrize(
    "node_config, exports, message",
    [
        ({}, {}, "no 'partition-id'"),
        ({"partition-id": "x"}, {}, "partition-id='x' is not an integer"),
        ({"partition-id": 0, "role": "phone"}, {}, "role='phone'; expected one of 'client', 'teacher', 'inference'"),
        ({"partition-id": 0, "role": "inference"}, {}, "role='inference' needs 'export-dir'"),
        (
            {"partition-id": TEACHER},
            {TEACHER: "exports/a"},
            "inference_clients names partition 3, which is the teacher's",
        ),
    ],
)
def test_bad_identity_names_the_field(make_context, node_config, exports, message):
    with pytest.raises(ValueError, match=message):
        identify(make_context(node_config), teacher_index=TEACHER, inference_exports=exports)
