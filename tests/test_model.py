"""The tiny model (random-init ViT + BERT): outputs, one training step, GRL, fusion, loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode

from reid.config import DisentangleConfig, EncoderConfig, FusionConfig, ModelConfig
from reid.data import keys as K
from reid.errors import ConfigError, MissingWeightsError
from reid.losses import TERM_NAMES, Criterion
from reid.losses import terms as T
from reid.model import (
    AttentionGatedFusion,
    SyncBatchNorm1d,
    build_model,
    convert_sync_batchnorm,
    get_fusion_module,
    grad_reverse,
)
from reid.model.encoders import build_image_encoder, build_text_encoder

VOCAB, CLASSES, SIZE, B = 50, 5, (64, 32), 8


def make_batch(b: int = B, size: tuple[int, int] = SIZE, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {K.IMAGES: torch.randn(b, 3, *size, generator=g), K.PIDS: torch.arange(b) // 2 % CLASSES}
    for prefix, length in (("id", 9), ("cloth", 5), ("neg_cloth", 7)):
        mask = (torch.arange(length)[None] < torch.randint(2, length + 1, (b, 1), generator=g)).long()
        batch[f"{prefix}_input_ids"] = torch.randint(1, VOCAB, (b, length), generator=g) * mask
        batch[f"{prefix}_attention_mask"] = mask
    batch[K.CLOTH_VALID] = torch.tensor([True] * (b - 1) + [False])
    return batch


def tiny(dcfg: DisentangleConfig | None = None, cfg: ModelConfig | None = None, size=SIZE, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg or ModelConfig(), dcfg or DisentangleConfig(), num_classes=CLASSES,
                       image_size=size, vocab_size=VOCAB)


def every_term(**overrides) -> DisentangleConfig:
    dcfg = DisentangleConfig(**overrides)
    dcfg.loss_weights.fusion_match = 0.5
    dcfg.loss_weights.id_adv = 0.5
    dcfg.loss_weights.id_words = 0.5
    return dcfg


def seed_forms() -> DisentangleConfig:
    dcfg = every_term(learnable_temperature=True)
    dcfg.cloth_match.form, dcfg.decouple.form = "seed", "seed"
    return dcfg


def test_forward_returns_named_normalised_outputs() -> None:
    out = tiny(every_term())(make_batch())
    E = 256
    shapes = {"image_embeds": (B, E), "cloth_image_embeds": (B, E), "id_text_embeds": (B, E),
              "cloth_text_embeds": (B, E), "neg_cloth_text_embeds": (B, E), "id_logits": (B, CLASSES),
              "cloth_adv_logits": (B, CLASSES), "id_embeds": (B, 64), "cloth_embeds": (B, 64),
              "fused_embeds": (B, E), "gate_image_weight": (B,), "temperature": (1,),
              "fusion_pos_logits": (B,), "fusion_neg_logits": (2 * B,), "cloth_match_bias": (1,)}
    for key, shape in shapes.items():
        assert tuple(out[key].shape) == shape, key
        assert torch.isfinite(out[key]).all(), key
    for key in ("image_embeds", "cloth_image_embeds", "id_text_embeds", "cloth_text_embeds"):
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(B))
    assert "decouple_id" not in out  # xcorr form: no projectors


def test_zero_weights_skip_the_work_and_the_heads() -> None:
    dcfg = DisentangleConfig()
    for name in ("cls", "cloth", "cloth_adv", "cloth_match", "decouple"):
        setattr(dcfg.loss_weights, name, 0.0)
    model = tiny(dcfg)
    assert model.id_classifier is None and model.cloth_projection is None and model.fusion is None
    batch = {k: v for k, v in make_batch().items() if not k.startswith(("cloth", "neg_cloth"))}
    out = model(batch)  # no clothing text needed at all
    assert set(out) == {"id_embeds", "image_embeds", "id_text_embeds", "temperature"}

    dcfg = DisentangleConfig()
    dcfg.cloth_match.form = "seed"
    assert "neg_cloth_text_embeds" not in tiny(dcfg)(make_batch())  # only the pair form reads negatives


@pytest.mark.parametrize("dcfg", [every_term(), seed_forms()], ids=["pair-xcorr", "seed-forms"])
def test_one_training_step_gives_every_term_and_a_gradient_to_every_parameter(dcfg) -> None:
    model = tiny(dcfg).train()
    out = model(make_batch())
    total, terms, report = Criterion(dcfg)(out, make_batch())
    assert set(terms) == set(TERM_NAMES)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values()), terms
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing  # nothing unused: DDP needs no find_unused_parameters
    modules = ["image_encoder", "text_encoder", "id_projection", "id_classifier", "cloth_projection",
               "cloth_classifier", "shared_mlp", "image_mlp", "text_mlp", "fusion", "match_head", "scale"]
    seed = ["id_embed_projector", "cloth_embed_projector", "log_temperature"]
    modules += seed if dcfg.decouple.form == "seed" else ["cloth_match_bias"]
    for name in modules:
        grads = [p.grad.abs().sum() for p in getattr(model, name).parameters()]
        assert sum(grads) > 0, f"{name} received no gradient"
    assert all(not p.dim() == 0 for p in model.parameters())  # DeepSpeed 0.19.8 crashes on 0-d
    assert 0.0 < report["gate_image_weight"] < 1.0


def test_separate_cloth_heads_keep_clothing_out_of_the_identity_heads() -> None:
    """model.cloth_heads: separate: clothing rows go through their own heads, in training and in
    retrieval alike, and the clothing terms give the identity heads no gradient."""
    dcfg = every_term()
    model = tiny(dcfg, ModelConfig(cloth_heads="separate")).eval()
    batch = make_batch()
    out = model(batch)
    feats = model._image_features(batch[K.IMAGES])
    cloth = torch.relu(model.cloth_projection(feats))
    expected = torch.nn.functional.normalize(model.cloth_image_mlp(model.cloth_shared_mlp(cloth)), dim=-1)
    torch.testing.assert_close(out["cloth_image_embeds"], expected)
    torch.testing.assert_close(model({K.IMAGES: batch[K.IMAGES]})["cloth_image_embeds"], expected)
    text = model({K.INPUT_IDS: batch[K.CLOTH_INPUT_IDS], K.ATTENTION_MASK: batch[K.CLOTH_ATTENTION_MASK]})
    torch.testing.assert_close(text["cloth_text_embeds"], out["cloth_text_embeds"])  # same head, either path
    torch.testing.assert_close(model({K.INPUT_IDS: batch[K.ID_INPUT_IDS], K.ATTENTION_MASK: batch[K.ID_ATTENTION_MASK]})["text_embeds"],
                               out["id_text_embeds"])

    clothing_only = DisentangleConfig()
    for name in ("info_nce", "cls", "bio", "cloth_adv", "decouple"):
        setattr(clothing_only.loss_weights, name, 0.0)
    model = tiny(clothing_only, ModelConfig(cloth_heads="separate")).train()
    total, _, _ = Criterion(clothing_only)(model(batch), batch)
    total.backward()
    for name in ("shared_mlp", "image_mlp", "text_mlp"):
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in getattr(model, name).parameters()), name
    for name in ("cloth_shared_mlp", "cloth_image_mlp", "cloth_text_mlp"):
        assert sum(p.grad.abs().sum() for p in getattr(model, name).parameters()) > 0, name
    shared = tiny(clothing_only).train()  # the seed's shared heads: the clothing terms do train them
    Criterion(clothing_only)(shared(batch), batch)[0].backward()
    assert sum(p.grad.abs().sum() for p in shared.image_mlp.parameters()) > 0


def test_cloth_encoder_grad_false_keeps_the_clothing_terms_out_of_the_image_encoder() -> None:
    """model.cloth_encoder_grad: false: the clothing terms train the clothing branch and its heads but
    send the image encoder nothing; the identity terms still train it; the outputs are unchanged."""
    clothing_only = DisentangleConfig()
    for name in ("info_nce", "cls", "bio", "decouple"):
        setattr(clothing_only.loss_weights, name, 0.0)
    batch = make_batch()
    grads = {}
    for flag in (True, False):
        torch.manual_seed(0)
        model = tiny(clothing_only, ModelConfig(cloth_heads="separate", cloth_encoder_grad=flag)).train()
        torch.manual_seed(1)
        out = model(batch)
        Criterion(clothing_only)(out, batch)[0].backward()
        grads[flag] = sum(p.grad.abs().sum() for p in model.image_encoder.parameters() if p.grad is not None)
        assert sum(p.grad.abs().sum() for p in model.cloth_projection.parameters()) > 0
        grads[flag, "out"] = out["cloth_image_embeds"].detach()
    assert grads[True] > 0 and grads[False] == 0
    torch.testing.assert_close(grads[True, "out"], grads[False, "out"])
    identity = DisentangleConfig()  # all terms: the identity ones reach the encoder either way
    model = tiny(identity, ModelConfig(cloth_heads="separate", cloth_encoder_grad=False)).train()
    Criterion(identity)(model(batch), batch)[0].backward()
    assert sum(p.grad.abs().sum() for p in model.image_encoder.parameters() if p.grad is not None) > 0


class HostSyncSpy(TorchDispatchMode):
    """Records ops that make a GPU wait for the host: .item()/bool()/int() on a tensor
    (`_local_scalar_dense`) and ops whose output size depends on tensor values."""

    SYNCING = {"_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "_unique2", "unique_dim",
               "unique_consecutive", "repeat_interleave", "equal"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.SYNCING:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dcfg", [every_term(), seed_forms()], ids=["pair-xcorr", "seed-forms"])
def test_the_training_step_never_waits_on_the_host(dcfg) -> None:
    model, batch = tiny(dcfg).train(), make_batch()
    with HostSyncSpy() as spy:
        total, _, _ = Criterion(dcfg)(model(batch), batch)
        total.backward()
    assert spy.seen == []
    with HostSyncSpy() as spy:  # the spy does see one: transformers' own 2-D mask handling
        model.text_encoder(input_ids=batch[K.ID_INPUT_IDS], attention_mask=batch[K.ID_ATTENTION_MASK])
    assert spy.seen


def test_grl_gradient_is_minus_alpha_times_the_plain_gradient() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    (grad_reverse(x, 0.3) * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * w)


@pytest.mark.parametrize("term", ["cloth", "cloth_adv"])
def test_grl_placement_reverses_the_cloth_branch_only_in_seed_mode(term: str) -> None:
    """Gradient of one term on cloth_projection: `cloth_branch` (the seed) flips `cloth` relative
    to `adversary`; the adversary's own term is reversed in both modes."""
    grads = {}
    for grl in ("cloth_branch", "adversary"):
        dcfg = DisentangleConfig(grl=grl)
        dcfg.alpha.start = 0.4
        model = tiny(dcfg).eval()  # deterministic forward (BN running stats, no dropout)
        batch = make_batch()
        _, terms, _ = Criterion(dcfg)(model(batch), batch)
        terms[term].backward()
        grads[grl] = model.cloth_projection.weight.grad
    if term == "cloth":
        torch.testing.assert_close(grads["cloth_branch"], -0.4 * grads["adversary"], rtol=1e-4, atol=1e-7)
    else:
        torch.testing.assert_close(grads["cloth_branch"], grads["adversary"])


