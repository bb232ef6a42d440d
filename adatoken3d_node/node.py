"""The adatoken3d lifecycle node: the thin ROS layer around the query worker and the model.

  configure  reads and checks parameters, loads the model (stays unconfigured with a
             clear error if that fails), creates publishers and the query worker
  activate   subscribes to the sensors and /tf, offers ~/query and ~/ask
  deactivate stops accepting queries, lets the queued ones finish, unsubscribes
  cleanup    stops the worker and frees the model (and GPU memory)

Service and action callbacks are coroutines: they validate, queue the query and
await its answer without holding an executor thread, so sensor callbacks keep
flowing while the worker thread runs inference.
"""
import argparse
import gc
import resource
import sys
import threading
import time
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

from builtin_interfaces.msg import Time
from std_msgs.msg import Header
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from tf2_msgs.msg import TFMessage

from adatoken3d_interfaces.action import Ask
from adatoken3d_interfaces.msg import Answer, QueryMetrics
from adatoken3d_interfaces.srv import Query

from . import names, parameters
from .qos import DIAGNOSTICS_QOS, OUTPUT_QOS, QUERY_QOS, TF_QOS, TF_STATIC_QOS, action_qos_kwargs, sensor_qos
from .model.calibrate import resolve_gating
from .model.engine import ModelLoadError
from .model.llava3d import parse_locations
from .model.scene_qa import SceneAnswerer
from .perception.frontend import FrontEndConfig, SceneFrontEnd
from .perception.keyframes import KeyframePolicy
from .budget import BudgetController, CostModel, warmup_sweep
from .pipeline import AnswerPipeline
from .queries import QueryLimits, QueryOutcome, QueryReport, QueryWorker, resolve_request
from .ros_backends import make_tf_and_sync
from .share import default_model_dir
from .sensors import SensorConfig, SensorPipeline, sync_keys
from .stats import LatencyStats

SENSOR_TYPES = {'color_image': Image, 'color_info': CameraInfo, 'depth_image': Image,
                'depth_info': CameraInfo, 'points': PointCloud2}
DRAIN_TIMEOUT_S = 60.0
REFUSAL_LOG_PERIOD_S = 5.0   # a flood of refused queries logs one line per period, not one per query


POINT_FIELD_TYPES = {np.dtype('<f4'): PointField.FLOAT32, np.dtype('<f8'): PointField.FLOAT64,
                     np.dtype('<u2'): PointField.UINT16, np.dtype('<u4'): PointField.UINT32,
                     np.dtype('uint8'): PointField.UINT8}


def structured_cloud(header: Header, points: np.ndarray) -> PointCloud2:
    """An unorganised PointCloud2 whose fields are the (little-endian) fields of a numpy structured array."""
    fields = [PointField(name=name, offset=points.dtype.fields[name][1],
                         datatype=POINT_FIELD_TYPES[points.dtype.fields[name][0]], count=1)
              for name in points.dtype.names]
    return PointCloud2(header=header, height=1, width=len(points), fields=fields, is_bigendian=False,
                       point_step=points.dtype.itemsize, row_step=points.dtype.itemsize * len(points),
                       data=points.tobytes(), is_dense=True)


def to_metrics_msg(report: QueryReport, stamp: Time, frame_id: str) -> QueryMetrics:
    msg = QueryMetrics()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    for name in ('query_id', 'latency_budget_ms', 'deadline_met', 'total_ms', 'queue_ms', 'scene_ms',
                 'vision_ms', 'prefill_ms', 'decode_ms', 'num_views', 'spatial_tokens',
                 'spatial_tokens_kept', 'text_tokens', 'generated_tokens', 'prefill_flops_dense',
                 'prefill_flops', 'flops_reduction', 'gating'):
        setattr(msg, name, getattr(report, name))
    msg.scene_stamp = Time(sec=report.scene_stamp_ns // 1_000_000_000,
                           nanosec=report.scene_stamp_ns % 1_000_000_000)
    return msg


