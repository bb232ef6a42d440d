"""The adatoken3d lifecycle node: the ROS edge around the query engine (pipeline.py) and the sensors.

  configure  reads the parameters and builds the query engine (stays unconfigured with a clear
             error if that fails), creates the lifecycle publishers
  activate   subscribes to the sensors and /tf, offers ~/query and ~/ask, publishes
  deactivate stops accepting queries, lets the queued ones finish, unsubscribes
  cleanup    stops the worker and frees the model (and GPU memory)

Service and action callbacks are coroutines: they validate, queue the query and
await its answer without holding an executor thread, so sensor callbacks keep
flowing while the worker thread runs inference.
"""

import argparse
import sys
import threading
from typing import Dict, List, Optional

import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from rclpy.task import Future
from rclpy.utilities import remove_ros_args
from rcl_interfaces.msg import ParameterDescriptor

from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from tf2_msgs.msg import TFMessage

from adatoken3d_interfaces.action import Ask
from adatoken3d_interfaces.msg import Answer, QueryMetrics
from adatoken3d_interfaces.srv import Query

from . import diagnostics, names, outgoing, parameters
from .pipeline import ConfigureError, QueryEngine, build_engine
from .qos import DIAGNOSTICS_QOS, OUTPUT_QOS, QUERY_QOS, TF_QOS, TF_STATIC_QOS, action_qos_kwargs, sensor_qos
from .queries import NOT_ACCEPTING, QueryOutcome
from .ros_backends import make_tf_and_sync
from .sensors import SensorConfig, SensorPipeline, sync_keys
from .stats import LatencyStats

SENSOR_TYPES = {
    'color_image': Image,
    'color_info': CameraInfo,
    'depth_image': Image,
    'depth_info': CameraInfo,
    'points': PointCloud2,
}
DRAIN_TIMEOUT_S = 60.0
REFUSAL_LOG_PERIOD_S = 5.0  # a flood of refused queries logs one line per period, not one per query