def test_the_alpha_schedule_counts_seed_epochs_by_default() -> None:
    """The seed's epoch holds each row twice, so by default alpha steps every two of our epochs."""
    from reid.config import AlphaSchedule

    seed = AlphaSchedule()
    assert [seed.at(e) for e in range(5)] == pytest.approx([0.1, 0.1, 0.12, 0.12, 0.14])
    assert seed.at(200) == 1.0
    ours = AlphaSchedule(per="epoch")
    assert [ours.at(e) for e in range(3)] == pytest.approx([0.1, 0.12, 0.14])
    assert tiny().grl_alpha == pytest.approx(0.1)  # the model starts at epoch 0's value; the trainer sets it after


def test_fusion_gate_weights_sum_to_one_and_unknown_types_are_rejected() -> None:
    fusion = get_fusion_module(FusionConfig(dim=16, num_heads=4, output_dim=8))
    assert isinstance(fusion, AttentionGatedFusion)
    fused, gate = fusion(torch.randn(5, 16), torch.randn(5, 16))
    assert fused.shape == (5, 8) and gate.shape == (5, 2)
    torch.testing.assert_close(gate.sum(dim=-1), torch.ones(5))
    assert get_fusion_module(FusionConfig(type="none")) is None
    with pytest.raises(ConfigError, match="model.fusion.type: unknown fusion type 'bilinear'"):
        get_fusion_module(FusionConfig(type="bilinear"))
    with pytest.raises(ConfigError, match="fusion_match"):
        tiny(every_term(), ModelConfig(fusion=FusionConfig(type="none")))