class Adatoken3dNode(LifecycleNode):

    def __init__(self, **kwargs):
        super().__init__(names.NODE_NAME, **kwargs)
        for spec in parameters.PARAMETERS:
            self.declare_parameter(spec.name, spec.default, ParameterDescriptor(description=spec.description))
        self._queries_group = ReentrantCallbackGroup()
        self._sensors_group = MutuallyExclusiveCallbackGroup()
        self._latency = LatencyStats()
        self._frontend: Optional[SceneFrontEnd] = None
        self._scene_stats: Dict[str, int] = {}   # of the last scene published
        self._sensors: Optional[SensorPipeline] = None
        self._accepting = False
        self._config: Dict[str, object] = {}
        self._pipeline: Optional[AnswerPipeline] = None
        self._worker: Optional[QueryWorker] = None
        self._publishers: List = []
        # created on activate, destroyed on deactivate
        self._input_subscriptions: Dict[str, object] = {}   # SENSOR_TOPICS keys, 'tf', 'tf_static'
        self._query_service = None
        self._action_server: Optional[ActionServer] = None
        self._diagnostics_timer = None
        self._qos_warned = set()
        self._qos_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = {spec.name: self.get_parameter(spec.name).value for spec in parameters.PARAMETERS}
        problems = [p for p in (parameters.BY_NAME[n].validate(v) for n, v in config.items()) if p]
        if problems:
            self.get_logger().error('configure failed, invalid parameters: ' + '; '.join(problems))
            return TransitionCallbackReturn.FAILURE
        model_path = config['model_path'] or str(default_model_dir())
        try:
            answerer = SceneAnswerer.load(model_path, config['vision_tower_path'], device=config['device'],
                                          dtype=config['dtype'], allow_pickle=config['allow_pickle'])
        except (ModelLoadError, ValueError, OSError) as error:
            self.get_logger().error(f'configure failed, the model did not load: {error}')
            return TransitionCallbackReturn.FAILURE
        try:
            gating = resolve_gating(config['gating'], model_path)
            policy = answerer.policy(gating)
        except ValueError as error:
            self.get_logger().error(f'configure failed: {error}')
            return TransitionCallbackReturn.FAILURE
        if answerer.is_untrained:
            self.get_logger().warning(
                f'model {model_path} is a random-weight tiny model: it is UNTRAINED and its answers '
                'mean nothing. Set model_path to a trained checkpoint for meaningful answers.')
        model = answerer.model
        self._frontend = SceneFrontEnd(FrontEndConfig.for_model(
            model, patch_xyz=model.patch_xyz if config['patch_xyz'] == 'auto' else config['patch_xyz'],
            voxel_size=config['voxel_size'], max_spatial_tokens=config['max_spatial_tokens'],
            keyframes=KeyframePolicy(max_views=config['max_views'],
                                     min_translation_m=config['keyframe_min_translation_m'],
                                     min_rotation_deg=config['keyframe_min_rotation_deg'],
                                     max_interval_s=config['keyframe_max_interval_s'])))
        cost = CostModel(answerer.gated.shape)
        self._pipeline = AnswerPipeline(answerer, self._frontend, policy, config['temperature'], config['top_p'],
                                        BudgetController(cost, config['budget_min_keep_ratio'], policy.raters))
        self._worker = QueryWorker(self._pipeline.answer, capacity=config['queue_size'])
        if config['warmup']:
            self._frontend.warmup()

            def warm_up() -> None:
                answerer.warmup(self._frontend.scene())
                warmup_sweep(answerer, cost, config['max_spatial_tokens'])
            try:
                self._worker.call(warm_up)   # on the thread that will answer, so the timings are its own
            except Exception as error:  # e.g. out of GPU memory on the first real forward
                self.get_logger().error(f'configure failed, the model did not run: {type(error).__name__}: {error}')
                self._release()
                return TransitionCallbackReturn.FAILURE
        self._config = config
        self._config['resolved_model_path'] = model_path
        self._config['gating'] = str(policy)
        self._answer_pub = self.create_publisher(Answer, names.ANSWER_TOPIC, OUTPUT_QOS)
        self._metrics_pub = self.create_publisher(QueryMetrics, names.METRICS_TOPIC, OUTPUT_QOS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, names.DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self._scene_points_pub = self.create_publisher(PointCloud2, names.SCENE_POINTS_TOPIC, OUTPUT_QOS)
        self._scene_tokens_pub = self.create_publisher(PointCloud2, names.SCENE_TOKENS_TOPIC, OUTPUT_QOS)
        self._publishers = [self._answer_pub, self._metrics_pub, self._diagnostics_pub, self._scene_points_pub,
                            self._scene_tokens_pub]
        self.get_logger().info(
            f'configured: model {model_path} on {answerer.device} ({answerer.dtype}), {answerer.num_layers} '
            f'layers, {model.image_size} px views ({model.patch_grid}x{model.patch_grid} patches), gating '
            f'{policy}, queue_size {config["queue_size"]}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = self._config
        tf, sync, backend = make_tf_and_sync(config['tf_sync_backend'], self, sync_keys(config['depth_source']),
                                             config['sync_slop_s'])
        self._tf_sync_backend = backend
        self._sensors = SensorPipeline(
            self._frontend, SensorConfig(config['fixed_frame'], config['depth_source'], config['depth_scale'],
                                         config['sync_slop_s'], config['tf_timeout_s']),
            self.get_logger(), tf, sync, on_view_kept=self._publish_scene if config['publish_scene'] else None)
        sensors = sensor_qos(config['sensor_qos_reliability'], config['sensor_qos_depth'])
        pipeline = self._sensors
        self._input_subscriptions = {
            key: self._subscribe(SENSOR_TYPES[key], topic, sensors, lambda msg, key=key: pipeline.on_sensor(key, msg))
            for key, topic in names.SENSOR_TOPICS.items()}
        self._input_subscriptions['tf'] = self._subscribe(TFMessage, names.TF_TOPIC, TF_QOS,
                                                          lambda msg: pipeline.on_tf(msg, static=False))
        self._input_subscriptions['tf_static'] = self._subscribe(TFMessage, names.TF_STATIC_TOPIC, TF_STATIC_QOS,
                                                                 lambda msg: pipeline.on_tf(msg, static=True))
        self._query_service = self.create_service(Query, names.QUERY_SERVICE, self._on_query,
                                                  qos_profile=QUERY_QOS, callback_group=self._queries_group)
        self._diagnostics_timer = self.create_timer(self._config['diagnostics_period_s'],
                                                    self._publish_diagnostics, callback_group=self._sensors_group)
        self._action_server = ActionServer(
            self, Ask, names.ASK_ACTION, execute_callback=self._on_ask,
            goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
            callback_group=self._queries_group, **action_qos_kwargs())
        self._accepting = True
        self.get_logger().info(f'active: {self.resolve_service_name(names.QUERY_SERVICE)} and '
                               f'{self.resolve_service_name(names.ASK_ACTION)} are ready')
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._accepting = False
        # Queued queries are answered, not dropped: wait for the worker before closing the service.
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self._worker is not None and self._worker.depth > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._worker is not None and self._worker.depth > 0:
            self.get_logger().error(f'deactivating with {self._worker.depth} queries unanswered after '
                                    f'{DRAIN_TIMEOUT_S:.0f} s')
        self._destroy_active_entities()
        self.get_logger().info('inactive: not accepting queries, sensors unsubscribed')
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info('cleaned up: model freed')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._accepting = False
        self._destroy_active_entities()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _destroy_active_entities(self) -> None:
        for subscription in self._input_subscriptions.values():
            self.destroy_subscription(subscription)
        self._input_subscriptions = {}
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        if self._query_service is not None:
            self.destroy_service(self._query_service)
            self._query_service = None
        if self._action_server is not None:
            self._action_server.destroy()
            self._action_server = None
        if self._sensors is not None:
            self._sensors.stop()
            self._sensors = None

    def _release(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        for publisher in self._publishers:
            self.destroy_publisher(publisher)
        self._publishers = []
        self._frontend = None
        if self._pipeline is not None:
            on_cuda = self._pipeline.answerer.device.type == 'cuda'
            self._pipeline = None
            gc.collect()
            if on_cuda:
                import torch
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ sensors
    def _subscribe(self, msg_type, topic: str, qos: QoSProfile, callback):
        # Sensor callbacks only record (SensorPipeline); inference never runs here.
        events = SubscriptionEventCallbacks(incompatible_qos=lambda event: self._warn_qos(topic, event))
        return self.create_subscription(msg_type, topic, callback, qos, callback_group=self._sensors_group,
                                        event_callbacks=events)

    def _publish_scene(self) -> None:
        """~/scene_points (patch xyz + view index) and ~/scene_tokens (token centres + patch count)."""
        scene = self._frontend.scene()
        self._scene_stats = {'scene.views': scene.num_views, 'scene.spatial_tokens': scene.num_tokens,
                             'scene.voxels_before_cap': scene.tokens.num_voxels_before_cap,
                             'scene.dropped_patches': scene.dropped_patches}
        header = Header(stamp=Time(sec=scene.newest_stamp_ns // 10**9, nanosec=scene.newest_stamp_ns % 10**9),
                        frame_id=self._config['fixed_frame'])
        views = np.broadcast_to(np.arange(scene.num_views, dtype=np.uint16)[:, None], scene.patch_valid.shape)
        points = np.zeros(int(scene.patch_valid.sum()), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                                                              ('view', '<u2')])
        xyz = scene.patch_xyz[scene.patch_valid]
        points['x'], points['y'], points['z'], points['view'] = xyz[:, 0], xyz[:, 1], xyz[:, 2], views[scene.patch_valid]
        centres = scene.tokens.centres.numpy()
        tokens = np.zeros(scene.num_tokens, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('count', '<u4')])
        tokens['x'], tokens['y'], tokens['z'] = centres[:, 0], centres[:, 1], centres[:, 2]
        tokens['count'] = scene.tokens.counts.numpy()
        self._scene_points_pub.publish(structured_cloud(header, points))
        self._scene_tokens_pub.publish(structured_cloud(header, tokens))

    def _warn_qos(self, topic: str, event) -> None:
        with self._qos_lock:
            first = topic not in self._qos_warned
            self._qos_warned.add(topic)
        if first:
            self.get_logger().warning(
                f'QoS mismatch on {self.resolve_topic_name(topic)}: a publisher offers an incompatible '
                f'{event.last_policy_kind} policy, so its messages are not received (set '
                'sensor_qos_reliability to match the publisher)')

    # ------------------------------------------------------------------ queries
    def _limits(self) -> QueryLimits:
        return QueryLimits(self._config['max_question_chars'], self._config['max_new_tokens'],
                           self._config['max_new_tokens_limit'], self._config['latency_budget_ms'])

    def _enqueue(self, question: str, latency_budget_ms: float, max_new_tokens: int,
                 on_token=None, should_stop=lambda: False) -> Future:
        """Queue a query; the future completes with (QueryOutcome, QueryMetrics) when answered or refused."""
        future = Future(executor=self.executor)
        # A done callback makes set_result() from the worker thread wake the executor,
        # which then resumes the coroutine awaiting this future.
        future.add_done_callback(lambda _: None)
        worker = self._worker
        error, text, budget, max_new = resolve_request(question, latency_budget_ms, max_new_tokens, self._limits())
        if error is None and (not self._accepting or worker is None):
            error = 'the node is not active (lifecycle state); activate it to ask questions'
        if error is None:
            error = self._scene_problem(text)
        if error is None:
            job, error = worker.submit(text, budget, max_new,
                                       on_done=lambda outcome: self._finish(outcome, question, future),
                                       on_token=on_token, should_stop=should_stop)
        if error:
            self.get_logger().warning(f'query refused: {error}', throttle_duration_sec=REFUSAL_LOG_PERIOD_S)
            self._finish(QueryOutcome(False, error=error), question, future)
        return future

    def _scene_problem(self, question: str) -> Optional[str]:
        """Why the scene memory cannot answer this question yet, or None."""
        frontend = self._frontend
        if len(frontend.memory) == 0:
            if self._config['require_scene']:
                return ('no usable view of the scene yet (0 views in memory): check the camera topics, '
                        'camera_info and TF in /diagnostics (views.*, problems.*, tf_frames)')
            return None
        _, points = parse_locations(question)
        if points:
            centres = frontend.scene().tokens.centres.numpy()
            for point in points:
                distance = float(np.linalg.norm(centres - np.array(point), axis=1).min()) if len(centres) else np.inf
                if distance > self._config['max_point_distance_m']:
                    return (f'the point {list(point)} is {distance:.1f} m from anything in the scene memory '
                            f'(max_point_distance_m={self._config["max_point_distance_m"]}); is it in '
                            f'{self._config["fixed_frame"]} coordinates?')
        return None

    def _finish(self, outcome: QueryOutcome, question: str, future: Future) -> None:
        """Publish an answered or refused query, then hand its outcome to the waiting callback."""
        self._latency.add(outcome.report.total_ms, outcome.report.deadline_met, outcome.success)
        outcome.report.gating = outcome.report.gating or self._config.get('gating', '')
        stamp = self.get_clock().now().to_msg()
        metrics = to_metrics_msg(outcome.report, stamp, self._config.get('fixed_frame', ''))
        answer = Answer(query_id=outcome.report.query_id, question=question, answer=outcome.answer,
                        success=outcome.success, error=outcome.error, metrics=metrics)
        answer.header = metrics.header
        try:
            self._answer_pub.publish(answer)
            self._metrics_pub.publish(metrics)
        except Exception as error:  # publishers gone during cleanup: the caller still gets its answer
            self.get_logger().warning(f'could not publish answer {outcome.report.query_id}: {error}')
        future.set_result((outcome, metrics))

    async def _on_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        outcome, metrics = await self._enqueue(request.question, request.latency_budget_ms,
                                               request.max_new_tokens)
        response.success = outcome.success
        response.error = outcome.error
        response.answer = outcome.answer
        response.metrics = metrics
        return response

    async def _on_ask(self, goal_handle) -> Ask.Result:
        goal = goal_handle.request

        def on_token(partial_answer: str, generated_tokens: int) -> None:
            goal_handle.publish_feedback(Ask.Feedback(partial_answer=partial_answer,
                                                      generated_tokens=generated_tokens))

        outcome, metrics = await self._enqueue(goal.question, goal.latency_budget_ms, goal.max_new_tokens,
                                               on_token=on_token,
                                               should_stop=lambda: goal_handle.is_cancel_requested)
        if outcome.cancelled and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif outcome.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return Ask.Result(success=outcome.success, error=outcome.error, answer=outcome.answer,
                          metrics=metrics)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        worker = self._worker
        status = DiagnosticStatus(name=f'{self.get_fully_qualified_name()}: query engine', hardware_id=str(
            self._pipeline.answerer.device) if self._pipeline else '')
        values = {
            'state': 'active' if self._accepting else 'inactive',
            'model_path': self._config.get('resolved_model_path', ''),
            'model_untrained': str(self._pipeline.answerer.is_untrained).lower() if self._pipeline else '',
            'gating': self._config.get('gating', ''),
            'queue_depth': str(worker.depth if worker else 0),
            'queue_size': str(self._config.get('queue_size', 0)),
            'queries_answered': str(self._latency.answered),
            'queries_failed': str(self._latency.failed),
            'views_in_memory': str(len(self._frontend.memory)) if self._frontend else '0',
        }
        sensors = self._sensors
        if sensors is not None:
            for key, meter in sensors.rates.items():
                values[f'rate_hz.{key}'] = f'{meter.rate_hz():.2f}'
                values[f'messages.{key}'] = str(meter.count)
            # Matched at the DDS level from this side: a sensor publishing while this is 0 is not heard.
            for key, subscription in self._input_subscriptions.items():
                values[f'publishers.{key}'] = str(subscription.get_publisher_count())
            values.update({f'views.{k}': str(v) for k, v in sensors.counters.items()})
            values.update({f'problems.{k}': str(v) for k, v in sensors.problems.counts.items()})
            values.update({f'sync_dropped.{k}': str(v) for k, v in sensors.sync.dropped.items()})
            values['tf_frames'] = ' '.join(sorted(sensors.tf.frames()))
            values['tf_sync_backend'] = self._tf_sync_backend
        values.update({k: str(v) for k, v in self._scene_stats.items()})
        if self._pipeline is not None and self._pipeline.budget is not None:
            cost = self._pipeline.budget.cost
            error = cost.mean_relative_error()
            values['budget.prediction_error'] = f'{error:.3f}' if error is not None else ''
            values['budget.last_keep_ratio'] = (f'{self._pipeline.last_keep_ratio:.3f}'
                                                if self._pipeline.last_keep_ratio is not None else '')
            values['budget.prefill_ms_per_linear_gflop'] = f'{cost.prefill_coef[0]:.3f}'
            values['budget.prefill_ms_per_attention_gflop'] = f'{cost.prefill_coef[1]:.3f}'
            values['budget.decode_ms_per_token'] = f'{cost.decode_coef[0]:.3f}'
        values.update({k: f'{v:.3f}' for k, v in self._latency.summary().items()})
        values.update(device_memory(self._pipeline.answerer.device if self._pipeline else None))
        status.level = DiagnosticStatus.OK
        status.message = 'ready' if self._accepting else 'inactive'
        if self._pipeline is not None and self._pipeline.answerer.is_untrained:
            status.level = DiagnosticStatus.WARN
            status.message = 'untrained tiny model: answers are not meaningful'
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)


def device_memory(device) -> Dict[str, str]:
    """GPU memory on CUDA, the process's peak resident memory otherwise."""
    if device is not None and device.type == 'cuda':
        import torch
        return {'gpu_memory_allocated_mb': f'{torch.cuda.memory_allocated(device) / 2**20:.1f}',
                'gpu_memory_reserved_mb': f'{torch.cuda.memory_reserved(device) / 2**20:.1f}'}
    return {'process_max_rss_mb': f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}'}


def main(args: Optional[List[str]] = None) -> int:
    args = sys.argv if args is None else args
    parser = argparse.ArgumentParser(prog=names.NODE_EXECUTABLE, description='The adatoken3d lifecycle node.')
    parser.add_argument('--no-autostart', action='store_true',
                        help='stay unconfigured; drive it with lifecycle transitions')
    options = parser.parse_args(remove_ros_args(args)[1:])
    rclpy.init(args=args)
    node = Adatoken3dNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        if not options.no_autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error('staying unconfigured (see the error above); fix the parameters and '
                                        'call the configure transition again')
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