class Adatoken3dNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(names.NODE_NAME, **kwargs)
        for spec in parameters.PARAMETERS:
            self.declare_parameter(spec.name, spec.default, ParameterDescriptor(description=spec.description))
        self._queries_group = ReentrantCallbackGroup()
        self._sensors_group = MutuallyExclusiveCallbackGroup()
        self._latency = LatencyStats()
        self._config: Dict[str, object] = {}
        self._engine: Optional[QueryEngine] = None
        self._sensors: Optional[SensorPipeline] = None
        self._tf_sync_backend = ''
        self._scene_values: Dict[str, str] = {}  # of the last scene published
        self._publishers: List = []
        # created on activate, destroyed on deactivate
        self._input_subscriptions: Dict[str, object] = {}  # SENSOR_TOPICS keys, 'tf', 'tf_static'
        self._query_service = None
        self._action_server: Optional[ActionServer] = None
        self._diagnostics_timer = None
        self._qos_warned = set()
        self._qos_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = {spec.name: self.get_parameter(spec.name).value for spec in parameters.PARAMETERS}
        try:
            self._engine = engine = build_engine(config)
        except ConfigureError as error:
            self.get_logger().error(f'configure failed, {error}')
            return TransitionCallbackReturn.FAILURE
        self._config = config
        answerer, model = engine.answerer, engine.answerer.model
        if answerer.is_untrained:
            self.get_logger().warning(
                f'model {engine.model_path} is a random-weight model: it is UNTRAINED and its answers '
                'mean nothing. Set model_path to a trained checkpoint for meaningful answers.'
            )
        if engine.gating_note:
            self.get_logger().warning(engine.gating_note)
        publish = self.create_lifecycle_publisher
        self._answer_pub = publish(Answer, names.ANSWER_TOPIC, OUTPUT_QOS)
        self._metrics_pub = publish(QueryMetrics, names.METRICS_TOPIC, OUTPUT_QOS)
        self._diagnostics_pub = publish(DiagnosticArray, names.DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self._scene_points_pub = publish(PointCloud2, names.SCENE_POINTS_TOPIC, OUTPUT_QOS)
        self._scene_tokens_pub = publish(PointCloud2, names.SCENE_TOKENS_TOPIC, OUTPUT_QOS)
        self._publishers = [
            self._answer_pub,
            self._metrics_pub,
            self._diagnostics_pub,
            self._scene_points_pub,
            self._scene_tokens_pub,
        ]
        self.get_logger().info(
            f'configured: model {engine.model_path} on {answerer.device} ({answerer.dtype}), {answerer.num_layers} '
            f'layers, {model.image_size} px views ({model.patch_grid}x{model.patch_grid} patches), gating '
            f'{engine.gating}, queue_size {config["queue_size"]}'
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        super().on_activate(state)  # enables the lifecycle publishers before anything can publish
        config = self._config
        tf, sync, self._tf_sync_backend = make_tf_and_sync(
            config['tf_sync_backend'], self, sync_keys(config['depth_source']), config['sync_slop_s']
        )
        self._sensors = sensors = SensorPipeline(
            self._engine.frontend,
            SensorConfig.from_parameters(config),
            self.get_logger(),
            tf,
            sync,
            on_view_kept=self._publish_scene if config['publish_scene'] else None,
        )
        sensor = sensor_qos(config['sensor_qos_reliability'], config['sensor_qos_depth'])
        self._input_subscriptions = {
            key: self._subscribe(SENSOR_TYPES[key], topic, sensor, lambda msg, key=key: sensors.on_sensor(key, msg))
            for key, topic in names.SENSOR_TOPICS.items()
        }
        self._input_subscriptions['tf'] = self._subscribe(
            TFMessage, names.TF_TOPIC, TF_QOS, lambda msg: sensors.on_tf(msg, static=False)
        )
        self._input_subscriptions['tf_static'] = self._subscribe(
            TFMessage, names.TF_STATIC_TOPIC, TF_STATIC_QOS, lambda msg: sensors.on_tf(msg, static=True)
        )
        self._query_service = self.create_service(
            Query, names.QUERY_SERVICE, self._on_query, qos_profile=QUERY_QOS, callback_group=self._queries_group
        )
        self._action_server = ActionServer(
            self,
            Ask,
            names.ASK_ACTION,
            execute_callback=self._on_ask,
            goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
            callback_group=self._queries_group,
            **action_qos_kwargs(),
        )
        self._diagnostics_timer = self.create_timer(
            config['diagnostics_period_s'], self._publish_diagnostics, callback_group=self._sensors_group
        )
        self._engine.worker.open()
        self.get_logger().info(
            f'active: {self.resolve_service_name(names.QUERY_SERVICE)} and '
            f'{self.resolve_service_name(names.ASK_ACTION)} are ready'
        )
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Queued queries are answered, not dropped: drain the worker before closing the service.
        self._engine.worker.close()
        left = self._engine.worker.drain(DRAIN_TIMEOUT_S)
        if left:
            self.get_logger().error(f'deactivating with {left} queries unanswered after {DRAIN_TIMEOUT_S:.0f} s')
        self._destroy_active_entities()
        self.get_logger().info('inactive: not accepting queries, sensors unsubscribed')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info('cleaned up: model freed')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._engine is not None:
            self._engine.worker.close()
        self._destroy_active_entities()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _destroy_active_entities(self) -> None:
        for subscription in self._input_subscriptions.values():
            self.destroy_subscription(subscription)
        self._input_subscriptions = {}
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
        if self._query_service is not None:
            self.destroy_service(self._query_service)
        if self._action_server is not None:
            self._action_server.destroy()
        if self._sensors is not None:
            self._sensors.stop()
        self._diagnostics_timer = self._query_service = self._action_server = self._sensors = None

    def _release(self) -> None:
        if self._engine is not None:
            self._engine.release()  # the queued queries are answered first, and published
            self._engine = None
        for publisher in self._publishers:
            self.destroy_lifecycle_publisher(publisher)
        self._publishers = []

    # ------------------------------------------------------------------ sensors
    def _subscribe(self, msg_type, topic: str, qos: QoSProfile, callback):
        # Sensor callbacks only record (SensorPipeline); inference never runs here.
        events = SubscriptionEventCallbacks(incompatible_qos=lambda event: self._warn_qos(topic, event))
        return self.create_subscription(
            msg_type, topic, callback, qos, callback_group=self._sensors_group, event_callbacks=events
        )

    def _publish_scene(self) -> None:
        scene = self._engine.frontend.scene()
        self._scene_values = diagnostics.scene_values(scene)
        points, tokens = outgoing.scene_clouds(scene, self._config['fixed_frame'])
        self._scene_points_pub.publish(points)
        self._scene_tokens_pub.publish(tokens)

    def _warn_qos(self, topic: str, event) -> None:
        with self._qos_lock:
            first = topic not in self._qos_warned
            self._qos_warned.add(topic)
        if first:
            self.get_logger().warning(
                f'QoS mismatch on {self.resolve_topic_name(topic)}: a publisher offers an incompatible '
                f'{event.last_policy_kind} policy, so its messages are not received (set '
                'sensor_qos_reliability to match the publisher)'
            )

    # ------------------------------------------------------------------ queries
    def _enqueue(
        self, question: str, latency_budget_ms: float, max_new_tokens: int, on_token=None, should_stop=lambda: False
    ) -> Future:
        """Queue a query; the future completes with (QueryOutcome, QueryMetrics) when answered or refused."""
        future = Future(executor=self.executor)
        # A done callback makes set_result() from the worker thread wake the executor,
        # which then resumes the coroutine awaiting this future.
        future.add_done_callback(lambda _: None)
        engine = self._engine
        error = (
            NOT_ACCEPTING
            if engine is None
            else engine.submit(
                question,
                latency_budget_ms,
                max_new_tokens,
                lambda outcome: self._finish(outcome, question, future),
                on_token,
                should_stop,
            )
        )
        if error:
            self.get_logger().warning(f'query refused: {error}', throttle_duration_sec=REFUSAL_LOG_PERIOD_S)
            self._finish(QueryOutcome(False, error=error), question, future)
        return future

    def _finish(self, outcome: QueryOutcome, question: str, future: Future) -> None:
        """Publish an answered or refused query, then hand its outcome to the waiting callback."""
        self._latency.add(outcome.report.total_ms, outcome.report.deadline_met, outcome.success)
        outcome.report.gating = outcome.report.gating or (self._engine.gating if self._engine else '')
        metrics = outgoing.metrics_msg(
            outcome.report, self.get_clock().now().to_msg(), self._config.get('fixed_frame', '')
        )
        try:
            self._answer_pub.publish(outgoing.answer_msg(outcome, question, metrics))
            self._metrics_pub.publish(metrics)
        except Exception as error:  # publishers gone during cleanup: the caller still gets its answer
            self.get_logger().warning(f'could not publish answer {outcome.report.query_id}: {error}')
        future.set_result((outcome, metrics))

    async def _on_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        outcome, metrics = await self._enqueue(request.question, request.latency_budget_ms, request.max_new_tokens)
        response.success = outcome.success
        response.error = outcome.error
        response.answer = outcome.answer
        response.metrics = metrics
        return response

    async def _on_ask(self, goal_handle) -> Ask.Result:
        goal = goal_handle.request

        def on_token(partial_answer: str, generated_tokens: int) -> None:
            goal_handle.publish_feedback(Ask.Feedback(partial_answer=partial_answer, generated_tokens=generated_tokens))

        outcome, metrics = await self._enqueue(
            goal.question,
            goal.latency_budget_ms,
            goal.max_new_tokens,
            on_token=on_token,
            should_stop=lambda: goal_handle.is_cancel_requested,
        )
        if outcome.cancelled and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif outcome.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return Ask.Result(success=outcome.success, error=outcome.error, answer=outcome.answer, metrics=metrics)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        publishers = {
            key: subscription.get_publisher_count() for key, subscription in self._input_subscriptions.items()
        }
        status = diagnostics.engine_status(
            self._engine,
            self._sensors,
            publishers,
            self._tf_sync_backend,
            self._scene_values,
            self._latency,
            self._config.get('queue_size', 0),
        )
        self._diagnostics_pub.publish(
            outgoing.diagnostic_array(
                f'{self.get_fully_qualified_name()}: query engine', status, self.get_clock().now().to_msg()
            )
        )


def main(args: Optional[List[str]] = None) -> int:
    args = sys.argv if args is None else args
    parser = argparse.ArgumentParser(prog=names.NODE_EXECUTABLE, description='The adatoken3d lifecycle node.')
    parser.add_argument(
        '--no-autostart', action='store_true', help='stay unconfigured; drive it with lifecycle transitions'
    )
    options = parser.parse_args(remove_ros_args(args)[1:])
    rclpy.init(args=args)
    node = Adatoken3dNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        if not options.no_autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error(
                    'staying unconfigured (see the error above); fix the parameters and '
                    'call the configure transition again'
                )
            elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error('activate failed')
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.on_shutdown(None)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
