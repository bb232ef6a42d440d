"""Every node parameter set on adatoken3d-bringup's command line (`name:=value`, none from a YAML of ours) is the
value the running node holds, of its type, read back over DDS from its parameter service; the node is active."""

import pytest

rclpy = pytest.importorskip('rclpy', reason='needs rclpy (make test installs it)')
from rcl_interfaces.srv import GetParameters  # noqa: E402
from rclpy.parameter import parameter_value_to_python  # noqa: E402

from adatoken3d_node import launch_args, parameters  # noqa: E402
from adatoken3d_node.client import NodeProcess, QueryClient  # noqa: E402
from conftest import other_value  # noqa: E402

NAMESPACE = 'launch_line'
TIMEOUT = 120.0


def test_every_parameter_round_trips_from_the_launch_line(random_model, tmp_path):
    free_text = {  # the parameters whose valid values are not a choice or a number
        'fixed_frame': 'odom',
        'model_path': str(random_model),
        'vision_tower_path': str(random_model.parent / 'random-llava3d-clip'),
        'device': 'cpu',
        'gating': 'schedule:1:0.5',
    }
    wanted = {spec.name: other_value(spec, free_text) for spec in parameters.PARAMETERS}
    wanted['dtype'] = 'float32'  # not the default (auto), and what this CPU computes in
    assert all(value != parameters.BY_NAME[name].default for name, value in wanted.items())
    log = tmp_path / 'node.log'
    with (
        NodeProcess([f'namespace:={NAMESPACE}', *launch_args.format_cli(wanted)], log_path=str(log)) as node,
        QueryClient(namespace=NAMESPACE, name='launch_line_client') as client,
    ):
        try:
            client.wait_for_node(timeout=TIMEOUT)  # configured and activated with every one of them
        except TimeoutError:
            pytest.fail(f'the node did not become active; its log:\n{node.log()}')
        get = client.node.create_client(GetParameters, f'/{NAMESPACE}/adatoken3d/get_parameters')
        assert get.wait_for_service(timeout_sec=TIMEOUT)
        names = list(wanted)
        response = client._result(get.call_async(GetParameters.Request(names=names)), TIMEOUT, 'get_parameters')
        held = {name: parameter_value_to_python(value) for name, value in zip(names, response.values)}
    assert held == wanted
    assert all(type(held[name]) is type(parameters.BY_NAME[name].default) for name in names)
