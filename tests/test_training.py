"""The scene-QA data, the question families and the training step of the shipped model (ROS-free)."""
import json
import re

import numpy as np
import pytest
import torch

from adatoken3d_node import synthetic
from adatoken3d_node.training import questions
from adatoken3d_node.training.dataset import SPLITS, render_scene, signed_distance, token_objects
from adatoken3d_node.training.evaluate import normalise, scene_questions
from adatoken3d_node.training import train


@pytest.fixture(scope='module')
def config():
    return train.front_end_config()


@pytest.fixture(scope='module')
def record(config):
    return render_scene(11, config)


def test_room_render_culls_objects_to_their_screen_box_without_changing_a_pixel(monkeypatch):
    objects = synthetic.make_scene(4, unique=True)
    K = synthetic.intrinsics(160, 120)
    for angle in np.linspace(0, 2 * np.pi, 5)[:-1]:
        pose = synthetic.look_at([2.7 * np.cos(angle), 2.7 * np.sin(angle), 1.3], [0.2, 0.0, 0.1])
        culled = synthetic.render(objects, K, pose, 160, 120, room_half_m=synthetic.ROOM_HALF_M)
        with monkeypatch.context() as m:
            m.setattr(synthetic, '_screen_rays', lambda *a, **k: None)   # every ray meets every object
            full = synthetic.render(objects, K, pose, 160, 120, room_half_m=synthetic.ROOM_HALF_M)
        assert np.array_equal(culled[0], full[0]) and np.array_equal(culled[1], full[1])
        assert (culled[1] > 0).all()          # a closed room: every ray hits something


def test_unique_scenes_never_repeat_a_colour_and_shape():
    for seed in range(40):
        objects = synthetic.make_scene(seed, unique=True, min_size_m=0.25)
        combos = [(o.colour_name, o.shape) for o in objects]
        assert len(set(combos)) == len(combos) and 2 <= len(objects) <= 8
        assert min(min(o.size) for o in objects) >= 0.25


def test_room_frames_stay_inside_the_room_and_cut_depth_at_the_camera_range():
    objects = synthetic.make_scene(2, unique=True)
    frames = synthetic.room_frames(objects, n_views=6, width=107, height=80, seed=2, defects=False, max_range_m=4.0)
    assert len(frames) == 6 and len({f.stamp_ns for f in frames}) == 6
    for f in frames:
        assert np.abs(f.pose[:2, 3]).max() < synthetic.ROOM_HALF_M and 1.0 <= f.pose[2, 3] <= 1.6
        assert f.depth.max() <= 4000 and (f.depth == 0).any()
    again = synthetic.room_frames(objects, n_views=6, width=107, height=80, seed=2, defects=False, max_range_m=4.0)
    assert all(np.array_equal(a.rgb, b.rgb) and np.array_equal(a.pose, b.pose) for a, b in zip(frames, again))


def test_every_family_is_asked_and_every_answer_is_the_scene_truth():
    asked = {f: 0 for f in questions.FAMILIES}
    for seed in range(30):
        objects = synthetic.make_scene(seed, unique=True, min_size_m=0.25)
        by_name = {questions.name(o): o for o in objects}
        for qa in questions.sample(objects, np.random.default_rng(seed), 3):
            asked[qa.family] += 1
            q, a = qa.question, qa.answer
            if m := re.fullmatch(r'What color is the (\w+)\?', q):
                assert [o.colour_name for o in objects if o.shape == m[1]] == [a]
            elif m := re.fullmatch(r'How many (\w+) objects are there\?', q):
                assert int(a) == sum(o.colour_name == m[1] for o in objects)
            elif m := re.fullmatch(r'Is there an? (\w+ \w+)\?', q):
                assert q.startswith('Is there an ') == (m[1][0] in 'aeiou')
                assert (m[1] in by_name) == (a == 'yes')
            elif m := re.fullmatch(r'Which object is closest to the (\w+ \w+)\?', q):
                me = by_name[m[1]]
                others = sorted((np.linalg.norm(np.subtract(o.centre, me.centre)), questions.name(o))
                                for o in objects if o is not me)
                assert others[0][1] == a and others[1][0] - others[0][0] >= questions.CLOSEST_MARGIN_M
            elif m := re.fullmatch(r'Is the (\w+ \w+) higher than the (\w+ \w+)\?', q):
                gap = questions.top(by_name[m[1]]) - questions.top(by_name[m[2]])
                assert abs(gap) >= questions.HIGHER_MARGIN_M and (gap > 0) == (a == 'yes')
            elif m := re.fullmatch(r'Where is the (\w+ \w+)\?', q):
                x, y, _ = by_name[m[1]].centre
                assert questions.cell(x, y) == a and questions.cell_margin(x, y) >= questions.CELL_MARGIN_M
            elif m := re.fullmatch(r'What is at \[(.+)\]\?', q):
                point = np.array([float(v) for v in m[1].split(',')])
                distances = {questions.name(o): float(signed_distance(point[None], o)[0]) for o in objects}
                if a == questions.NOTHING:
                    assert point[2] == 0 and min(distances.values()) > 0.3
                else:
                    assert min(distances, key=distances.get) == a and distances[a] < 0.1
    assert all(n >= 20 for n in asked.values()), asked
    yes_no = [qa.answer for s in range(30) for qa in questions.sample(
        synthetic.make_scene(s, unique=True), np.random.default_rng(s), 3) if qa.family == 'existence']
    assert abs(yes_no.count('yes') - yes_no.count('no')) <= 2


