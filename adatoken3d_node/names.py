"""Names of the node, its topics, services and actions: defined here once, imported everywhere.

Topic names are relative so that `namespace` and remaps apply; `~/` names are
private to the node (/<namespace>/adatoken3d/<name>).
"""

PACKAGE = 'adatoken3d'
NODE_NAME = 'adatoken3d'
NODE_EXECUTABLE = 'adatoken3d_node'

# Sensor inputs (relative, remappable). Key = short name used by launch arguments.
SENSOR_TOPICS = {
    'color_image': 'color/image_raw',
    'color_info': 'color/camera_info',
    'depth_image': 'depth/image_raw',
    'depth_info': 'depth/camera_info',
    'points': 'points',
}
TF_TOPIC = '/tf'
TF_STATIC_TOPIC = '/tf_static'

# Query API and outputs.
QUERY_SERVICE = '~/query'
ASK_ACTION = '~/ask'
ANSWER_TOPIC = '~/answer'
METRICS_TOPIC = '~/metrics'
DIAGNOSTICS_TOPIC = '/diagnostics'
# The scene memory, for RViz and tests: patch positions (with their view) and spatial-token centres.
SCENE_POINTS_TOPIC = '~/scene_points'
SCENE_TOKENS_TOPIC = '~/scene_tokens'


def private_name(name: str, namespace: str = '') -> str:
    """Fully qualified name of a `~/x` entity of the node in `namespace` (for clients)."""
    assert name.startswith('~/'), name
    ns = namespace.strip('/')
    prefix = f'/{ns}' if ns else ''
    return f'{prefix}/{NODE_NAME}/{name[2:]}'
