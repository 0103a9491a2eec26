"""Rule-based split of a pedestrian caption into its identity part and its clothing part.

``split_caption(text) -> (id_caption, cloth_caption)``. The rules, in order:

1. **Sentences.** The caption is cut into sentences at ``.``, ``;``, ``!`` and ``?``.
2. **Segments.** Each sentence is cut into segments at commas and before a *boundary word*:
   conjunctions (``and``, ``but``, ``while``, ``with``, ``who``, ``which``, ``that``, ``plus``),
   clothing verbs (``wearing``, ``wears``, ``dressed``, ``carrying``, ``holding``, ``has on`` ...),
   the verbs ``is`` / ``are`` / ``has`` / ``have``, and ``in`` when a clothing word follows before
   the next boundary (``a man in a black coat``, not ``hair in a ponytail``). A segment made only
   of function words (``is``, ``and is``) or only of a subject (``he``, ``she``, ``the person``)
   is glued to the segment after it, so ``He is carrying a bag`` stays one segment.
3. **Classes.** Each segment is classified with two keyword lexicons:
   *identity* — gender and age words (man, woman, lady, boy, girl, young, old, middle-aged,
   teen ...), build (slim, thin, heavy, fat, tall, short ...), hair (hair, bald, ponytail, bangs,
   braid, curly ...), face, beard, skin; *clothing* — garments (shirt, t-shirt, jacket, coat,
   sweater, hoodie, dress, skirt, trousers, pants, jeans, shorts, leggings, shoes, sneakers, boots,
   sandals, heels, socks, hat, cap, scarf, belt ...), bags (backpack, bag, handbag, purse,
   satchel ...), accessories, patterns (striped, plaid, logo ...) and the clothing verbs.
   **Glasses, sunglasses, masks, watches and jewellery count as clothing**: like garments they
   are put on and taken off, so they must not define who a person is.
   A segment with a clothing word is clothing (``the man's black shirt``: the garment is what it
   describes); otherwise one with an identity word is identity; a segment with neither (a
   colour, ``walking down the street``) takes the class of the segment before it in the same
   sentence, or of the next one when it comes first; a sentence with no keyword at all is
   identity (pose and context are not clothing). Colours have no class of their own: they follow
   the garment or the hair they describe.
4. **Output.** Consecutive segments of one class are re-joined; each part keeps the caption's
   words (and commas), minus leading connectives (``and``, ``is``, ``with`` ...), starts with a
   capital and ends with a full stop. A clothing part also drops the subject glued onto it
   (``He is carrying a bag`` → ``Carrying a bag.``) so gender does not leak into the clothing
   text. All identity parts form ``id_caption``, all clothing parts ``cloth_caption``.

Fallbacks: a caption with no clothing part gives ``cloth_caption == ""`` (the training row gets
``cloth_valid = False``: it still trains the identity terms, the clothing terms skip it and it is
never drawn as a negative). A caption with no identity part gives the **full caption** as its
identity text, so the identity branch always has text to read.

Example: ``"The man has short black hair and is wearing a white t-shirt with black shorts. He is
carrying a blue backpack."`` → ``("The man has short black hair.", "Wearing a white t-shirt with
black shorts. Carrying a blue backpack.")``.

Bump :data:`SPLITTER_VERSION` whenever a rule or a lexicon changes: it keys the table cache.
"""

from __future__ import annotations

import functools
import re

SPLITTER_VERSION = 2  # 2: bags named rucksack / knapsack / crossbody, slacks, hooded, zip-up, maxi are clothing; stout is build

_IDENTITY = frozenset(
    """
    man men woman women boy boys girl girls lady ladies gentleman guy gal female male kid child
    children baby toddler adult teen teenager teenage youth elderly aged old older young younger
    middle-aged age years year twenties thirties forties fifties sixties
    slim thin skinny slender heavy heavyset fat chubby overweight plump stocky stout muscular build
    built tall short petite height figure body
    hair haired hairs hairstyle haircut bald balding ponytail ponytails pigtails bun braid braids
    braided bangs fringe curly wavy straight blonde blond brunette redhead
    face faced beard bearded mustache moustache goatee skin skinned complexion
    """.split()
)

_CLOTHING = frozenset(
    """
    shirt shirts t-shirt tshirt tee blouse top tops tank vest polo jersey jacket jackets coat
    coats overcoat raincoat parka blazer suit sweater sweaters sweatshirt jumper cardigan hoodie
    hoody hood hooded zip-up pullover windbreaker uniform dress dresses gown maxi skirt skirts trousers
    pants slacks chinos khakis jeans shorts capris leggings tights stockings overalls jumpsuit apron
    sleeve sleeves sleeved
    sleeveless collar collared neckline outfit clothes clothing garment attire
    shoe shoes sneakers sneaker trainers boots boot sandals sandal heels heel slippers flats loafers
    socks sock footwear
    hat hats cap caps beanie helmet hood headband headscarf scarf scarves shawl gloves glove belt tie
    bag bags backpack backpacks rucksack rucksacks knapsack knapsacks daypack crossbody handbag
    handbags purse purses satchel tote briefcase suitcase luggage pouch wallet umbrella
    glasses sunglasses spectacles eyeglasses goggles mask watch bracelet necklace earrings earring
    jewelry jewellery ring
    striped stripes stripe plaid checkered checked floral logo logos print printed pattern
    patterned design designs lettering writing polka zipper buttons button pocket pockets denim
    leather wearing wears wear wore worn dressed carrying carries carry carried holding holds
    """.split()
)