def test_retrieval_encoders_and_match_scores() -> None:
    model = tiny(every_term()).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
        image = model.encode_image(batch[K.IMAGES])
        text = model.encode_text(batch[K.ID_INPUT_IDS], batch[K.ID_ATTENTION_MASK])
        cloth = model.encode_text(batch[K.CLOTH_INPUT_IDS], batch[K.CLOTH_ATTENTION_MASK])
        scores = model.match_scores(image, text)
    # one BERT call over the three padded fields == separate calls
    torch.testing.assert_close(out["image_embeds"], image, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["id_text_embeds"], text, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["cloth_text_embeds"], cloth, rtol=1e-4, atol=1e-5)
    assert scores.shape == (B,)
    torch.testing.assert_close(scores, out["fusion_pos_logits"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="fusion_match"):
        tiny().match_scores(image, text)


def test_the_four_dimensional_text_mask_equals_transformers_own_mask() -> None:
    model = tiny().eval()
    batch = make_batch()
    ids, mask = batch[K.ID_INPUT_IDS], batch[K.ID_ATTENTION_MASK]
    with torch.no_grad():
        ours = model.encode_text(ids, mask)
        cls = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        theirs = model._text_head(cls)
    torch.testing.assert_close(ours, theirs)


def test_learnable_temperature_is_a_clamped_one_element_parameter() -> None:
    model = tiny(DisentangleConfig(learnable_temperature=True, temperature=0.07))
    assert model.log_temperature.value.shape == (1,)
    assert model.temperature().item() == pytest.approx(0.07)
    with torch.no_grad():
        model.log_temperature.value.fill_(-20.0)
    assert model.temperature().item() == pytest.approx(0.01)


def test_sync_batchnorm_conversion_keeps_outputs_and_state_dict() -> None:
    model = tiny().eval()
    batch = make_batch()
    keys_before = set(model.state_dict())
    with torch.no_grad():
        before = model(batch)["image_embeds"]
        convert_sync_batchnorm(model)
        after = model(batch)["image_embeds"]
    assert sum(isinstance(m, SyncBatchNorm1d) for m in model.modules()) == 4
    assert set(model.state_dict()) == keys_before
    torch.testing.assert_close(before, after)


def test_seed_decouple_projectors_game_it_on_frozen_model_features() -> None:
    """With the encoder frozen (features fixed), the seed form's own projectors reach ~0."""
    model = tiny(seed_forms())
    with torch.no_grad():
        out = model(make_batch(b=128))  # N > H, so xcorr is above its ~1/N sampling floor
    id_embeds, cloth_embeds = out["id_embeds"], out["cloth_embeds"]
    projectors = [*model.id_embed_projector.parameters(), *model.cloth_embed_projector.parameters()]
    opt = torch.optim.Adam(projectors, lr=0.05)
    for _ in range(100):
        loss = T.decouple_seed(model.id_embed_projector(id_embeds), model.cloth_embed_projector(cloth_embeds))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.03
    # the xcorr form reads the same frozen features and owns nothing it could train: it stays
    # well above its value for independent features (measured: 0.021 vs 0.006)
    xcorr = T.decouple_xcorr(id_embeds, cloth_embeds)
    assert not xcorr.requires_grad
    assert xcorr > 2 * T.decouple_xcorr(id_embeds, torch.randn(cloth_embeds.shape))


# ---------------------------------------------------------------------------------------- encoders
def test_non_square_preset_uses_a_native_patch_grid() -> None:
    encoder = build_image_encoder(EncoderConfig(preset="tiny"), (384, 128))
    assert encoder.embeddings.position_embeddings.shape == (1, 1 + 24 * 8, 64)
    with pytest.raises(ConfigError, match="multiples of the ViT patch size"):
        build_image_encoder(EncoderConfig(preset="tiny"), (100, 64))


def test_preset_width_and_depth_overrides_keep_heads_and_mlp_ratio() -> None:
    vit = build_image_encoder(EncoderConfig(preset="tiny", hidden=96, layers=3, patch_size=8), (32, 16))
    assert (vit.config.hidden_size, vit.config.num_hidden_layers, vit.config.num_attention_heads,
            vit.config.intermediate_size) == (96, 3, 4, 192)
    bert = build_text_encoder(EncoderConfig(preset="tiny", hidden=96), vocab_size=VOCAB)
    assert (bert.config.hidden_size, bert.config.num_hidden_layers, bert.config.intermediate_size) == (96, 2, 192)
    with pytest.raises(ConfigError, match=r"model.image_encoder.hidden: 90 is not a multiple of preset 'tiny'"):
        build_image_encoder(EncoderConfig(preset="tiny", hidden=90), (32, 16))
    with pytest.raises(ConfigError, match=r"x.hidden: only for a preset encoder"):
        EncoderConfig(path="/w/vit", hidden=96).validate("x")


def test_local_weights_load_and_interpolate_position_embeddings_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = build_image_encoder(EncoderConfig(preset="tiny"), (32, 32))
    saved.save_pretrained(tmp_path / "vit")
    bert = build_text_encoder(EncoderConfig(preset="tiny"), vocab_size=VOCAB, pad_token_id=3)
    bert.save_pretrained(tmp_path / "bert")

    same = build_image_encoder(EncoderConfig(path=str(tmp_path / "vit")), (32, 32)).eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        same(pixel_values=images).last_hidden_state, saved.eval()(pixel_values=images).last_hidden_state
    )

    resized = build_image_encoder(EncoderConfig(path=str(tmp_path / "vit")), (64, 32))
    pos, old = resized.embeddings.position_embeddings, saved.embeddings.position_embeddings
    assert pos.shape == (1, 1 + 4 * 2, 64)
    torch.testing.assert_close(pos[:, 0], old[:, 0])  # the class token's embedding is kept
    assert resized(pixel_values=torch.randn(2, 3, 64, 32)).last_hidden_state.shape == (2, 9, 64)
    assert resized.config.image_size == [64, 32]

    cfg = ModelConfig(image_encoder=EncoderConfig(path=str(tmp_path / "vit")),
                      text_encoder=EncoderConfig(path=str(tmp_path / "bert")))
    model = build_model(cfg, DisentangleConfig(), num_classes=CLASSES, image_size=SIZE)
    assert model.pad_token_id == 3  # the encoder's own config wins
    with pytest.raises(ConfigError, match="tokenizer"):
        build_text_encoder(cfg.text_encoder, vocab_size=VOCAB + 10)


