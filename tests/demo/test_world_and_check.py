"""The demo world (prompts, scenes, the held-out split, the tokenizer) and the checker: it must
score the data generator's own frames 100% and say so when a frame is wrong on purpose."""

import dataclasses

import numpy as np
import pytest

from sglang_diffusion.demo import vocabulary_note, world
from sglang_diffusion.demo.check import judge
from sglang_diffusion.demo.folder import demo_tokenizer
from sglang_diffusion.errors import InvalidRequestError


def frames_of(scene: world.Scene, num_frames: int = 17, seed: int = 0) -> np.ndarray:
    layout = world.place(scene, 128, 128, num_frames, world.scene_rng(seed, 0))
    return world.render(layout, num_frames)


def test_prompts_parse_back_to_their_scene_whatever_the_case_punctuation_and_extra_words():
    scene = world.Scene("orange", "triangle", "up", "black")
    assert scene.prompt() == "an orange triangle moving up on a black background"
    assert world.parse_prompt(scene.prompt()) == scene
    assert world.parse_prompt("A big ORANGE triangle, moving UP, on a black background!") == scene
    assert world.parse_prompt("a white square on a green background").motion == "none"
    assert world.unknown_words("A big ORANGE triangle, moving slowly up") == ["big", "slowly"]


@pytest.mark.parametrize("prompt", ["a red circle", "a circle square on a red blue background",
                                    "a red circle moving left right on a blue background"])
def test_prompts_outside_the_world_are_refused_with_what_it_knows(prompt):
    with pytest.raises(InvalidRequestError, match="shape .*circle.*two colours"):
        world.parse_prompt(prompt)
    with pytest.raises(InvalidRequestError, match="same colour"):
        world.parse_prompt("a red circle on a red background")


def test_vocabulary_note_names_the_unknown_words_and_lists_the_known_ones():
    assert vocabulary_note("a red circle on a blue background") is None
    note = vocabulary_note("a cute red circle on a blue background, 4k")
    assert "'cute'" in note and "'k'" in note and "purple" in note and "triangle" in note


def test_held_out_scenes_are_about_an_eighth_and_every_word_still_trains():
    held, train = world.held_out_scenes(), world.training_scenes()
    assert len(held) + len(train) == len(world.all_scenes()) == 840
    assert 80 <= len(held) <= 130 and not set(held) & set(train)
    for attribute, values in (("colour", world.COLOURS), ("shape", world.SHAPES), ("motion", world.MOTIONS),
                              ("background", world.COLOURS)):
        assert {getattr(s, attribute) for s in train} == set(values)


def test_tokenizer_keeps_only_vocabulary_words_lower_cased():
    tokenizer = demo_tokenizer()
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("A cute Red circle, moving LEFT on a zebra-blue background!").input_ids)
    assert tokens == ["a", "red", "circle", "moving", "left", "on", "a", "blue", "background", "</s>"]
    assert tokenizer("").input_ids == [tokenizer.eos_token_id]


def test_rendering_is_a_pure_function_of_the_seed():
    scene = world.Scene("red", "circle", "right", "blue")
    assert np.array_equal(frames_of(scene, seed=3), frames_of(scene, seed=3))
    assert not np.array_equal(frames_of(scene, seed=3), frames_of(scene, seed=4))


@pytest.mark.parametrize("size", [128, 256])
def test_centred_placement_puts_every_paths_midpoint_near_the_centre_and_keeps_it_in_frame(size):
    scale, jitter = size / 128, 8.0
    for i, scene in enumerate(world.all_scenes()[::7]):
        rng = world.scene_rng(1, i)
        free, centred = world.place(scene, size, size, 17, rng), world.place(scene, size, size, 17, rng, jitter=jitter)
        dx, dy = world.velocity(scene.motion, scale)
        for layout in (free, centred):  # the whole path inside the frame, the margin kept
            for x, y in ((layout.x, layout.y), (layout.x + 16 * dx, layout.y + 16 * dy)):
                assert world.MARGIN <= min(x, y) - layout.half and max(x, y) + layout.half <= size - world.MARGIN
        mid_x, mid_y = centred.x + 8 * dx, centred.y + 8 * dy
        assert abs(mid_x - size / 2) <= jitter * scale and abs(mid_y - size / 2) <= jitter * scale, scene
    # Free placement does go far from the centre; the centred one is still random within its square.
    rng = world.scene_rng(2, 0)
    scene = world.Scene("red", "circle", "none", "blue")
    free = [world.place(scene, 128, 128, 17, rng).x for _ in range(200)]
    centred = [world.place(scene, 128, 128, 17, rng, jitter=jitter).x for _ in range(200)]
    assert max(abs(x - 64) for x in free) > 30 and 4 < np.ptp(centred) <= 2 * jitter


def test_checker_scores_the_generators_frames_100_percent():
    # Every 19th scene (45, every colour, shape, motion and background) as a video and as an image.
    for i, scene in enumerate(world.all_scenes()[::19]):
        for num_frames in (17, 1):
            verdict = judge(frames_of(scene, num_frames, seed=i), scene.prompt())
            assert verdict.passed, verdict
            assert ("motion" in verdict.correct()) == (num_frames > 1)


@pytest.mark.parametrize("field,wrong", [("colour", "orange"), ("background", "white"), ("shape", "square"),
                                         ("shape", "triangle"), ("motion", "left"), ("motion", "down"),
                                         ("motion", "none")])
def test_checker_says_which_property_is_wrong(field, wrong):
    drawn = world.Scene("red", "circle", "right", "blue")
    if field == "motion" and wrong == "down":
        drawn = dataclasses.replace(drawn, motion="up")
    asked = dataclasses.replace(drawn, **{field: wrong})
    correct = judge(frames_of(drawn), asked.prompt()).correct()
    assert not correct[field]
    assert all(ok for name, ok in correct.items() if name != field), correct


def test_checker_sees_a_still_shape_asked_to_move_and_a_shape_leaving_the_frame():
    still = frames_of(world.Scene("green", "square", "none", "black"))
    assert judge(still, "a green square moving left on a black background").motion == "none"
    leaving = world.render(world.Layout(world.Scene("green", "square", "right", "black"), 128, 128, 90.0, 64.0, 16.0), 17)
    verdict = judge(leaving, "a green square moving right on a black background")
    assert not verdict.in_frame and verdict.motion == "right"


def test_checker_fails_noise_and_an_empty_frame():
    noise = np.random.default_rng(0).integers(0, 256, size=(17, 128, 128, 3), dtype=np.uint8)
    assert not judge(noise, "a red circle moving right on a blue background").passed
    empty = np.broadcast_to(np.array(world.COLOURS["blue"], dtype=np.uint8), (17, 128, 128, 3))
    verdict = judge(empty, "a red circle moving right on a blue background")
    assert verdict.correct()["background"] and not verdict.passed
