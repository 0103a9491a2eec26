"""The text tokenizer: the text encoder's own, or a word-level BERT vocabulary built for the data.

Where the files come from, in order:

1. ``data.tokenizer``: a local directory with tokenizer files;
2. the text encoder's local directory (``model.text_encoder.path``), loaded with
   ``local_files_only=True``;
3. neither set (an encoder built from a preset): a word-level vocabulary ``[PAD] [UNK] [CLS]
   [SEP] [MASK]`` + a few hundred common words + every lowercased word and punctuation mark of the
   training captions, wrapped as a fast BERT-style tokenizer (lower-casing, BERT pre-tokenizer,
   ``[CLS] ... [SEP]``). It is saved under ``<cache>/tokenizers/`` keyed by its vocabulary, so a
   second run reuses it, and ``tokenizer.save_pretrained`` exports it beside the model.

Tokenizing happens in the data pipeline (:mod:`reid.data.tables`), never in the model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Optional

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from reid.config import DataConfig
from reid.data.cache import cache_root, write_atomically
from reid.errors import MissingWeightsError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Always in the built vocabulary, so captions written at search time are not all [UNK].
COMMON_WORDS = """
a an the this that these those he she it they his her its their him them who which what with
without and or but of in on at to from by for over under near behind front back left right up
down out into onto while as is are was were be been being has have had do does not no also very
has wearing wears wore dressed carrying carries holding holds walking standing looking
man woman men women boy girl lady person people guy young old middle aged teen adult child kid
tall short slim thin heavy fat skinny hair long short black white red blue green yellow orange
pink purple brown grey gray beige khaki navy dark light bright pale gold silver colored coloured
shirt t - shirt jacket coat sweater hoodie dress skirt trousers pants jeans shorts leggings shoes
sneakers boots sandals heels socks hat cap scarf belt backpack bag handbag purse satchel glasses
sunglasses umbrella phone bottle sleeve sleeves sleeved sleeveless long striped plaid logo top
one two some other small large big bottom upper lower body head face beard bald ponytail curly
straight shoulder shoulders hand hands arm arms leg legs foot feet side street road camera
. , ; : ' " ! ? ( ) /
""".split()


def build_tokenizer(
    cfg: DataConfig, encoder_path: str = "", corpus: Optional[Iterable[str]] = None
) -> PreTrainedTokenizerFast:
    """The fast tokenizer for ``cfg`` (see the module docstring for where its files come from).

    ``corpus`` (the training captions) is only read when a vocabulary has to be built; None reads
    the training captions of ``cfg``'s dataset.
    """
    for source, name in ((cfg.tokenizer, "data.tokenizer"), (encoder_path, "model.text_encoder.path")):
        if source:
            return _load_local(Path(source).expanduser(), name)
    if corpus is None:
        corpus = training_captions(cfg)
    return build_word_tokenizer(corpus, cache_root(cfg) / "tokenizers", cfg.text_max_length)


def training_captions(cfg: DataConfig) -> list[str]:
    """Every text of the training split of ``cfg``'s dataset (the vocabulary's corpus)."""
    from reid.data.cache import prepare_root
    from reid.data.formats import read_annotations

    texts = []
    for rec in read_annotations(prepare_root(cfg), cfg.dataset):
        if rec.split == "train":  # a record's own id / cloth captions may hold other words
            texts += rec.captions + (rec.id_captions or []) + (rec.cloth_captions or [])
    return texts


def _load_local(path: Path, name: str) -> PreTrainedTokenizerFast:
    if not path.is_dir():
        raise MissingWeightsError(f"{path}: {name} directory not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as exc:
        raise MissingWeightsError(f"{path}: no usable tokenizer files in {name} ({exc})") from None
    if not tokenizer.is_fast:
        raise MissingWeightsError(f"{path}: {name} has no fast tokenizer (tokenizer.json / vocab.txt)")
    return tokenizer


def _words(corpus: Iterable[str]) -> list[str]:
    pre = pre_tokenizers.BertPreTokenizer()
    norm = normalizers.BertNormalizer(lowercase=True)
    seen: set[str] = set(COMMON_WORDS)
    for text in corpus:
        seen.update(piece for piece, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return sorted(seen - set(SPECIAL_TOKENS))


def build_word_tokenizer(corpus: Iterable[str], directory: Path, max_length: int) -> PreTrainedTokenizerFast:
    """A word-level BERT-style tokenizer over ``corpus``'s words, cached under ``directory``."""
    vocab_list = list(SPECIAL_TOKENS) + _words(corpus)
    digest = hashlib.sha256("\n".join(vocab_list).encode()).hexdigest()[:16]
    final = directory / f"words-{digest}"

    def write(tmp: Path) -> None:
        _make_word_tokenizer(vocab_list, max_length).save_pretrained(str(tmp))

    write_atomically(final, write)
    return AutoTokenizer.from_pretrained(str(final), local_files_only=True, use_fast=True)


def _make_word_tokenizer(vocab_list: list[str], max_length: int) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(vocab_list)}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """Identity of a tokenizer for cache keys: a hash of its serialized definition.

    Truncation and padding are left out: a call with ``truncation=True`` changes them on the
    backend, and they do not change the ids the tables store.
    """
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    definition.pop("truncation", None)
    definition.pop("padding", None)
    text = json.dumps(definition, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
