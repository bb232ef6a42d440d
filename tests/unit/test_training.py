"""The scene-QA data, the question families and the training step of the shipped model (ROS-free)."""

import json
import re

import numpy as np
import pytest
import torch

from adatoken3d_lab import synthetic
from adatoken3d_lab.training import questions
from adatoken3d_lab.training.dataset import SPLITS, render_scene, signed_distance, token_objects
from adatoken3d_lab.training.evaluate import normalise, scene_questions
from adatoken3d_lab.training import referents, symbolic, train


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
            m.setattr(synthetic, '_screen_rays', lambda *a, **k: None)  # every ray meets every object
            full = synthetic.render(objects, K, pose, 160, 120, room_half_m=synthetic.ROOM_HALF_M)
        assert np.array_equal(culled[0], full[0]) and np.array_equal(culled[1], full[1])
        assert (culled[1] > 0).all()  # a closed room: every ray hits something


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
                others = sorted(
                    (np.linalg.norm(np.subtract(o.centre, me.centre)), questions.name(o))
                    for o in objects
                    if o is not me
                )
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
    yes_no = [
        qa.answer
        for s in range(30)
        for qa in questions.sample(synthetic.make_scene(s, unique=True), np.random.default_rng(s), 3)
        if qa.family == 'existence'
    ]
    assert abs(yes_no.count('yes') - yes_no.count('no')) <= 2


def test_cells_name_the_world_frame_grid():
    assert questions.cell(1.5, 1.5) == 'north east' and questions.cell(-1.5, -1.5) == 'south west'
    assert questions.cell(0.0, 0.0) == 'centre' and questions.cell(0.0, 1.0) == 'north'
    assert questions.cell(-1.0, 0.2) == 'west'


def test_signed_distance_and_token_labels():
    box = synthetic.SceneObject('box', 'red', (0, 0, 0), (0.0, 0.0, 0.2), (0.4, 0.4, 0.4))
    ball = synthetic.SceneObject('sphere', 'blue', (0, 0, 0), (1.0, 0.0, 0.2), (0.4, 0.4, 0.4))
    can = synthetic.SceneObject('cylinder', 'green', (0, 0, 0), (0.0, 1.0, 0.3), (0.4, 0.4, 0.6))
    pts = np.array(
        [
            [0.0, 0.0, 0.2],
            [0.2, 0.0, 0.2],
            [0.5, 0.0, 0.2],
            [1.0, 0.0, 0.45],
            [0.0, 1.3, 0.3],
            [0.0, 1.0, 0.7],
            [2.5, 2.5, 0.0],
        ]
    )
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
    assert set(full.frame_ids) == {'synthetic_scene_11'}  # CLIP features are cached per (stamp, frame)
    starts = sorted(SPLITS.values())
    assert all(b - a >= 1_000_000 for a, b in zip(starts, starts[1:]))
    assert scene_questions(record) == scene_questions(again)  # every policy is asked the same questions


def test_shared_prefix_loss_equals_a_full_forward_of_each_prompt(record, config):
    model, tokenizer, _ = train.build_model(0)
    model.eval()
    prompts = train.PromptCache(model, tokenizer)
    scene = record.geometry(config, [0, 1])
    qas = questions.sample(record.objects, np.random.default_rng(0), 1)
    qas = [qa for qa in qas if qa.family in ('attribute', 'location')][:2]
    assert any('[' in qa.question for qa in qas)  # a location token is in the batch
    with torch.no_grad():
        _, per_question = train.scene_loss(model, prompts, scene, qas)
        spatial = model.spatial_embeddings(scene)
        for qa, shared in zip(qas, per_question):
            inputs = model.build_inputs(qa.question, spatial, tokenizer)
            answer = prompts.answer_ids(qa.answer)
            embeds = torch.cat(
                [inputs.inputs_embeds[0], model.language_model.get_input_embeddings()(torch.tensor(answer))]
            )[None]
            logits = model.language_model(inputs_embeds=embeds).logits[0]
            T, n = logits.shape[0], len(answer)
            full = torch.nn.functional.cross_entropy(logits[T - n - 1 : T - 1], torch.tensor(answer))
            assert torch.isclose(shared, full, rtol=1e-4, atol=1e-5)