def test_a_frozen_encoder_keeps_its_weights_and_eval_mode_and_the_heads_still_train(tmp_path: Path) -> None:
    """model.image_encoder.frozen: no gradient and no optimizer group for the loaded encoder, eval
    mode through model.train() (dropout off), the same features as the unfrozen model; the heads and
    the text encoder still train. A preset (random) encoder cannot be frozen."""
    from reid.config import OptimConfig, load_config
    from reid.engine.optim import param_groups

    torch.manual_seed(0)
    vit = build_image_encoder(EncoderConfig(preset="tiny"), SIZE)
    vit.config.hidden_dropout_prob = 0.5  # dropout that would change the features in train mode
    vit.save_pretrained(tmp_path / "vit")
    models = {}
    for frozen in (False, True):
        cfg = ModelConfig(image_encoder=EncoderConfig(path=str(tmp_path / "vit"), frozen=frozen))
        models[frozen] = tiny(every_term(), cfg).train()
    model, batch = models[True], make_batch()
    assert not model.image_encoder.training and model.text_encoder.training and model.id_projection.training
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    feats = model._image_features(batch[K.IMAGES])
    assert not feats.requires_grad
    torch.testing.assert_close(feats, models[False].eval()._image_features(batch[K.IMAGES]))  # eval-mode features
    Criterion(every_term())(model(batch), batch)[0].backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    for name in ("text_encoder", "id_projection", "shared_mlp", "image_mlp", "cloth_projection"):
        assert sum(p.grad.abs().sum() for p in getattr(model, name).parameters()) > 0, name
    groups = param_groups(model, OptimConfig(image_lr=1e-4))
    grouped = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in grouped for p in model.image_encoder.parameters())
    assert "image_encoder" not in {g["name"] for g in groups}
    torch.optim.AdamW([p for g in groups for p in g["params"]], lr=1e-2).step()
    for k, v in model.image_encoder.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    build_text_encoder(EncoderConfig(preset="tiny"), vocab_size=VOCAB).save_pretrained(tmp_path / "bert")
    text_frozen = tiny(every_term(), ModelConfig(text_encoder=EncoderConfig(path=str(tmp_path / "bert"), frozen=True))).train()
    assert not text_frozen.text_encoder.training and text_frozen.image_encoder.training
    Criterion(every_term())(text_frozen(batch), batch)[0].backward()
    assert all(p.grad is None for p in text_frozen.text_encoder.parameters())
    assert sum(p.grad.abs().sum() for p in text_frozen.image_encoder.parameters()) > 0
    with pytest.raises(ConfigError, match=r"model.image_encoder.frozen: only for a loaded encoder"):
        load_config(overrides=["model.image_encoder.frozen=true"])
    with pytest.raises(ConfigError, match=r"model.image_encoder.gradient_checkpointing"):
        load_config(overrides=[f"model.image_encoder.path={tmp_path / 'vit'}", "model.image_encoder.frozen=true",
                               "model.image_encoder.gradient_checkpointing=true"])


