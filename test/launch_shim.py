"""Test-only stand-in for the subset of ``launch``/``launch_ros`` that ``launch/*.launch.py`` use.

``launch``/``launch_ros`` cannot be installed from pip (shared/design/ROS2_FROM_PIP.md §1.4), so
the launch files are written against the real API and tested through this shim:
``launch_shim()`` puts stub modules ``launch``, ``launch.actions``, ``launch.substitutions``,
``launch.launch_description_sources``, ``launch.conditions``, ``launch_ros``, ``launch_ros.actions``,
``launch_ros.substitutions`` and ``launch_ros.parameter_descriptions`` into ``sys.modules`` for the
duration of a ``with`` block (restoring whatever was there before), and ``evaluate()`` loads a
launch file, calls its ``generate_launch_description()`` and returns what it would start: the
declared arguments and, per ``Node``, the executable and the ``--ros-args`` argv launch_ros builds::

    <executable> [arguments...] [--ros-args ros_arguments...] --ros-args -r __node:=NAME -r __ns:=/NS
        --params-file <file>            (a path / substitution entry of ``parameters``)
        --params-file <tmp.yaml>        (a dict entry of ``parameters``, see below)
        -r from:=to ...                 (``remappings``, in order)

Dict parameters are written to a temporary YAML file the way launch_ros'
``Node._create_params_file_from_dict`` does: ``{FQN or "/**": {"ros__parameters": dict}}`` (the
node's full name when both ``name`` and ``namespace`` are given, else ``/**``). Substituted values
are converted the way launch_ros does: the string is parsed as YAML (``"128"`` -> 128, ``"true"``
-> True, ``""`` -> ``""``), unless wrapped in ``ParameterValue(..., value_type=T)`` which yields T.

How this differs from a real ``ros2 launch`` run:

- nothing is started: no processes, no ``output``/``additional_env`` handling (they are recorded
  only), no event handlers, no shutdown behaviour;
- ``FindPackageShare`` resolves to the source tree (``share_dirs``, default: the repository root)
  instead of ``<prefix>/share/<pkg>``, so files are the repo's, not the installed copies;
- launch configurations are one flat dictionary: ``IncludeLaunchDescription`` sets its
  ``launch_arguments`` there and evaluates the included file in the same context (as real launch
  does without a ``GroupAction(scoped=True)``); no ``GroupAction``/``PushRosNamespace``;
- ``IfCondition``/``UnlessCondition`` on a ``Node`` are evaluated like launch's (``true``/``1`` and
  ``false``/``0``, case-insensitive; anything else is an error) and a node whose condition is false
  is left out;
- a launch argument given to ``evaluate`` that no evaluated file declares is an error (real
  ``ros2 launch`` only warns or ignores), so typos in tests fail;
- only the subset of the API the repository's launch files use exists; anything else fails with an
  ``ImportError``/``AttributeError``, which is a signal to extend the shim, not the launch file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import sys
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


# --- substitutions -------------------------------------------------------------------------------
class Substitution(ABC):
    @abstractmethod
    def perform(self, context: "Context") -> str:
        """The substitution's text in ``context``."""


class LaunchConfiguration(Substitution):
    def __init__(self, variable_name, default=None):
        self.variable_name, self.default = variable_name, default

    def perform(self, context):
        if self.variable_name in context.configurations:
            return context.configurations[self.variable_name]
        if self.default is not None:
            return resolve(self.default, context)
        raise KeyError(f"launch configuration {self.variable_name!r} is not set (not declared or given)")


class PathJoinSubstitution(Substitution):
    def __init__(self, substitutions):
        self.substitutions = list(substitutions)

    def perform(self, context):
        return str(Path(*[resolve(part, context) for part in self.substitutions]))


class FindPackageShare(Substitution):
    def __init__(self, package):
        self.package = package

    def perform(self, context):
        package = resolve(self.package, context)
        if package not in context.share_dirs:
            raise KeyError(f"package {package!r} not found (shim share_dirs: {sorted(context.share_dirs)})")
        return str(context.share_dirs[package])


def resolve(value, context) -> str:
    """A string, a substitution or a list of them, performed and concatenated (as launch does)."""
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, Substitution):
        return value.perform(context)
    if isinstance(value, (list, tuple)):
        return "".join(resolve(part, context) for part in value)
    raise TypeError(f"cannot substitute {value!r}")


# --- actions -------------------------------------------------------------------------------------
class LaunchDescription:
    def __init__(self, initial_entities=None):
        self.entities = list(initial_entities or [])

    def add_action(self, action):
        self.entities.append(action)