def test_symbolic_tokens_lie_on_their_objects_and_name_them_with_the_llms_words():
    model, tokenizer, _ = train.build_model(0)
    words = model.language_model.get_input_embeddings().weight
    tokens = symbolic.SymbolicTokens(train.LLAMA['hidden_size'], tokenizer)
    for seed in range(12):
        objects = synthetic.make_scene(seed, unique=True, min_size_m=0.25)
        xyz, on = symbolic.symbolic_scene(objects, np.random.default_rng(seed))
        assert len(on) == symbolic.TOKENS_PER_SCENE
        assert np.array_equal(token_objects(objects, xyz.numpy()), on.numpy())  # inside, or clear of every object
        assert set(on[on >= 0].tolist()) == set(range(len(objects)))
    with torch.no_grad():
        embedded = tokens(xyz, on, objects, words) - tokens.code(xyz)
    first = int(on[0]) if on[0] >= 0 else int(on.max())
    at = int((on == first).nonzero()[0])
    word = lambda w: words[tokenizer(' ' + w, add_special_tokens=False).input_ids[0]]  # noqa: E731
    assert torch.allclose(embedded[at], word(objects[first].colour_name) + word(objects[first].shape))
    assert torch.allclose(embedded[on < 0], tokens.background.detach().expand(int((on < 0).sum()), -1))


def test_symbolic_object_tokens_are_surface_voxels_whose_highest_marks_the_top(record, config):
    """As in a rendered scene, the highest token of an object tells its top (the mean would not)."""
    rng = np.random.default_rng(0)
    for obj in synthetic.make_scene(7, unique=True, min_size_m=0.25):
        voxels = symbolic.surface_voxels(obj, rng, config.voxel_size)
        assert 1 <= len(voxels) <= 64  # one per occupied 0.2 m voxel
        assert len(np.unique(np.round(voxels / config.voxel_size), axis=0)) == len(voxels)
        distance = signed_distance(voxels, obj)  # on the surface, or inside a corner
        assert (distance < symbolic.SURFACE_BAND_M).all() and (distance > -0.15).all()
        assert voxels[:, 2].min() > 0.0  # never the hidden bottom face
        assert questions.top(obj) - 0.15 < voxels[:, 2].max() <= questions.top(obj) + symbolic.SURFACE_BAND_M
    # the same relation holds in a rendered scene's tokens: their highest is within a voxel of the top
    on = token_objects(record.objects, record.geometry(config).tokens.centres.numpy())
    centres = record.geometry(config).tokens.centres.numpy()
    for i, obj in enumerate(record.objects):
        if (on == i).any():
            assert questions.top(obj) - 0.2 < centres[on == i, 2].max() <= questions.top(obj) + 0.08


def test_height_enters_the_position_codes_more_strongly_than_metres_would():
    model, tokenizer, _ = train.build_model(0)
    tokens = symbolic.SymbolicTokens(train.LLAMA['hidden_size'], tokenizer)
    first = tokens.position[0].weight
    with torch.no_grad():  # the symbolic code: a 10 cm rise moves it as much as an 80 cm step sideways
        assert torch.allclose(
            tokens.code(torch.tensor([[0.0, 0.0, 0.1]])),
            symbolic.POSITION_SCALE * tokens.position(torch.tensor([[0.0, 0.0, 0.8]])),
        )
    weight = model.video_pos_emb.position_embedding_head[0].weight  # the spatial tokens' 3D embedding starts so
    assert weight[:, 2].abs().mean() > 4 * weight[:, :2].abs().mean()
    weight = model.prompt_pos_emb.position_embedding_head[0].weight  # a location prompt's does not
    assert weight[:, 2].abs().mean() < 2 * weight[:, :2].abs().mean()
    assert first[:, 2].abs().mean() < 2 * first[:, :2].abs().mean()  # the gain is in the input, not the init


