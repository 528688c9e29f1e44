"""The project's own synthetic corpus, generated deterministically from a seed.

Three kinds of data come from the same small world of names, places, animals and things:
- `text`: short stories, descriptions and facts for causal-LM pretraining;
- `sft`: instruction-style prompt/response pairs. Responses vary widely in length and only a
  minority (`FORMAT_RATE`) wrap the answer in `<answer>...</answer>`, the format the default
  reward asks for, so a model pretrained on them gives rewards with spread and RL has room;
- `prompts`: RL prompts (train / eval) and `preferences`: pairs ranked by the rule judge
  (the reward model learns from them);
- `arithmetic_*`: problems with their answers (train / held-out eval) and worked solutions, some
  wrong, for the arithmetic base model (rlhf_toy/tasks/arithmetic.py);
- `calculator_*`: harder problems and transcripts that call the calculator sometimes and badly
  (rlhf_toy/tasks/calculator.py); `frozenlake_*`, `maze_*`, `taxi_*`: episode seeds (and starts) of the text games
  (rlhf_toy/agents/text_games.py).

Every generator takes a `random.Random`, so the same seed always gives the same files.
"""

from __future__ import annotations

import random

from rlhf_toy.agents.text_games import GAMES, game_rows
from rlhf_toy.rewards.functions import CLOSE_TAG, OPEN_TAG, resolve_reward
from rlhf_toy.tasks.arithmetic import arithmetic_splits
from rlhf_toy.tasks.calculator import calculator_splits

FIRST_NAMES = """Ada Alan Alma Anton Arlo Asha Bea Ben Bruno Cara Cleo Cyril Dara Dev Dina Eli Elsa Emil Enzo Esme
Ezra Faye Felix Finn Flora Gus Hana Hugo Ida Ines Ira Ivan Jade Jamal Jonah Juno Kai Kara Kenji Kira Lars Leah Lena
Leo Lila Luca Lumi Mara Marco Maya Milo Mina Nadia Nico Nina Noor Omar Opal Oren Otto Pia Priya Quinn Rafa Remy Rhea
Rosa Ruben Sami Sara Selma Soren Tara Teo Tess Theo Uma Vera Vik Wren Yara Yuki Zane Zara Zoe Ansel Bodhi Calla Dax
Eira Fenna Galen Hollis Idris Jovi Keaton Liesl Marlo Nell Orla Pax Rune Sable Tamsin Ulla Vesna Wilder Xavi Yael Zev""".split()
PLACES = """Ashford Brindle Calder Dunmore Elmstead Fairhaven Glenrock Harrow Ivywell Juniper Kestrel Larkspur Marrow
Northwick Oakhollow Pemberly Quarry Redfern Saltmarsh Thornbury Umber Valemont Westbrook Yarrow Zephyr Amberly
Blackwater Cresthill Deepdale Eastmere Foxglove Greystone Hollowmere Ironvale Kingsreach Lowfield Millbrook Nettlebed
Oldcastle Pinecrest Riverside Silverlake Stonebridge Tidewater Underhill Windmere Aldgate Birchwood Cobblestone""".split()
ANIMALS = """fox owl cat dog hare bear wolf otter badger heron crow mouse deer goat horse duck swan frog toad beaver
rabbit squirrel hedgehog lynx moose raven robin sparrow turtle whale seal dolphin pony lamb""".split()
THINGS = """lamp kettle boat bridge garden lantern book map bell clock basket drum kite ladder mirror river road tower
well window wagon cottage mill orchard harbor forest meadow cave hill lake""".split()
ADJECTIVES = """small quiet bright old brave gentle clever tired happy curious busy calm cold warm tall tiny golden silver
green blue red muddy sunny windy dark shy proud lazy wise kind lucky""".split()
FOODS = "bread soup apples pears cheese honey berries porridge pie rice beans carrots plums nuts".split()
JOBS = "baker farmer sailor painter miller weaver teacher smith doctor poet gardener builder".split()
COLORS = "red blue green yellow white black brown grey orange purple".split()
VERBS = "found carried painted fixed visited watched followed built crossed cleaned opened climbed".split()
TIMES = "one morning|one evening|at dawn|after the rain|in the spring|in late autumn|on a cold night|at noon".split("|")
NUMBERS = "two three four five six seven eight nine ten twelve".split()

FORMAT_RATE = 0.12  # share of SFT responses in the rewarded <answer>...</answer> format


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _sentence(rng: random.Random, subject: dict[str, str] | None = None) -> str:
    """One sentence about the little world; `subject` pins some slots (name, place, animal, thing)."""
    slots = {"name": rng.choice(FIRST_NAMES), "place": rng.choice(PLACES), "animal": rng.choice(ANIMALS),
             "thing": rng.choice(THINGS), **(subject or {})}
    name, place, animal, thing = slots["name"], slots["place"], slots["animal"], slots["thing"]
    adj, adj2, food, job = rng.choice(ADJECTIVES), rng.choice(ADJECTIVES), rng.choice(FOODS), rng.choice(JOBS)
    templates = [
        f"{name} the {job} lived near the {adj} {thing} in {place}.",
        f"{rng.choice(TIMES).capitalize()}, {name} {rng.choice(VERBS)} the {adj} {thing}.",
        f"{_a(adj).capitalize()} {animal} watched {name} from the {thing}.",
        f"The {thing} in {place} was {adj} and {adj2}.",
        f"{name} shared {food} with {_a(adj)} {animal}.",
        f"People in {place} say the {animal} is {adj}.",
        f"The {animal} {rng.choice(VERBS)} {_a(rng.choice(COLORS))} {thing} near {place}.",
        f"{name} and {rng.choice(FIRST_NAMES)} walked to {place} to buy {food}.",
        f"Every {animal} in {place} likes {food}.",
        f"The {job} of {place} was {adj} but {adj2}.",
    ]
    return rng.choice(templates)


def _fact(rng: random.Random) -> str:
    animal, place, thing = rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(THINGS)
    return rng.choice([
        f"A {animal} can live for {rng.choice(NUMBERS)} years.",
        f"{place} has {rng.choice(NUMBERS)} bridges and one {thing}.",
        f"The {animal} eats {rng.choice(FOODS)} in the {rng.choice(['spring', 'summer', 'autumn', 'winter'])}.",
        f"Most {thing}s in {place} are {rng.choice(COLORS)}.",
        f"A young {animal} is often {rng.choice(ADJECTIVES)}.",
    ])


def _sentences(rng: random.Random, n: int, facts: bool = False, subject: dict[str, str] | None = None) -> str:
    return " ".join(_fact(rng) if facts else _sentence(rng, subject) for _ in range(n))


def text_document(rng: random.Random) -> str:
    """A short story, description or list of facts (1-6 sentences)."""
    kind = rng.random()
    if kind < 0.5:
        name = rng.choice(FIRST_NAMES)
        return f"Once upon a time, {name} lived in {rng.choice(PLACES)}. " + _sentences(rng, rng.randint(1, 5))
    if kind < 0.75:
        return f"{rng.choice(PLACES)} is a {rng.choice(ADJECTIVES)} town. " + _sentences(rng, rng.randint(1, 4))
    return _sentences(rng, rng.randint(1, 5), facts=True)


def make_prompt(rng: random.Random) -> tuple[str, dict[str, str]]:
    """An instruction about the little world, and the slots its answer should be about."""
    subject = {"name": rng.choice(FIRST_NAMES), "place": rng.choice(PLACES), "animal": rng.choice(ANIMALS),
               "thing": rng.choice(THINGS)}
    name, place, animal, thing = subject.values()
    templates = [
        (f"Tell me about {name}.", ["name"]),
        (f"Describe the town of {place}.", ["place"]),
        (f"Write a story about {_a(animal)}.", ["animal"]),
        (f"What happened to the {thing} in {place}?", ["thing", "place"]),
        (f"Tell me a fact about the {animal}.", ["animal"]),
        (f"Who lives in {place}?", ["place"]),
        (f"Write about {name} and the {thing}.", ["name", "thing"]),
        (f"Describe {_a(rng.choice(ADJECTIVES))} {animal}.", ["animal"]),
    ]
    prompt, keys = rng.choice(templates)
    return prompt, {k: subject[k] for k in keys}