class DeclareLaunchArgument:
    def __init__(self, name, default_value=None, description="", choices=None):
        self.name, self.default_value, self.description, self.choices = name, default_value, description, choices


class PythonLaunchDescriptionSource:
    def __init__(self, launch_file_path):
        self.launch_file_path = launch_file_path


class IncludeLaunchDescription:
    def __init__(self, launch_description_source, launch_arguments=None):
        self.source = launch_description_source
        self.launch_arguments = list(launch_arguments or [])


class IfCondition:
    def __init__(self, predicate_expression):
        self.predicate_expression = predicate_expression

    def evaluate(self, context) -> bool:
        text = resolve(self.predicate_expression, context).strip().lower()
        if text not in ("true", "1", "false", "0"):
            raise ValueError(f"condition expects true/false/1/0, got {text!r}")
        return text in ("true", "1")


class UnlessCondition(IfCondition):
    def evaluate(self, context) -> bool:
        return not super().evaluate(context)


class ParameterValue:
    def __init__(self, value, value_type=None):
        self.value, self.value_type = value, value_type


class Node:
    def __init__(self, executable, package=None, name=None, namespace=None, parameters=None, remappings=None,
                 arguments=None, ros_arguments=None, additional_env=None, output=None, condition=None,
                 **others):
        self.executable, self.package, self.name, self.namespace = executable, package, name, namespace
        self.parameters, self.remappings = list(parameters or []), list(remappings or [])
        self.arguments, self.additional_env, self.output, self.others = list(arguments or []), additional_env, \
            output, others
        self.condition = condition
        self.ros_arguments = list(ros_arguments or [])


# --- evaluation ----------------------------------------------------------------------------------
@dataclass
class Context:
    configurations: dict
    share_dirs: dict
    tmp_dir: Path
    counter: itertools.count = field(default_factory=itertools.count)


@dataclass
class Argument:
    name: str
    default: str | None  # resolved default value (None = required)
    description: str
    file: str  # the launch file that declares it


@dataclass
class NodeCommand:
    package: str | None
    executable: str
    name: str | None
    namespace: str | None
    argv: list  # [executable, *arguments, "--ros-args", ...]
    parameters: list  # evaluated: params-file paths (str) and dicts (as written to their YAML)
    remappings: list  # [(from, to), ...]
    additional_env: dict | None

    @property
    def ros_args(self) -> list:
        """The argv after the executable (pass as ``cli_args`` to a node in-process)."""
        return self.argv[1:]


@dataclass
class LaunchResult:
    arguments: dict  # name -> Argument, in declaration order
    nodes: list  # NodeCommand, in launch order
    configurations: dict  # final launch configurations

    def node(self, executable: str) -> NodeCommand:
        found = [n for n in self.nodes if n.executable == executable]
        assert len(found) == 1, f"{len(found)} nodes with executable {executable!r}: {self.nodes}"
        return found[0]


def _parameter_value(value, context):
    """A dict parameter value as launch_ros evaluates it (strings and substitutions parsed as YAML)."""
    if isinstance(value, ParameterValue):
        text = resolve(value.value, context)
        if value.value_type is str:
            return text
        parsed = yaml.safe_load(text) if text else ""
        if value.value_type is float and isinstance(parsed, int) and not isinstance(parsed, bool):
            parsed = float(parsed)
        if value.value_type is not None and not isinstance(parsed, value.value_type):
            raise TypeError(f"parameter value {text!r} is not a {value.value_type.__name__}")
        return parsed
    if isinstance(value, (bool, int, float)):
        return value
    text = resolve(value, context)
    parsed = yaml.safe_load(text) if text else ""
    return parsed if isinstance(parsed, (bool, int, float, str, list)) else text


def _node_command(node: Node, context: Context) -> NodeCommand:
    name = resolve(node.name, context) if node.name is not None else None
    namespace = None
    if node.namespace is not None:
        namespace = resolve(node.namespace, context)
        namespace = namespace if namespace.startswith("/") else "/" + namespace
    argv = [resolve(node.executable, context), *[resolve(a, context) for a in node.arguments]]
    if node.ros_arguments:  # launch_ros gives them a --ros-args block of their own, first
        argv += ["--ros-args", *[resolve(a, context) for a in node.ros_arguments]]
    argv.append("--ros-args")
    if name is not None:
        argv += ["-r", f"__node:={name}"]
    if namespace is not None:
        argv += ["-r", f"__ns:={namespace}"]
    parameters = []
    for entry in node.parameters:
        if isinstance(entry, dict):
            values = {key: _parameter_value(value, context) for key, value in entry.items()}
            key = f"{namespace.rstrip('/')}/{name}" if name is not None and namespace is not None else "/**"
            path = context.tmp_dir / f"launch_params_{next(context.counter)}.yaml"
            path.write_text(yaml.dump({key: {"ros__parameters": values}}, default_flow_style=False))
            parameters.append(values)
        else:
            path = Path(resolve(entry, context))
            parameters.append(str(path))
        argv += ["--params-file", str(path)]
    remappings = [(resolve(src, context), resolve(dst, context)) for src, dst in node.remappings]
    for src, dst in remappings:
        argv += ["-r", f"{src}:={dst}"]
    env = {k: resolve(v, context) for k, v in node.additional_env.items()} if node.additional_env else None
    return NodeCommand(node.package, argv[0], name, namespace, argv, parameters, remappings, env)


