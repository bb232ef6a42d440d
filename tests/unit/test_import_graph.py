"""The house's arrows: the runtime never imports the lab, the core never imports ROS, and no import cycle.

Read from the source with ast, every import counted (also those inside functions).
"""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
# Python package -> the directory it lives in (the runtime at the root, the lab in its own ROS package)
PACKAGES = {'adatoken3d_node': REPO / 'adatoken3d_node', 'adatoken3d_lab': REPO / 'lab' / 'adatoken3d_lab'}
# ROS-free core of the runtime: everything but the ROS edge
ROS_EDGE = {
    'adatoken3d_node.node',
    'adatoken3d_node.outgoing',
    'adatoken3d_node.client',
    'adatoken3d_node.qos',
    'adatoken3d_node.ros_backends',
    'adatoken3d_node.bringup',
}
ROS_MODULES = (
    'rclpy',
    'rosidl_runtime_py',
    'sensor_msgs',
    'std_msgs',
    'builtin_interfaces',
    'diagnostic_msgs',
    'tf2_msgs',
    'tf2_ros',
    'message_filters',
    'adatoken3d_interfaces',
    'launch',
    'launch_ros',
)


def module_name(path: pathlib.Path) -> str:
    root = next(d for d in PACKAGES.values() if d in path.parents)
    parts = path.relative_to(root.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports(path: pathlib.Path) -> set:
    """Absolute names of every module `path` imports."""
    name = module_name(path)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[: len(package.split('.')) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f'{base}.{alias.name}' for alias in node.names}  # `from . import names`
    return found


def graph() -> dict:
    modules = {module_name(p): p for directory in PACKAGES.values() for p in directory.rglob('*.py')}
    return {
        name: {m for m in imports(path) if m in modules and m != name}
        | {'__external__:' + m for m in imports(path) if m.split('.')[0] not in PACKAGES}
        for name, path in modules.items()
    }


def test_the_runtime_never_imports_the_lab():
    upward = [
        (a, b)
        for a, deps in graph().items()
        if a.startswith('adatoken3d_node')
        for b in deps
        if b.startswith('adatoken3d_lab')
    ]
    assert upward == []


def test_the_model_imports_only_the_model_and_the_package_share():
    allowed = ('adatoken3d_node.model', 'adatoken3d_node.share', 'adatoken3d_node.names')
    outside = [
        (a, b)
        for a, deps in graph().items()
        if a.startswith('adatoken3d_node.model')
        for b in deps
        if not b.startswith('__external__') and not b.startswith(allowed)
    ]
    assert outside == []


def test_the_core_imports_no_ros():
    core = {a: deps for a, deps in graph().items() if a.startswith('adatoken3d_node') and a not in ROS_EDGE}
    assert 'adatoken3d_node.pipeline' in core and 'adatoken3d_node.diagnostics' in core
    ros = [
        (a, b.split(':', 1)[1])
        for a, deps in core.items()
        for b in deps
        if b.startswith('__external__:') and b.split(':', 1)[1].split('.')[0] in ROS_MODULES
    ]
    assert ros == []


def test_there_is_no_import_cycle():
    edges = {a: {b for b in deps if not b.startswith('__external__')} for a, deps in graph().items()}
    # a package's __init__ is imported with each of its modules; only module-to-module arrows count
    state, cycles = {}, []

    def visit(node, path):
        state[node] = 'open'
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 'open':
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 'done'

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []
