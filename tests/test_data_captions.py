"""The rule-based caption splitter on CUHK-PEDES-style captions."""

from __future__ import annotations

import pytest

from reid.data import captions
from reid.data.captions import split_caption

CASES = [
    (
        "The man has short black hair and is wearing a white t-shirt with black shorts. He is carrying a blue backpack.",
        "The man has short black hair.",
        "Wearing a white t-shirt with black shorts. Carrying a blue backpack.",
    ),
    (
        "A woman wearing a red coat, black pants and white sneakers.",
        "A woman.",
        "Wearing a red coat, black pants and white sneakers.",
    ),
    (
        "A young man with short hair is wearing a grey hoodie and blue jeans.",
        "A young man with short hair.",
        "Wearing a grey hoodie and blue jeans.",
    ),
    (
        "The woman has long brown hair that is pulled back into a ponytail. She is wearing a black jacket over a "
        "white shirt and carrying a brown purse.",
        "The woman has long brown hair that is pulled back into a ponytail.",
        "Wearing a black jacket over a white shirt and carrying a brown purse.",
    ),
    (
        "Her hair is tied in a ponytail and she is wearing a pink dress.",
        "Her hair is tied in a ponytail.",
        "Wearing a pink dress.",
    ),
    (
        "A heavyset man in his forties with a bald head, wearing a navy polo shirt and tan shorts.",
        "A heavyset man in his forties with a bald head.",
        "Wearing a navy polo shirt and tan shorts.",
    ),
    (
        "This person is an older man with a grey beard. He has on a dark blue jacket, khaki pants and brown boots.",
        "This person is an older man with a grey beard.",
        "A dark blue jacket, khaki pants and brown boots.",
    ),
    (
        "A middle-aged woman with shoulder length curly hair. She is wearing a green sweater, a black skirt and "
        "black heels, and has a white bag on her shoulder.",
        "A middle-aged woman with shoulder length curly hair.",
        "Wearing a green sweater, a black skirt and black heels, and has a white bag on her shoulder.",
    ),
    (  # glasses are accessories: clothing, not identity
        "The girl wears glasses, a yellow shirt and denim shorts.",
        "The girl.",
        "Wears glasses, a yellow shirt and denim shorts.",
    ),
    (  # "in" before a garment splits; "in a ponytail" does not
        "A slim girl in a white blouse and a plaid skirt; her black hair is in a ponytail.",
        "A slim girl. Her black hair is in a ponytail.",
        "In a white blouse and a plaid skirt.",
    ),
    (  # long-sleeved / stripes: hyphen parts and plurals are looked up
        "He is wearing a long-sleeved white shirt with black stripes and grey trousers; he is holding an umbrella.",
        "He is wearing a long-sleeved white shirt with black stripes and grey trousers; he is holding an umbrella.",
        "Wearing a long-sleeved white shirt with black stripes and grey trousers. Holding an umbrella.",
    ),
    (  # a bag sentence is clothing whatever the bag is called (SPLITTER_VERSION 2)
        "A young woman with ginger hair tied in a ponytail. She has a blue rucksack on her back. She is tall and stout.",
        "A young woman with ginger hair tied in a ponytail. She is tall and stout.",
        "A blue rucksack on her back.",
    ),
    (
        "The young lady has red hair and fair skin. Her outfit is a zip-up hooded top, grey slacks and a crossbody bag.",
        "The young lady has red hair and fair skin.",
        "Her outfit is a zip-up hooded top, grey slacks and a crossbody bag.",
    ),
    (  # no identity part: the id text is the full caption
        "A black and white striped shirt, dark pants and a red cap.",
        "A black and white striped shirt, dark pants and a red cap.",
        "A black and white striped shirt, dark pants and a red cap.",
    ),
    (  # no clothing part: empty cloth text (cloth_valid = False downstream)
        "The lady is tall and slim. She has long black hair.",
        "The lady is tall and slim. She has long black hair.",
        "",
    ),
    (
        "The pedestrian is walking toward the camera.",
        "The pedestrian is walking toward the camera.",
        "",
    ),
]


@pytest.mark.parametrize("text, id_part, cloth_part", CASES, ids=[c[0][:40] for c in CASES])
def test_split_caption(text, id_part, cloth_part):
    assert split_caption(text) == (id_part, cloth_part)


def test_docstring_example_holds():
    doc = " ".join(captions.__doc__.split())
    assert '("The man has short black hair.", "Wearing a white t-shirt with black shorts. Carrying a blue backpack.")' in doc


def test_gender_never_leaks_into_the_clothing_text():
    for text, _, cloth in CASES[:10]:
        words = {w.strip(".,").lower() for w in cloth.split()}
        assert not words & {"he", "she", "man", "woman", "girl", "lady", "hair"}, text


def test_whitespace_and_case_are_tolerated():
    assert split_caption("  a MAN   wearing a Red Coat ") == ("A MAN.", "Wearing a Red Coat.")


def test_text_segments_cut_an_identity_text_into_its_facts():
    assert captions.text_segments("This young man is tall and plump. He has shoulder-length brown hair and pale skin.") == [
        "This young man", "is tall", "and plump", "He has shoulder-length brown hair", "and pale skin"]
    assert captions.text_segments("  ") == []