# Words that open a new segment; multi-word ones are matched on their first word.
_CONJUNCTIONS = frozenset("and but while with who which that plus whilst".split())
_CLOTH_VERBS = frozenset("wearing wears wore dressed carrying carries holding holds".split())
_AUX = frozenset("is are was were has have had also".split())
_SUBJECTS = frozenset(
    "he she they it his her their the a an this that person pedestrian individual someone "
    "somebody people".split()
)
# Leading words dropped from the start of an output part ("and is wearing" -> "wearing").
_LEADING = _CONJUNCTIONS | _AUX | frozenset({"also", "both"})

_SENTENCE_RE = re.compile(r"[.;!?]+")
_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")


@functools.lru_cache(maxsize=1 << 16)
def _word_class(word: str) -> str | None:
    """'cloth', 'id' or None for one word: whole word, hyphen parts, plural / possessive stems.

    Clothing is checked first so that "shorts" is a garment although "short" is a build word.
    """
    w = _low(word).removesuffix("'s").strip("'-")
    candidates = {w, w.removesuffix("s"), w.removesuffix("es")}
    if "-" in w:
        candidates.update(p for p in w.split("-") if p)
    if candidates & _CLOTHING:
        return "cloth"
    if candidates & _IDENTITY:
        return "id"
    return None


def _low(word: str) -> str:
    return word.lower().rstrip(",")


def _is_cloth(word: str) -> bool:
    return _word_class(word) == "cloth"


def _segments(sentence: str) -> list[list[str]]:
    """Cut one sentence into word lists at commas and before boundary words (rule 2)."""
    segments: list[list[str]] = []
    for chunk in sentence.split(","):
        words = _WORD_RE.findall(chunk)
        current: list[str] = []
        for i, word in enumerate(words):
            if current and _starts_segment(words, i):
                segments.append(current)
                current = []
            current.append(word)
        if current:
            current[-1] += ","  # kept for rendering; _low() ignores it
            segments.append(current)
    return _glue(segments)


def _starts_segment(words: list[str], i: int) -> bool:
    w = _low(words[i])
    if w in _CONJUNCTIONS or w in _CLOTH_VERBS or w in ("is", "are", "has", "have"):
        return True
    if w == "in":  # "a man in a black coat" but not "hair in a ponytail" / "in the street"
        for nxt in words[i + 1 :]:
            low = _low(nxt)
            if low in _CONJUNCTIONS or low in _CLOTH_VERBS:
                return False
            if _is_cloth(nxt):
                return True
    return False


def _glue(segments: list[list[str]]) -> list[list[str]]:
    """Glue function-word-only or subject-only segments onto the segment that follows."""
    out: list[list[str]] = []
    carry: list[str] = []
    for seg in segments:
        seg = carry + seg
        if all(_low(w) in _LEADING | _SUBJECTS for w in seg):
            carry = seg
            continue
        carry = []
        out.append(seg)
    if carry:
        if out:
            out[-1] = out[-1] + carry
        else:
            out.append(carry)
    return out


def _classify(segments: list[list[str]]) -> list[str]:
    """'cloth' / 'id' per segment (rule 3); neutral segments inherit from their neighbours."""
    labels: list[str | None] = []
    for seg in segments:
        classes = {_word_class(w) for w in seg}
        labels.append("cloth" if "cloth" in classes else "id" if "id" in classes else None)
    if all(label is None for label in labels):
        return ["id"] * len(segments)
    first = next(label for label in labels if label is not None)
    resolved: list[str] = []
    for label in labels:
        resolved.append(label or (resolved[-1] if resolved else first))
    return resolved


def _render(words: list[str], label: str) -> str:
    """One output part: drop leading connectives (and, for clothing, the glued-on subject)."""
    if label == "cloth":
        # "He is carrying a bag" -> "Carrying a bag": the subject would leak gender into the
        # clothing text. Drop the subject/connective run up to its last connective, or all of it
        # when a clothing verb follows ("She wears a cap"); "A black bag" keeps its article.
        run = 0
        while run < len(words) and _low(words[run]) in _LEADING | _SUBJECTS:
            run += 1
        cut = max((i + 1 for i in range(run) if _low(words[i]) in _LEADING), default=0)
        if run < len(words) and _low(words[run]) in _CLOTH_VERBS | {"wear"}:
            cut = run
        if 0 < cut < len(words) and _low(words[cut]) == "on" and _low(words[cut - 1]) in _AUX:
            cut += 1  # "he has on a jacket"
        words = words[cut:]
    while words and _low(words[0]) in _LEADING:
        words = words[1:]
    if not words:
        return ""
    text = " ".join(words).rstrip(",")
    return text[0].upper() + text[1:] + "."


def split_caption(text: str) -> tuple[str, str]:
    """(id_caption, cloth_caption) of one caption; see the module docstring for the rules."""
    id_parts: list[str] = []
    cloth_parts: list[str] = []
    for sentence in _SENTENCE_RE.split(text):
        segments = _segments(sentence)
        if not segments:
            continue
        labels = _classify(segments)
        groups: list[tuple[str, list[str]]] = []
        for label, seg in zip(labels, segments):
            if groups and groups[-1][0] == label:
                groups[-1][1].extend(seg)
            else:
                groups.append((label, list(seg)))
        for label, words in groups:
            rendered = _render(words, label)
            if rendered:
                (cloth_parts if label == "cloth" else id_parts).append(rendered)
    cloth = " ".join(cloth_parts)
    identity = " ".join(id_parts) if id_parts else " ".join(text.split())
    return identity, cloth


def text_segments(text: str) -> list[str]:
    """The caption's segments (rules 1 and 2: sentences, then commas and boundary words), each
    joined back into words; for dropping parts of an identity text during training."""
    out = []
    for sentence in _SENTENCE_RE.split(text):
        out += [" ".join(w.rstrip(",") for w in seg) for seg in _segments(sentence)]
    return [seg for seg in out if seg]