def test_cells_name_the_world_frame_grid():
    assert questions.cell(1.5, 1.5) == 'north east' and questions.cell(-1.5, -1.5) == 'south west'
    assert questions.cell(0.0, 0.0) == 'centre' and questions.cell(0.0, 1.0) == 'north'
    assert questions.cell(-1.0, 0.2) == 'west'


def test_signed_distance_and_token_labels():
    box = synthetic.SceneObject('box', 'red', (0, 0, 0), (0.0, 0.0, 0.2), (0.4, 0.4, 0.4))
    ball = synthetic.SceneObject('sphere', 'blue', (0, 0, 0), (1.0, 0.0, 0.2), (0.4, 0.4, 0.4))
    can = synthetic.SceneObject('cylinder', 'green', (0, 0, 0), (0.0, 1.0, 0.3), (0.4, 0.4, 0.6))
    pts = np.array([[0.0, 0.0, 0.2], [0.2, 0.0, 0.2], [0.5, 0.0, 0.2], [1.0, 0.0, 0.45], [0.0, 1.3, 0.3],
                    [0.0, 1.0, 0.7], [2.5, 2.5, 0.0]])
    assert np.allclose(signed_distance(pts[:3], box), [-0.2, 0.0, 0.3])
    assert np.isclose(signed_distance(pts[3:4], ball)[0], 0.05)
    assert np.allclose(signed_distance(pts[4:6], can), [0.1, 0.1])
    assert token_objects([box, ball, can], pts).tolist() == [0, 0, -1, 1, -1, -1, -1]


def test_scene_records_are_seeded_and_splits_disjoint(record, config):
    again = render_scene(11, config)
    assert np.array_equal(record.images, again.images) and np.array_equal(record.patch_valid, again.patch_valid)
    assert record.images.shape == (8, 160, 160, 3) and record.patch_xyz.shape == (8, 256, 3)
    full, part = record.geometry(config), record.geometry(config, [0, 3, 5])
    assert part.num_views == 3 and 0 < part.num_tokens < full.num_tokens
    assert set(full.frame_ids) == {'synthetic_scene_11'}   # CLIP features are cached per (stamp, frame)
    starts = sorted(SPLITS.values())
    assert all(b - a >= 1_000_000 for a, b in zip(starts, starts[1:]))
    assert scene_questions(record) == scene_questions(again)   # every policy is asked the same questions


def test_shared_prefix_loss_equals_a_full_forward_of_each_prompt(record, config):
    model, tokenizer, _ = train.build_model(0)
    model.eval()
    prompts = train.PromptCache(model, tokenizer)
    scene = record.geometry(config, [0, 1])
    qas = questions.sample(record.objects, np.random.default_rng(0), 1)
    qas = [qa for qa in qas if qa.family in ('attribute', 'location')][:2]
    assert any('[' in qa.question for qa in qas)           # a location token is in the batch
    with torch.no_grad():
        _, per_question = train.scene_loss(model, prompts, scene, qas)
        spatial = model.spatial_embeddings(scene)
        for qa, shared in zip(qas, per_question):
            inputs = model.build_inputs(qa.question, spatial, tokenizer)
            answer = prompts.answer_ids(qa.answer)
            embeds = torch.cat([inputs.inputs_embeds[0],
                                model.language_model.get_input_embeddings()(torch.tensor(answer))])[None]
            logits = model.language_model(inputs_embeds=embeds).logits[0]
            T, n = logits.shape[0], len(answer)
            full = torch.nn.functional.cross_entropy(logits[T - n - 1:T - 1], torch.tensor(answer))
            assert torch.isclose(shared, full, rtol=1e-4, atol=1e-5)


def test_a_short_training_run_writes_a_loadable_checkpoint_that_answers(tmp_path):
    from adatoken3d_node.model.loader import load_llava3d
    from adatoken3d_node.model.scene_qa import SceneAnswerer
    out = tmp_path / 'model'
    assert train.main(['--out', str(out), '--train-scenes', '4', '--val-scenes', '2', '--vision-steps', '4',
                       '--steps', '12', '--val-every', '6', '--threads', '2']) == 0
    log = json.loads((out / 'training_log.json').read_text())
    assert len(log['vision']) == 4 and len(log['train']) == 12 and len(log['val']) == 2
    assert (out / 'training_curves.png').stat().st_size > 0
    assert log['train'][-1]['loss'] < log['train'][0]['loss']
    model, tokenizer, _ = load_llava3d(out)
    assert not model.is_untrained and model.image_size == 160 and model.patch_grid == 16
    assert (out / 'vision_tower' / 'model.safetensors').is_file()
    answerer = SceneAnswerer(model, tokenizer, out)
    record = render_scene(SPLITS['test'], train.front_end_config())
    answer = answerer.answer('How many spheres are there?', record.geometry(train.front_end_config()),
                             answerer.policy('none'), 4)
    assert answer.spatial_tokens > 100 and answer.token_ids
    assert normalise(' Yes. ') == 'yes'