def test_missing_weights_name_the_path_and_how_to_get_them(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    message = f"model.image_encoder.path: '{missing}' does not exist.*hf download"
    with pytest.raises(MissingWeightsError, match=message):
        build_image_encoder(EncoderConfig(path=str(missing)), SIZE)
    assert issubclass(MissingWeightsError, FileNotFoundError)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    with pytest.raises(MissingWeightsError, match="cannot load weights"):
        build_text_encoder(EncoderConfig(path=str(tmp_path / "bert")))


def test_image_features_of_another_width_reach_the_text_width_through_the_branch_projections() -> None:
    """A 64-d image encoder beside a 96-d text encoder (as ResNet-50's 2048 beside BERT-base's 768):
    id_projection and cloth_projection map 64 -> 96; everything after them is text-width."""
    cfg = ModelConfig(image_encoder=EncoderConfig(preset="tiny"), text_encoder=EncoderConfig(preset="tiny", hidden=96))
    model = tiny(every_term(), cfg)
    assert model.hidden_size == 96
    assert tuple(model.id_projection.weight.shape) == tuple(model.cloth_projection.weight.shape) == (96, 64)
    assert model.shared_mlp.in_features == 96
    batch = make_batch()
    total, terms, _ = Criterion(every_term())(model(batch), batch)
    total.backward()
    assert torch.isfinite(total) and set(terms) >= {"info_nce", "cloth", "decouple"}
    assert model.image_encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------- strict loading
def _vit(tmp_path: Path, name: str = "vit", head: str = "") -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=3)
    torch.manual_seed(0)
    model = ViTForImageClassification(config) if head == "classifier" else ViTModel(config, add_pooling_layer=head == "pooler")
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def edit_weights(directory: Path, edit) -> None:
    state = load_file(str(directory / "model.safetensors"))
    edit(state)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_a_bert_directory_given_as_the_image_encoder_is_one_error(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match=r"model.image_encoder.path: '.*bert' holds a 'bert' model \(config.json "
                                          r"model_type\), which is not an image encoder; accepted: vit, clip, clip_vision_model"):
        build_image_encoder(EncoderConfig(path=str(tmp_path / "bert")), (32, 32))
    _vit(tmp_path)
    with pytest.raises(ConfigError, match="holds a 'vit' model .* accepted: bert, clip, clip_text_model"):
        build_text_encoder(EncoderConfig(path=str(tmp_path / "vit")))