def make_response(rng: random.Random, subject: dict[str, str] | None = None, formatted: bool | None = None) -> str:
    """A response about `subject` whose length varies widely (1-7 sentences, sometimes a phrase).

    formatted=None draws the <answer> format with probability FORMAT_RATE.
    """
    if formatted is None:
        formatted = rng.random() < FORMAT_RATE
    if rng.random() < 0.15:
        body = f"The {rng.choice(ADJECTIVES)} {(subject or {}).get('animal', rng.choice(ANIMALS))}."
    else:
        body = _sentences(rng, rng.choice([1, 1, 2, 2, 3, 4, 5, 7]), facts=rng.random() < 0.3, subject=subject)
    return f"{OPEN_TAG} {body} {CLOSE_TAG}" if formatted else body


def sft_example(rng: random.Random) -> dict[str, str]:
    prompt, subject = make_prompt(rng)
    return {"prompt": prompt, "response": make_response(rng, subject)}


def preference_pair(rng: random.Random) -> dict:
    """Two responses to one prompt, ranked by the rule judge (the default RLHF reward).

    Responses use the rewarded format half of the time, so pairs differ in format as well as
    length; ties are redrawn. Label noise is applied by the reward-model trainer, not here.
    """
    judge = resolve_reward()
    prompt, subject = make_prompt(rng)
    while True:
        a, b = (make_response(rng, subject, formatted=rng.random() < 0.5) for _ in range(2))
        score_a, score_b = judge([prompt, prompt], [a, b])
        if abs(score_a - score_b) > 1e-9:
            break
    (chosen, score_chosen), (rejected, score_rejected) = sorted([(a, score_a), (b, score_b)], key=lambda x: -x[1])
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "score_chosen": round(score_chosen, 6), "score_rejected": round(score_rejected, 6)}


# Sizes of the shipped files (data/README.md describes their schemas).
SPLIT_SIZES = {"pretrain": 12_000, "sft": 12_000, "prompts_train": 2_000, "prompts_eval": 64,
               "preferences_train": 4_000, "preferences_eval": 500,
               "arithmetic_train": 2_000, "arithmetic_eval": 100, "arithmetic_sft": 40_000,
               "calculator_train": 2_000, "calculator_eval": 200, "calculator_sft": 16_000,
               "frozenlake_train": 2_000, "frozenlake_eval": 1_000, "maze_train": 2_000, "maze_eval": 400,
               "taxi_train": 2_000, "taxi_eval": 400}


def generate_corpus(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[dict[str, str]]]:
    """Every shipped split as rows, deterministically from seed (one stream per split, so
    changing the size of one leaves the others as they were)."""
    sizes = {**SPLIT_SIZES, **(sizes or {})}
    makers = {
        "pretrain": lambda rng: {"text": text_document(rng)},
        "sft": sft_example,
        "prompts_train": lambda rng: {"prompt": make_prompt(rng)[0]},
        "prompts_eval": lambda rng: {"prompt": make_prompt(rng)[0]},
        "preferences_train": preference_pair,
        "preferences_eval": preference_pair,
    }
    splits = {}
    for index, (name, make) in enumerate(makers.items()):
        rng = random.Random(seed * 1_000 + index)
        splits[name] = [make(rng) for _ in range(sizes[name])]
    # the arithmetic splits are drawn together, so that no eval problem appears in the others
    splits.update(arithmetic_splits(random.Random(seed * 1_000 + len(makers)), sizes))
    splits.update(calculator_splits(random.Random(seed * 1_000 + len(makers) + 1), sizes))
    for index, game in enumerate(GAMES):  # episode seeds (and maze starts): eval 0.., train 10,000..; pretraining 100,000..
        rng = random.Random(seed * 1_000 + len(makers) + 2 + index)
        splits[f"{game}_eval"] = game_rows(game, sizes[f"{game}_eval"], 0, rng)
        splits[f"{game}_train"] = game_rows(game, sizes[f"{game}_train"], 10_000, rng)
    for split in ("train", "eval"):  # the same prompts as conversations (TRL's format), for the chat model (--task chat)
        splits[f"prompts_chat_{split}"] = [{"prompt": [{"role": "user", "content": row["prompt"]}]} for row in splits[f"prompts_{split}"]]
        splits[f"calculator_chat_{split}"] = [{"prompt": [{"role": "user", "content": row["prompt"]}], "answer": row["answer"]}
                                              for row in splits[f"calculator_{split}"]]
    return splits