def _visit(path: Path, context: Context, result: LaunchResult) -> None:
    spec = importlib.util.spec_from_file_location(f"launch_file_{next(context.counter)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription), f"{path}: generate_launch_description() -> {description!r}"
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            default = resolve(entity.default_value, context) if entity.default_value is not None else None
            result.arguments.setdefault(entity.name, Argument(entity.name, default, entity.description, path.name))
            if entity.name not in context.configurations:
                if default is None:
                    raise ValueError(f"{path.name}: required launch argument {entity.name!r} not given")
                context.configurations[entity.name] = default
            if entity.choices is not None and context.configurations[entity.name] not in entity.choices:
                raise ValueError(f"{entity.name}:={context.configurations[entity.name]} not in {entity.choices}")
        elif isinstance(entity, Node):
            if entity.condition is None or entity.condition.evaluate(context):
                result.nodes.append(_node_command(entity, context))
        elif isinstance(entity, IncludeLaunchDescription):
            included = Path(resolve(entity.source.launch_file_path, context))
            for key, value in entity.launch_arguments:
                context.configurations[resolve(key, context)] = resolve(value, context)
            _visit(included, context, result)
        else:
            raise TypeError(f"{path.name}: the launch shim does not support {type(entity).__name__}")


def evaluate(launch_file, arguments: dict | None = None, tmp_dir=None, share_dirs=None) -> LaunchResult:
    """Evaluate ``launch_file`` with ``arguments`` (``name -> str``, as ``ros2 launch ... name:=value``).

    Must run inside ``launch_shim()``. Dict-parameter YAML files go to ``tmp_dir`` (default: a new
    temporary directory). ``share_dirs`` maps package names to what ``FindPackageShare`` returns
    (default: ``{"vrs_node": <repository root>}``).
    """
    if tmp_dir is None:
        import tempfile

        tmp_dir = tempfile.mkdtemp(prefix="launch_shim_")
    given = {k: str(v) for k, v in (arguments or {}).items()}
    context = Context(dict(given), dict(share_dirs or {"vrs_node": REPO}), Path(tmp_dir))
    result = LaunchResult({}, [], context.configurations)
    _visit(Path(launch_file), context, result)
    undeclared = sorted(set(given) - set(result.arguments))
    if undeclared:
        raise ValueError(f"launch arguments not declared by {Path(launch_file).name}: {undeclared}")
    return result


_MODULES = {
    "launch": {"LaunchDescription": LaunchDescription, "Substitution": Substitution},
    "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument,
                       "IncludeLaunchDescription": IncludeLaunchDescription},
    "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration,
                             "PathJoinSubstitution": PathJoinSubstitution},
    "launch.launch_description_sources": {"PythonLaunchDescriptionSource": PythonLaunchDescriptionSource},
    "launch.conditions": {"IfCondition": IfCondition, "UnlessCondition": UnlessCondition},
    "launch_ros": {},
    "launch_ros.actions": {"Node": Node},
    "launch_ros.substitutions": {"FindPackageShare": FindPackageShare},
    "launch_ros.parameter_descriptions": {"ParameterValue": ParameterValue},
}


@contextlib.contextmanager
def launch_shim():
    """Install the stub modules into ``sys.modules`` inside the block; restore the previous ones after."""
    saved = {name: sys.modules.get(name) for name in _MODULES}
    try:
        for name, attributes in _MODULES.items():
            module = types.ModuleType(name, f"launch shim stand-in for {name} (test/launch_shim.py)")
            module.__dict__.update(attributes)
            module.__path__ = []  # a package, so "import launch.actions" works
            sys.modules[name] = module
        for name in _MODULES:  # submodules as attributes of their parents
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, sys.modules[name])
        yield sys.modules[__name__]
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