def test_alignment_pulls_rendered_tokens_onto_the_symbolic_ones(record, config):
    model, tokenizer, _ = train.build_model(0)
    words = model.language_model.get_input_embeddings().weight
    tokens = symbolic.SymbolicTokens(train.LLAMA['hidden_size'], tokenizer)
    scene = record.geometry(config, [0, 2])
    on = torch.from_numpy(token_objects(record.objects, scene.tokens.centres.numpy()))
    assert (on >= 0).any() and (on < 0).any()
    with torch.no_grad():
        ideal = tokens(scene.tokens.centres.float(), on, record.objects, words)
    assert float(symbolic.alignment_loss(ideal, tokens, scene, on.numpy(), record.objects, words)) < 1e-10
    spatial = model.spatial_embeddings(scene)
    loss = symbolic.alignment_loss(spatial, tokens, scene, on.numpy(), record.objects, words)
    loss.backward()
    assert float(loss.detach()) > 0.1
    assert tokens.background.grad is None and tokens.position[0].weight.grad is None  # the targets stay fixed
    assert model.mm_projector[0].weight.grad.abs().sum() > 0


def test_symbolic_training_learns_to_read_its_tokens():
    """A fixed batch of symbolic scenes: a few steps of stage 0 lower the answer loss, and every
    question is one its scene answers (the family-balanced draw)."""
    torch.manual_seed(0)
    model, tokenizer, _ = train.build_model(0)
    prompts = train.PromptCache(model, tokenizer)
    tokens = symbolic.SymbolicTokens(train.LLAMA['hidden_size'], tokenizer)
    params = [*model.language_model.parameters(), *tokens.parameters()]
    optimiser = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(10):
        loss, qas, right = train.symbolic_loss(model, prompts, tokens, [5, 6], np.random.default_rng(0), 8)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert len(qas) == 16 and right.shape == (16,) and right.dtype == torch.bool
    assert losses[-1] < 0.5 * losses[0], losses
    for n, qa in enumerate(qas):  # 8 questions of scene 5, then 8 of scene 6
        objects = synthetic.make_scene((5, 6)[n // 8], unique=True, min_size_m=0.25)
        truth = {
            t.question: t.answer
            for family in questions.candidates(objects, np.random.default_rng(1)).values()
            for t in family
        }
        assert truth.get(qa.question, qa.answer) == qa.answer


def test_the_referent_probe_knows_what_each_naming_token_refers_to():
    from adatoken3d_node.model.llava3d import LOCATION_TOKEN_INDEX

    model, tokenizer, _ = train.build_model(0)
    prompts = train.PromptCache(model, tokenizer)
    probe = referents.ReferentProbe(train.LLAMA['hidden_size'], tokenizer)
    objects = [
        synthetic.SceneObject('box', 'red', synthetic.COLOURS['red'], (-1.5, 1.5, 0.22), (0.4, 0.4, 0.4)),
        synthetic.SceneObject('box', 'blue', synthetic.COLOURS['blue'], (1.5, 0.0, 0.3), (0.6, 0.6, 0.6)),
        synthetic.SceneObject('sphere', 'red', synthetic.COLOURS['red'], (-1.0, 0.9, 0.15), (0.3,) * 3),
    ]

    def named(question):
        ids, points = prompts.suffix(question)
        return [
            (tokenizer.decode([ids[i]]).strip() if ids[i] >= 0 else 'point', sorted(k))
            for i, k in probe.referents(ids, points, objects, LOCATION_TOKEN_INDEX)
        ]

    assert named('How many boxes are there?') == [('boxes', [0, 1])]
    assert named('What shape is the red object?') == [('red', [0, 2])]
    assert named('Is the red box higher than the blue box?') == [('box', [0]), ('box', [1])]
    assert named('Is there a green sphere?') == [('sphere', [])]
    assert named('What is at [1.5, 0.1, 0.3]?') == [('point', [1])]
    assert named('What is at [0.0, -1.5, 0.0]?') == [('point', [])]
    red_box = probe.targets([0], objects)
    colour, shape = synthetic.COLOUR_NAMES.index, synthetic.SHAPES.index
    assert red_box == {
        'count': 1,
        'colour': colour('red'),
        'shape': shape('box'),
        'cell': questions.CELLS.index('north west'),
        'top': 4,  # top 0.42 m: 5 cm bins from 0.2 m
        'near_colour': colour('red'),
        'near_shape': shape('sphere'),
    }
    assert probe.targets([0, 1], objects) == {**dict.fromkeys(red_box, referents.IGNORE), 'count': 2}
    assert probe.targets([], objects)['count'] == 0


def test_the_object_start_probe_marks_the_first_token_of_each_object():
    on = np.array([-1, 2, 0, 2, -1, 0, 1, 1])
    assert referents.ObjectStartProbe.starts(on).tolist() == [False, True, True, False, False, False, True, False]
    probe = referents.ObjectStartProbe(4)
    hidden = torch.zeros(1, len(on), 4)
    hidden[0, :, 0] = torch.from_numpy(np.where(referents.ObjectStartProbe.starts(on), 1.0, -1.0))
    with torch.no_grad():
        probe.head.weight.copy_(torch.tensor([[20.0, 0, 0, 0]]))
        probe.head.bias.zero_()
        assert float(probe.loss(hidden, [on])) < 1e-6 and probe.accuracy == {'start': 1.0}
        loss = probe.loss(-hidden, [on])  # every token wrong: the 3 starts weigh as much as the 3 others
        assert float(loss) > 10 and probe.accuracy == {'start': 0.0}
        assert float(probe.loss(hidden, [np.full(len(on), -1)])) == 0.0 and probe.accuracy == {}
        # every object seen as one token (a far, small object): all starts, nothing to weigh them against
        alone = np.array([-1, 0, -1, 1, 2, -1, -1, -1])
        assert np.isfinite(float(probe.loss(-hidden, [alone]))) and probe.accuracy['start'] < 1.0


def two_boxes_and_a_sphere():
    """A red box, a blue box and a red sphere, apart (the count probes' scene)."""
    return [
        synthetic.SceneObject('box', 'red', synthetic.COLOURS['red'], (-1.5, 1.5, 0.2), (0.4,) * 3),
        synthetic.SceneObject('box', 'blue', synthetic.COLOURS['blue'], (1.5, 0.0, 0.3), (0.6,) * 3),
        synthetic.SceneObject('sphere', 'red', synthetic.COLOURS['red'], (-1.0, 0.9, 0.15), (0.3,) * 3),
    ]


def test_the_running_count_probe_counts_the_objects_of_each_shape_started_so_far():
    box, sphere = synthetic.SHAPES.index('box'), synthetic.SHAPES.index('sphere')
    objects = two_boxes_and_a_sphere()
    on = np.array([-1, 1, 0, 1, -1, 2, 0, 2])
    running = referents.RunningCountProbe.running(on, objects)  # (8, shapes)
    assert running[:, box].tolist() == [0, 1, 2, 2, 2, 2, 2, 2]  # a second token of an object adds nothing
    assert running[:, sphere].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert running[:, synthetic.SHAPES.index('cylinder')].tolist() == [0] * 8
    probe = referents.RunningCountProbe(len(on))
    hidden = torch.eye(len(on))[None]  # (1, 8, 8): one state per token; a head that reads its counts off it
    classes = referents.MAX_COUNT + 1
    with torch.no_grad():
        probe.head.weight.zero_()
        probe.head.bias.zero_()
        for t, counts in enumerate(running):
            for s, count in enumerate(counts):
                probe.head.weight[s * classes + int(count), t] = 20.0
        assert float(probe.loss(hidden, [on], [objects])) < 1e-6
        assert probe.accuracy == {'running': 1.0, 'running_last': 1.0}
        probe.head.weight[box * classes + 2, len(on) - 1] = 0.0  # the last token no longer says 2 boxes
        assert float(probe.loss(hidden, [on], [objects])) > 0.01
        assert probe.accuracy['running_last'] == pytest.approx(2 / 3)


def test_the_count_probe_learns_only_where_a_name_can_mean_several_objects():
    model, tokenizer, _ = train.build_model(0)
    prompts = train.PromptCache(model, tokenizer)
    probes = referents.Probes(train.LLAMA['hidden_size'], tokenizer)
    objects = two_boxes_and_a_sphere()
    asked = [
        'How many boxes are there?',
        'How many red objects are there?',
        'Is there a red box?',
        'How many cylinders are there?',
    ]
    names = probes.naming_tokens(prompts, asked, [objects] * len(asked))
    hidden = torch.zeros(len(asked), 40, train.LLAMA['hidden_size'])
    chosen = {}
    for n, at, named, token in names:  # a state per naming word that says its question
        hidden[n, at, n] = 1.0
        chosen[n] = len(named)
    with torch.no_grad():  # a head that reads the question's count off that state
        probes.count.head.weight.zero_()
        probes.count.head.bias.zero_()
        for n, count in chosen.items():
            probes.count.head.weight[count, n] = 10.0
        loss = probes.count.loss(hidden, names)
    assert chosen == {0: 2, 1: 2, 2: 1, 3: 0}
    assert probes.count.accuracy == {'many': 1.0, 'many2': 1.0} and float(loss) < 1e-3
    # "red box" names one object and is the referent probe's; the plural and colour words are the count probe's
    assert [token in probes.count.several_ids for _, _, _, token in names] == [True, True, False, True]
    with torch.no_grad():
        probes.count.head.weight[2].zero_()  # counts of two are now wrong: they weigh as much as the rest
        loss = probes.count.loss(hidden, names)
    assert probes.count.accuracy == {'many': pytest.approx(1 / 3), 'many2': 0.0} and float(loss) > 1.0


def test_every_question_has_a_template_of_its_family_and_training_draws_templates_evenly():
    drawn, offered = {}, {}
    for seed in range(40):
        objects = synthetic.make_scene(seed, unique=True, min_size_m=0.25)
        kinds = set()
        for family, qas in questions.candidates(objects, np.random.default_rng(seed)).items():
            assert all(qa.family == family and qa.kind in questions.KINDS[family] for qa in qas)
            kinds |= {qa.kind for qa in qas}
        if {'colour of a shape', 'shape of a colour'} <= kinds:  # a scene with both attribute templates
            for qa in questions.candidates(objects, np.random.default_rng(seed))['attribute']:
                offered[qa.kind] = offered.get(qa.kind, 0) + 1
            for qa in symbolic.family_balanced(objects, np.random.default_rng(seed), 60):
                drawn[qa.kind] = drawn.get(qa.kind, 0) + 1
    # such scenes offer ~3 "What shape is the <colour> object?" for each "What color is the <shape>?" ...
    assert offered['shape of a colour'] > 2 * offered['colour of a shape'], offered
    # ... and training draws the two evenly
    assert 0.75 < drawn['colour of a shape'] / drawn['shape of a colour'] < 1.33, drawn
    assert {k for kinds in questions.KINDS.values() for k in kinds} == set(drawn), drawn


def test_rare_counts_weigh_more_in_the_answer_loss_and_nothing_else_does():
    def scene(*shapes):
        return [
            synthetic.SceneObject(shape, colour, synthetic.COLOURS[colour], (x, 0.0, 0.2), (0.4,) * 3)
            for x, (shape, colour) in zip(np.linspace(-1.5, 1.5, len(shapes)), shapes)
        ]

    # nine scenes of a box and a sphere, one of three boxes: a shape count of 1 is asked 18 times, of 3 once
    scenes = [scene(('box', 'red'), ('sphere', 'blue'))] * 9 + [
        scene(('box', 'red'), ('box', 'blue'), ('box', 'green'))
    ]
    weights = questions.count_weights(scenes)
    assert weights[('count a shape', '1')] == 1.0
    assert weights[('count a shape', '3')] == pytest.approx(3.0)  # sqrt(18), capped
    assert weights[('count a shape', '0')] == pytest.approx(np.sqrt(18 / 11))  # no cylinder 10 times, no sphere once
    qas = [
        questions.ask('count a shape', 'How many boxes are there?', '3'),
        questions.ask('count a shape', 'How many boxes are there?', '9'),  # never seen: no weight of its own
        questions.ask('present', 'Is there a red box?', 'yes'),
    ]
    assert list(questions.question_weights(qas, weights)) == [pytest.approx(3.0), 1.0, 1.0]

    per_token = torch.tensor([[2.0, 0.0], [1.0, 1.0], [1.0, 0.0]])  # (N, T): the first question's one token costs 2
    counted = torch.tensor([1, 2, 1])
    assert float(train.weighted_answer_loss(per_token, counted, qas)) == pytest.approx(5.0 / 4)
    assert float(train.weighted_answer_loss(per_token, counted, qas, weights)) == pytest.approx(
        (6.0 + 2 + 1) / (3 + 2 + 1)
    )


def test_the_tokenizer_knows_the_prompt_and_every_scene_word():
    _, tokenizer, _ = train.build_model(0)
    from adatoken3d_node.model.prompt import build_prompt

    assert len(tokenizer(build_prompt('What color is the cylinder?')).input_ids) <= 40  # 83 without the prompt
    for word in [*synthetic.COLOUR_NAMES, *synthetic.SHAPES, *map(questions.plural, synthetic.SHAPES)]:
        assert questions.word_token(tokenizer, word) is not None, word


def test_a_short_training_run_writes_a_loadable_checkpoint_that_answers(tmp_path):
    from adatoken3d_node.model.loader import load_llava3d
    from adatoken3d_node.model.scene_qa import SceneAnswerer

    out = tmp_path / 'model'
    assert (
        train.main(
            [
                '--out',
                str(out),
                '--train-scenes',
                '4',
                '--val-scenes',
                '2',
                '--symbolic-steps',
                '3',
                '--vision-steps',
                '4',
                '--steps',
                '12',
                '--val-every',
                '6',
                '--threads',
                '2',
            ]
        )
        == 0
    )
    log = json.loads((out / 'training_log.json').read_text())
    assert len(log['symbolic']) == 3 and len(log['vision']) == 4 and len(log['train']) == 12 and len(log['val']) == 2
    assert (out / 'training_curves.png').stat().st_size > 0
    assert log['train'][-1]['loss'] < log['train'][0]['loss']
    model, tokenizer, _ = load_llava3d(out)
    assert not model.is_untrained and model.image_size == 160 and model.patch_grid == 16
    assert (out / 'vision_tower' / 'model.safetensors').is_file()
    answerer = SceneAnswerer(model, tokenizer, out)
    record = render_scene(SPLITS['test'], train.front_end_config())
    answer = answerer.answer(
        'How many spheres are there?', record.geometry(train.front_end_config()), answerer.policy('none'), 4
    )
    assert answer.spatial_tokens > 100 and answer.token_ids
    assert normalise(' Yes. ') == 'yes'


def test_a_linear_token_probe_reads_a_label_that_is_there_and_not_one_that_is_not():
    from adatoken3d_lab.training.token_probe import fit_linear_probe

    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(0, 3, 600))
    x = torch.from_numpy(rng.normal(size=(600, 8))).float()
    readable = x.clone()
    readable[:, 0] += 4.0 * y  # the label is one direction of the embedding
    predict = fit_linear_probe(readable[:400], y[:400], 3)
    assert float((predict(readable[400:]) == y[400:]).float().mean()) > 0.95
    predict = fit_linear_probe(x[:400], y[:400], 3)  # noise: no better than the commonest class on new tokens
    assert float((predict(x[400:]) == y[400:]).float().mean()) < 0.5
