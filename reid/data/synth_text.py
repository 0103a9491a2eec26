"""CUHK-PEDES-style captions for synthetic pedestrians, and CUHK's lower-case word tokens.

Each caption states every identity fact the image shows (gender, age, height, build, skin, hair
style and colour, and a beard when seen from the front) and all of the clothing (upper and lower
garment, shoes, bag), in one of several templates with synonyms. Identity facts and clothing facts sit in separate
sentences, or in the subject and the predicate of one sentence ("A tall man with short black hair |
is wearing ..."), so that a rule-based splitter can pull them apart. Only what the camera shows is
said: a beard is not mentioned in a view from behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

MIN_WORDS, MAX_WORDS = 14, 45  # CUHK captions: mostly 15-45 words

_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def tokenize(caption: str) -> list[str]:
    """CUHK's ``processed_tokens``: lower-case words, punctuation dropped, hyphenated words kept."""
    return _TOKEN.findall(caption.lower())


def identity_words(identity) -> dict[str, str]:
    """The words a caption uses for the continuous identity factors (thirds of their ranges)."""
    height = "short" if identity.height < 0.88 else "tall" if identity.height > 0.94 else "average"
    build = "slim" if identity.build < 0.95 else "heavy" if identity.build > 1.15 else "average"
    tone = identity.skin_tone
    skin = "pale" if tone < 0.25 else "light" if tone < 0.5 else "tan" if tone < 0.75 else "dark"
    return {"height": height, "build": build, "skin": skin}


_HEIGHT = {"short": ("short",), "tall": ("tall",), "average": ("of average height", "of medium height")}
_BUILD = {
    "slim": ("slim", "thin", "slender", "skinny"),
    "heavy": ("heavy", "heavyset", "stout", "chubby", "plump"),
    "average": ("of average build", "of medium build"),
}
_SKIN = {
    "pale": ("pale", "fair"), "light": ("light",),
    "tan": ("tan", "olive", "tanned"), "dark": ("dark", "brown"),
}
_NOUN = {
    ("man", None): ("man", "guy", "male", "gentleman"),
    ("woman", None): ("woman", "lady", "female"),
    ("man", "young"): ("young man", "boy", "young guy"),
    ("woman", "young"): ("young woman", "girl", "young lady"),
    ("man", "old"): ("old man", "elderly man", "older man"),
    ("woman", "old"): ("old woman", "elderly woman", "older lady"),
}
_HAIR_COLOUR = {"blonde": ("blonde", "blond"), "red": ("red", "ginger"), "grey": ("grey", "gray")}
_HAIR_LENGTH = {"short": ("short",), "medium": ("shoulder-length", "medium-length"), "long": ("long",)}
_COLOUR = {"grey": ("grey", "gray")}
_UPPER = {
    "t-shirt": ("t-shirt", "short-sleeved shirt", "tee"),
    "shirt": ("shirt", "long-sleeved shirt", "button-up shirt"),
    "jacket": ("jacket", "zip-up jacket"),
    "coat": ("coat", "long coat", "overcoat"),
    "hoodie": ("hoodie", "hooded sweatshirt", "hooded top"),
    "tank top": ("tank top", "sleeveless top", "vest"),
    "dress": ("dress", "short-sleeved dress"),
}
_LOWER = {  # (words, plural?)
    "trousers": (("trousers", "pants", "slacks"), True),
    "jeans": (("jeans", "denim jeans"), True),
    "shorts": (("shorts",), True),
    "skirt": (("skirt", "short skirt", "knee-length skirt"), False),
    "long skirt": (("long skirt", "ankle-length skirt", "maxi skirt"), False),
}
_SHOES = {"shoes": ("shoes", "sneakers", "trainers"), "boots": ("boots", "ankle boots")}
_BAG = {
    "backpack": ("backpack", "rucksack"),
    "handbag": ("handbag", "purse", "hand bag"),
    "shoulder bag": ("shoulder bag", "crossbody bag", "messenger bag"),
}
_BAG_PLACE = {"backpack": "on {his} back", "handbag": "in {his} hand", "shoulder bag": "over {his} shoulder"}
_WEAR = ("is wearing", "wears", "is dressed in")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeio" else "a ") + phrase


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


@dataclass
class _Parts:
    """One caption's chosen wording; ``body`` / ``skin`` / ``beard`` are empty when left out."""

    he: str
    his: str
    noun: str  # "man", "elderly woman", ...
    body: list[str]  # predicate adjectives: ["tall", "of medium build"]
    hair_with: str  # "long black hair", "a bald head"
    hair_sentence: str  # "Her hair is long and black."
    skin: str  # "fair skin"
    beard: str  # "a beard"
    garments: list[str]  # ["a red jacket", "blue jeans"] or ["a pink dress"]
    shoes: str
    bag: str  # a whole sentence, possibly ""
    wear: str