def test_a_renamed_or_reshaped_tensor_is_named(tmp_path: Path) -> None:
    renamed = _vit(tmp_path, "renamed")
    edit_weights(renamed, lambda s: s.__setitem__("embeddings.cls_tokn", s.pop("embeddings.cls_token")))
    with pytest.raises(ConfigError, match=r"model.image_encoder.path: the weights in '.*renamed' do not fit its "
                                          r"ViTModel \(1 missing: embeddings.cls_token; 1 unexpected: embeddings.cls_tokn\)"):
        build_image_encoder(EncoderConfig(path=str(renamed)), (32, 32))

    reshaped = _vit(tmp_path, "reshaped")
    edit_weights(reshaped, lambda s: s.__setitem__("layernorm.weight", torch.ones(7)))
    with pytest.raises(ConfigError, match=r"1 of another shape: layernorm.weight \[7\] in the directory, \[32\] in the model"):
        build_image_encoder(EncoderConfig(path=str(reshaped)), (32, 32))


def test_the_heads_of_the_usual_checkpoints_are_left_out_quietly(tmp_path: Path, capfd) -> None:
    """google/vit-base-patch16-224 is a ViTForImageClassification (classifier.*), bert-base-uncased a
    BertForPreTraining (cls.*, bert.pooler.*); a saved pooler is not built either: all load, and
    transformers' load report is not printed."""
    from transformers import BertConfig, BertForPreTraining, BertModel, ViTModel

    for head in ("classifier", "pooler"):
        encoder = build_image_encoder(EncoderConfig(path=str(_vit(tmp_path, head, head))), (32, 32))
        saved = ViTModel.from_pretrained(tmp_path / head, add_pooling_layer=False)
        torch.testing.assert_close(encoder.state_dict(), saved.state_dict())
    BertForPreTraining(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64)).save_pretrained(tmp_path / "bert")
    encoder = build_text_encoder(EncoderConfig(path=str(tmp_path / "bert")))
    torch.testing.assert_close(encoder.state_dict(), BertModel.from_pretrained(tmp_path / "bert", add_pooling_layer=False).state_dict())
    capfd.readouterr()
    build_image_encoder(EncoderConfig(path=str(tmp_path / "pooler")), (32, 32))
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.err + captured.out and "not sharded" not in captured.err


def test_fusion_matches_the_seeds_forward_on_the_same_weights() -> None:
    """The seed's AttentionGatedFusion.forward, written out as the seed writes it (sequence-first
    nn.MultiheadAttention over unsqueeze(0), residual + LayerNorm, softmax gate, dropout, fc,
    LayerNorm), on our module's weights, in eval mode: the same fused features."""
    torch.manual_seed(0)
    ours = AttentionGatedFusion(32, num_heads=4, output_dim=16, dropout=0.1).eval()
    seed_image_attn = torch.nn.MultiheadAttention(embed_dim=32, num_heads=4, dropout=0.1).eval()
    seed_text_attn = torch.nn.MultiheadAttention(embed_dim=32, num_heads=4, dropout=0.1).eval()
    seed_image_attn.load_state_dict(ours.image_attn.state_dict())
    seed_text_attn.load_state_dict(ours.text_attn.state_dict())
    image, text = torch.randn(6, 32), torch.randn(6, 32)

    def seed_forward(image_features, text_features):  # the seed's lines, with its modules
        image_query = image_features.unsqueeze(0)
        text_kv = text_features.unsqueeze(0)
        image_attn_output, _ = seed_image_attn(image_query, text_kv, text_kv)
        image_attn_output = ours.norm_image(image_attn_output.squeeze(0) + image_features)
        text_query = text_features.unsqueeze(0)
        image_kv = image_features.unsqueeze(0)
        text_attn_output, _ = seed_text_attn(text_query, image_kv, image_kv)
        text_attn_output = ours.norm_text(text_attn_output.squeeze(0) + text_features)
        concat_features = torch.cat([image_attn_output, text_attn_output], dim=-1)
        gate_weights = ours.gate(concat_features)
        image_weight, text_weight = gate_weights[:, 0:1], gate_weights[:, 1:2]
        fused_features = image_weight * image_attn_output + text_weight * text_attn_output
        fused_features = ours.dropout(fused_features)
        fused_features = ours.fc(fused_features)
        return ours.norm_final(fused_features)

    with torch.no_grad():
        fused, gate = ours(image, text)
        torch.testing.assert_close(fused, seed_forward(image, text))
    assert torch.allclose(gate.sum(dim=1), torch.ones(6))


def test_both_branches_are_relu_of_their_projection_as_in_the_seed() -> None:
    """id_embeds = ReLU(id_projection(h)), cloth_embeds = ReLU(cloth_projection(h)) on the [CLS] h."""
    model = tiny(every_term()).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
        h = model._image_features(batch[K.IMAGES])
        torch.testing.assert_close(out["id_embeds"], torch.relu(model.id_projection(h)))
        torch.testing.assert_close(out["cloth_embeds"], torch.relu(model.cloth_projection(h)))
    assert (out["id_embeds"] >= 0).all() and (out["cloth_embeds"] == 0).any()