def _hair(identity, rng: np.random.Generator, he: str, his: str) -> tuple[str, str]:
    style = identity.hair_style
    if style == "bald":
        return "a bald head", f"{_cap(he)} is bald."
    colour = _pick(rng, _HAIR_COLOUR.get(identity.hair_colour, (identity.hair_colour,)))
    if style == "ponytail":
        return _pick(rng, (f"{colour} hair tied in a ponytail", f"a {colour} ponytail")), \
            f"{_cap(his)} {colour} hair is tied in a ponytail."
    if style == "bun":
        return _pick(rng, (f"{colour} hair in a bun", f"{colour} hair tied up in a bun")), \
            f"{_cap(his)} {colour} hair is worn in a bun."
    length = _pick(rng, _HAIR_LENGTH[style])
    return f"{length} {colour} hair", f"{_cap(his)} hair is {length} and {colour}."


def _colour(rng: np.random.Generator, name: str) -> str:
    return _pick(rng, _COLOUR.get(name, (name,)))


def _clothes(outfit, rng: np.random.Generator) -> tuple[list[str], str]:
    upper = _a(f"{_colour(rng, outfit.upper_colour)} {_pick(rng, _UPPER[outfit.upper_type])}")
    garments = [upper]
    if outfit.lower_type != "dress":
        words, plural = _LOWER[outfit.lower_type]
        lower = f"{_colour(rng, outfit.lower_colour)} {_pick(rng, words)}"
        garments.append(("a pair of " if rng.random() < 0.25 else "") + lower if plural else _a(lower))
    shoes = f"{_colour(rng, outfit.shoes_colour)} {_pick(rng, _SHOES[outfit.shoes_type])}"
    return garments, ("a pair of " + shoes if rng.random() < 0.2 else shoes)


def _bag(outfit, rng: np.random.Generator, he: str, his: str) -> str:
    if outfit.bag == "none":
        options = (f"{_cap(he)} is not carrying anything.", f"{_cap(he)} has no bag.", "", "")
        return _pick(rng, options)
    bag = f"{_colour(rng, outfit.bag_colour)} {_pick(rng, _BAG[outfit.bag])}"
    where = _BAG_PLACE[outfit.bag].format(his=his)
    return _pick(rng, (f"{_cap(he)} carries {_a(bag)}.", f"{_cap(he)} has {_a(bag)} {where}.",
                       f"{_cap(_a(bag))} is {where}."))


def _parts(identity, outfit, facing: str, facts: set[str], rng: np.random.Generator) -> _Parts:
    words = identity_words(identity)
    he, his = ("he", "his") if identity.gender == "man" else ("she", "her")
    body = [_pick(rng, _HEIGHT[words["height"]])] if "height" in facts else []
    body += [_pick(rng, _BUILD[words["build"]])] if "build" in facts else []
    hair_with, hair_sentence = _hair(identity, rng, he, his)
    garments, shoes = _clothes(outfit, rng)
    return _Parts(
        he=he, his=his, noun=_pick(rng, _NOUN[(identity.gender, identity.age if "age" in facts else None)]),
        body=body, hair_with=hair_with, hair_sentence=hair_sentence,
        skin=f"{_pick(rng, _SKIN[words['skin']])} skin" if "skin" in facts else "",
        beard="a beard" if "beard" in facts else "", garments=garments, shoes=shoes,
        bag=_bag(outfit, rng, he, his), wear=_pick(rng, _WEAR),
    )


def _id_extra(p: _Parts, with_hair: bool) -> str:
    """'She is tall and slim, with fair skin.' (or '' when nothing is left to say)."""
    has = ([p.hair_with] if with_hair else []) + [x for x in (p.skin, p.beard) if x]
    if p.body:
        return f"{_cap(p.he)} is {_and(p.body)}" + (f", with {_and(has)}." if has else ".")
    return f"{_cap(p.he)} has {_and(has)}." if has else ""


# Templates: clothing after identity, clothing first, and the two in one sentence's subject / predicate.
def _t_classic(p: _Parts) -> str:
    who = f"{_cap(_a(p.noun))} with {p.hair_with}"
    return f"{who} {p.wear} {_and(p.garments + [p.shoes])}. {p.bag} " + _id_extra(p, False)


def _t_identity_first(p: _Parts) -> str:
    first = f"This {p.noun} is {_and(p.body)}. " if p.body else f"This is {_a(p.noun)}. "
    has = [p.hair_with] + [x for x in (p.skin, p.beard) if x]
    clothes = f"{_cap(p.he)} {p.wear} {_and(p.garments)}, with {p.shoes}. {p.bag}"
    return first + f"{_cap(p.he)} has {_and(has)}. " + clothes


def _t_clothing_first(p: _Parts) -> str:
    clothes = f"The person {p.wear} {_and(p.garments)}, with {p.shoes} on {p.his} feet. {p.bag} "
    adjs = [b for b in p.body if " " not in b]  # "tall", "slim" go before the noun, "of average build" after
    rest = [b for b in p.body if " " in b]
    has = [p.hair_with] + [x for x in (p.skin, p.beard) if x]
    who = f"{_cap(p.he)} is {_a(' '.join(adjs + [p.noun]))}" + (f" {_and(rest)}" if rest else "")
    return clothes + f"{who} with {_and(has)}."


def _t_pedestrian_in(p: _Parts) -> str:
    lead = f"A pedestrian in {_and(p.garments)} is walking. {_cap(p.he)} also wears {p.shoes}. {p.bag} "
    has = [p.hair_with] + [x for x in (p.skin, p.beard) if x]
    body = f", {_and(p.body)}," if p.body else ""
    return lead + f"{_cap(p.he)} is {_a(p.noun)}{body} with {_and(has)}."


def _t_fragment(p: _Parts) -> str:
    first = f"{_cap(_a(p.noun))} with {p.skin}." if p.skin else f"{_cap(_a(p.noun))}."
    extra = f" {_cap(p.he)} is {_and(p.body)}." if p.body else ""
    extra += f" {_cap(p.he)} has {p.beard}." if p.beard else ""
    return f"{first} {p.hair_sentence}{extra} {_cap(p.he)} {p.wear} {_and(p.garments + [p.shoes])}. {p.bag}"


def _t_outfit(p: _Parts) -> str:
    has = [p.hair_with] + [x for x in (p.skin, p.beard) if x]
    first = f"The {p.noun} has {_and(has)}" + (f"; {p.he} is {_and(p.body)}." if p.body else ".")
    return first + f" {_cap(p.his)} outfit consists of {_and(p.garments + [p.shoes])}. {p.bag}"


TEMPLATES: tuple[Callable[[_Parts], str], ...] = (
    _t_classic, _t_identity_first, _t_clothing_first, _t_pedestrian_in, _t_fragment, _t_outfit,
)
IDENTITY_FACTS = ("gender", "age", "height", "build", "skin", "hair_style", "hair_colour", "beard")
_SAID_ALWAYS = ("gender", "hair_style", "hair_colour")  # every template names the noun and the hair
_OPTIONAL = ("age", "height", "build", "skin", "beard")


def visible_facts(identity, facing: str) -> list[str]:
    """The identity factors an image shows: all of them, but a beard only from the front (and only
    when there is one: a caption does not say "no beard")."""
    return list(_SAID_ALWAYS) + [f for f in _OPTIONAL if f != "beard" or (identity.beard and facing == "front")]


def make_captions(identity, outfit, facing: str, rng: np.random.Generator, num: int = 2) -> list[tuple[str, list[str]]]:
    """``num`` captions of one image, each from a different template, of MIN..MAX_WORDS words, with
    the identity factors each one names (:data:`IDENTITY_FACTS` names, in that order).

    Every caption names every visible identity factor (:func:`visible_facts`), so that a person's
    identity description is close to unique among a few hundred people: the clothing-change
    benchmark needs queries whose identity part identifies the person. A caption that would be too
    long drops its bag sentence first, then optional identity facts.
    """
    visible = visible_facts(identity, facing)
    optional = [f for f in visible if f in _OPTIONAL]
    order = rng.permutation(len(TEMPLATES))[:num]
    captions = []
    for t in order:
        facts, keep_bag = set(optional), True
        for _ in range(12):  # re-word until the length fits (nearly always at once)
            parts = _parts(identity, outfit, facing, facts, rng)
            if not keep_bag:
                parts.bag = ""
            text = " ".join(TEMPLATES[int(t)](parts).split())
            n = len(tokenize(text))
            if n <= MAX_WORDS:
                break
            if keep_bag and parts.bag:
                keep_bag = False
            elif facts:  # still too long: say one identity fact less
                facts.discard(sorted(facts)[int(rng.integers(len(facts)))])
        said = set(_SAID_ALWAYS) | facts
        captions.append((text, [f for f in IDENTITY_FACTS if f in said]))
    return captions
